"""``streaming-ml dashboard``: one read-only page showing the whole pipeline live.

``collector`` reads every source once a round (Kafka, Connect, the bridges' and the
service's metrics, the registry's log, the evaluation topics, Postgres) and keeps a short
history; ``app`` serves the page, the state and a server-sent event stream; ``server``
runs both on ``SML_DASHBOARD_PORT``. The page's scripts and styles are in ``static/``
(uPlot vendored from npm with its licence): nothing is loaded from elsewhere.
"""

from streaming_ml.dashboard.server import DashboardServer, serve_forever

__all__ = ["DashboardServer", "serve_forever"]
