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
