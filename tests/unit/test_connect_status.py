"""Reading Connect's status answers: which parts FAILED and why."""

from streaming_ml.connect.client import failed_parts, trace_summary

TRACE = """org.apache.kafka.connect.errors.ConnectException: Tolerance exceeded in error handler
\tat org.apache.kafka.connect.runtime.errors.RetryWithToleranceOperator.execAndHandleError
Caused by: java.util.concurrent.ExecutionException: connect failed
\tat java.base/java.util.concurrent.CompletableFuture.reportGet
Caused by: java.net.ConnectException: Connection refused
"""


def status(connector: str, *tasks: str) -> dict:
    return {
        "name": "car-listings-source",
        "connector": {"state": connector, "worker_id": "127.0.0.1:8083"},
        "tasks": [{"id": i, "state": s} for i, s in enumerate(tasks)],
    }


def test_failed_parts_names_connector_and_tasks() -> None:
    answer = status("FAILED", "RUNNING", "FAILED")
    answer["tasks"][1]["trace"] = TRACE
    failed = failed_parts(answer)
    assert [label for label, _ in failed] == ["connector", "task 1"]
    assert failed[1][1]["trace"] == TRACE


def test_nothing_failed_while_running_or_restarting() -> None:
    assert failed_parts(status("RUNNING", "RUNNING", "RESTARTING", "UNASSIGNED")) == []


def test_trace_summary_keeps_outer_error_and_causes() -> None:
    summary = trace_summary(TRACE).splitlines()
    assert summary[0].startswith("org.apache.kafka.connect.errors.ConnectException")
    assert summary[-1] == "Caused by: java.net.ConnectException: Connection refused"
    assert not any(line.startswith("at ") for line in summary)
    assert trace_summary(None) == "(no trace)"


# What Connect reports when the Apicurio converter's registration is refused (HTTP 409).
REFUSED = """org.apache.kafka.connect.errors.ConnectException: Tolerance exceeded in error handler
\tat org.apache.kafka.connect.runtime.errors.RetryWithToleranceOperator.execAndHandleError
Caused by: java.lang.RuntimeException: io.apicurio.registry.rest.client.models.\
RuleViolationProblemDetails
\tat io.apicurio.registry.resolver.ERCache.retry(ERCache.java:249)
Caused by: io.apicurio.registry.rest.client.models.RuleViolationProblemDetails
"""


def test_a_refused_schema_is_named_in_one_plain_line() -> None:
    from streaming_ml.connect.client import failure_reason, registry_refused

    assert registry_refused(REFUSED)
    assert not registry_refused(TRACE) and not registry_refused(None)
    reason = failure_reason(REFUSED, "cars.public.car_listings")
    assert reason is not None and "\n" not in reason
    assert "registry refused the new schema of cars.public.car_listings" in reason
    assert "connectors recover-schema" in reason
    assert failure_reason(TRACE) is None


def test_summary_and_failure_lines_carry_the_reason() -> None:
    from streaming_ml.connect.commands import failure_lines, summarise

    answer = status("RUNNING", "FAILED")
    answer["tasks"][0]["trace"] = REFUSED
    summary = summarise(answer, "cars.public.car_listings")
    assert summary["failed"][0]["reason"].startswith("the registry refused")
    other = status("RUNNING", "FAILED")
    other["tasks"][0]["trace"] = TRACE
    lines = failure_lines({"source": summary, "sink": summarise(other)})
    assert lines[0].startswith("source task 0 failed: the registry refused the new schema")
    assert lines[1] == "sink task 0 failed: " + TRACE.splitlines()[0]


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    def labels(self, _name: str) -> "_Counter":
        return self

    def inc(self) -> None:
        self.count += 1


def test_watchdog_does_not_restart_a_refused_schema_and_says_so_once(monkeypatch, caplog) -> None:
    import logging

    from streaming_ml.connect import client
    from streaming_ml.connect.watchdog import ConnectorWatchdog

    answer = status("RUNNING", "FAILED")
    answer["tasks"][0]["trace"] = REFUSED
    restarts: list[str] = []
    monkeypatch.setattr(client, "connector_status", lambda _url, _name: answer)
    monkeypatch.setattr(client, "restart_failed", lambda _url, name: restarts.append(name) or True)
    counter = _Counter()
    watchdog = ConnectorWatchdog("http://connect", ["source"], 1.0, counter)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="streaming_ml.connect.watchdog"):
        assert watchdog.check() == [] and watchdog.check() == []
    assert restarts == [] and counter.count == 0
    assert len([r for r in caplog.records if "registry refused" in r.getMessage()]) == 1
    # Another failure is restarted as before.
    answer["tasks"][0]["trace"] = TRACE
    assert watchdog.check() == ["source"] and counter.count == 1
