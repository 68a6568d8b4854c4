"""The registry's compatibility rule: set on our registry, left alone on someone else's."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from streaming_ml.config import Settings
from streaming_ml.stack import schema_registry


class _Answer:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status_code = status
        self._body = body
        self.text = json.dumps(body)

    def json(self) -> Any:
        return self._body


def _registry(monkeypatch: pytest.MonkeyPatch, level: str) -> list[tuple[str, str, Any]]:
    calls: list[tuple[str, str, Any]] = []

    def request(method: str, url: str, **kwargs: Any) -> _Answer:
        calls.append((method, url, kwargs.get("json")))
        if method == "GET":
            return _Answer(200, {"compatibilityLevel": level})
        return _Answer(200, kwargs.get("json"))

    monkeypatch.setattr(requests, "request", request)
    return calls


@pytest.mark.parametrize("level", ["NONE", "FORWARD"])
def test_our_registry_gets_backward(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    calls = _registry(monkeypatch, level)
    settings = Settings(registry_port=18081)
    assert schema_registry.ensure_compatibility(settings) == "BACKWARD"
    assert calls[-1] == (
        "PUT",
        "http://127.0.0.1:18081/apis/ccompat/v7/config",
        {"compatibility": "BACKWARD"},
    )


@pytest.mark.parametrize("level", ["BACKWARD", "FULL_TRANSITIVE"])
def test_a_strict_enough_rule_is_kept(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    calls = _registry(monkeypatch, level)
    assert schema_registry.ensure_compatibility(Settings()) == level
    assert [method for method, _, _ in calls] == ["GET"]


def test_someone_elses_registry_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = _registry(monkeypatch, "NONE")
    settings = Settings(schema_registry_url="https://registry.example/apis/ccompat/v7")
    assert schema_registry.ensure_compatibility(settings) == "NONE"
    assert [method for method, _, _ in calls] == ["GET"]
    assert any("not ours" in record.getMessage() for record in caplog.records)


def test_subject_rule_uses_the_native_api(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, Any]] = []

    def request(method: str, url: str, **kwargs: Any) -> _Answer:
        calls.append((method, url, kwargs.get("json")))
        return _Answer(404 if method == "GET" else 204, {})

    monkeypatch.setattr(requests, "request", request)
    settings = Settings(registry_port=18081)
    subject = schema_registry.value_subject("cars.public.car_listings")
    schema_registry.set_subject_rule(settings, subject, "NONE")
    schema_registry.set_subject_rule(settings, subject, None)
    rules = (
        "http://127.0.0.1:18081/apis/registry/v3/groups/default/artifacts/"
        "cars.public.car_listings-value/rules"
    )
    assert calls == [
        ("GET", f"{rules}/COMPATIBILITY", None),
        ("POST", rules, {"ruleType": "COMPATIBILITY", "config": "NONE"}),
        ("DELETE", f"{rules}/COMPATIBILITY", None),
    ]
