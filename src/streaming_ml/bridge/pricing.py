"""Pricing a batch with the prediction service: every answer classified, nothing retried forever.

| the service answers                        | meaning                  | the bridge             |
|--------------------------------------------|--------------------------|------------------------|
| 200 with one price per record              | priced                   | produce                |
| 400, 422                                   | these records are bad    | bisect, dead-letter    |
| 500, other 5xx, 413, timeout, bad 200 body | maybe one record is bad  | retry, then bisect     |
| 404, 408, 429, 503, other 4xx, refused     | the service is not there | retry, then pause      |

A record that fails on its own while other records of the same pass are answered gets
a strike; after ``max_strikes`` strikes it is dead-lettered with the last reason. A
pass in which nothing was answered is the service's fault, not a record's: it raises
``Backpressure`` and no record is blamed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from streaming_ml.kafka.offsets import Position

logger = logging.getLogger(__name__)

REJECTED_STATUSES = frozenset({400, 422})
# A 413 is the batch's size, not the service's health: halving the batch helps.
RECORD_LEVEL_STATUSES = frozenset({413})


class ServiceRejected(Exception):
    """The service refused the records (400/422): its message says why."""


class ServiceFailed(Exception):
    """The call failed in a way one bad record can cause (5xx, timeout, malformed answer)."""


class ServiceUnavailable(Exception):
    """The service as a whole cannot answer (refused, 404, 408, 429, 503)."""


class Backpressure(Exception):
    """Nothing can be priced now: pause consumption, rewind, and probe readiness later."""


class PredictionClient:
    """One ``POST /predict_batch`` per call, its outcome classified; ``GET /readyz``.

    With ``explain``, each answer item also carries the ``explanation`` of its price (and
    of its shadow's); such a call costs a few hundred predictions per row, so it gets its
    own timeout, ``explain_timeout_s`` (default: ``timeout_s``).
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        session: requests.Session | None = None,
        *,
        explain: bool = False,
        explain_timeout_s: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.explain = explain
        self.predict_timeout_s = (explain_timeout_s or timeout_s) if explain else timeout_s
        self._session = session or requests.Session()

    @property
    def predict_url(self) -> str:
        return self.base_url + "/predict_batch"

    @property
    def ready_url(self) -> str:
        return self.base_url + "/readyz"

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        body: dict[str, Any] = {"records": list(rows)}
        if self.explain:
            body["explain"] = True
        timeout = self.predict_timeout_s
        try:
            response = self._session.post(self.predict_url, json=body, timeout=timeout)
        except requests.Timeout as error:
            raise ServiceFailed(f"no answer within {timeout:g} s ({error})") from error
        except requests.RequestException as error:
            raise ServiceUnavailable(f"{type(error).__name__}: {error}") from error
        status, text = response.status_code, response.text[:500]
        if status in REJECTED_STATUSES:
            raise ServiceRejected(f"HTTP {status}: {text}")
        if (status >= 500 and status != 503) or status in RECORD_LEVEL_STATUSES:
            raise ServiceFailed(f"HTTP {status}: {text}")
        if status != 200:
            raise ServiceUnavailable(f"HTTP {status} from {self.predict_url}: {text}")
        try:
            answer = response.json()
        except ValueError as error:
            raise ServiceFailed(f"answer is not JSON: {text[:200]!r}") from error
        return checked_answer(answer, len(rows))

    def ready(self) -> bool:
        try:
            return self._session.get(self.ready_url, timeout=self.timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def model_info(self) -> dict[str, Any] | None:
        """The service's ``/model_info``; None while it does not answer."""
        try:
            response = self._session.post(
                self.base_url + "/model_info", json={}, timeout=self.timeout_s
            )
            info = response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def champion_tag(self) -> str | None:
        """The tag ``/model_info`` names as the champion the service prices with; None
        while the service does not answer."""
        tag = (self.model_info() or {}).get("tag")
        return str(tag) if tag else None

    def close(self) -> None:
        self._session.close()


def checked_answer(answer: Any, expected: int) -> list[Mapping[str, Any]]:
    """The answer if it has one usable price per record; ServiceFailed otherwise."""
    if not isinstance(answer, list) or len(answer) != expected:
        got = f"{len(answer)} items" if isinstance(answer, list) else type(answer).__name__
        raise ServiceFailed(f"answered {got} for {expected} records")
    for item in answer:
        price = item.get("predicted_price") if isinstance(item, Mapping) else None
        if (
            not isinstance(price, int | float)
            or isinstance(price, bool)
            or not math.isfinite(price)
        ):
            raise ServiceFailed(f"answer item without a finite predicted_price: {item!r:.200}")
        if not isinstance(item.get("model_tag"), str):
            raise ServiceFailed(f"answer item without a model_tag: {item!r:.200}")
    return answer


@dataclass
class Priced:
    """The outcome of one pass, by position in the rows handed to ``Pricer.price``."""

    results: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)  # dead-letter, with the reason
    unfinished: dict[int, str] = field(default_factory=dict)  # failed alone: try again later
    deferred: dict[int, str] = field(default_factory=dict)  # not isolated this pass: no blame
    calls: int = 0

    @property
    def retry_later(self) -> set[int]:
        return {*self.unfinished, *self.deferred}

    def reindexed(self, keys: Sequence[int]) -> Priced:
        """The same outcome keyed by ``keys[position]`` (e.g. message indices)."""

        def by_key(items: dict[int, Any]) -> dict[int, Any]:
            return {keys[position]: value for position, value in items.items()}

        return Priced(
            by_key(self.results), by_key(self.rejected), by_key(self.unfinished),
            by_key(self.deferred), self.calls,
        )  # fmt: skip


class Pricer:
    """Prices rows with retries, bisection and per-record strikes.

    ``keys`` name each row across passes (the bridge uses topic, partition, offset), so
    a record that keeps failing alone is recognised when it is consumed again.
    ``wait(seconds)`` sleeps between retries and returns True when the bridge is
    stopping.
    """

    def __init__(
        self,
        client: PredictionClient,
        *,
        retry_delays: Sequence[float],
        max_strikes: int,
        wait: Callable[[float], bool],
    ) -> None:
        self.client = client
        self.retry_delays = tuple(retry_delays)
        self.max_strikes = max_strikes
        self._wait = wait
        self._strikes: dict[Position, int] = {}

    def price(self, rows: Sequence[Mapping[str, Any]], keys: Sequence[Position]) -> Priced:
        out = Priced()
        if not rows:
            return out
        try:
            out.results = dict(enumerate(self._call_with_retries(rows, out)))
        except ServiceUnavailable as error:
            raise Backpressure(str(error)) from error
        except (ServiceRejected, ServiceFailed) as error:
            if isinstance(error, ServiceFailed) and not self.client.ready():
                raise Backpressure(f"{error}; /readyz does not answer either") from error
            budget = 4 * math.ceil(math.log2(len(rows))) + 4 if len(rows) > 1 else 0
            self._isolate(list(range(len(rows))), rows, out, error, _Budget(budget))
        self._settle(out, keys)
        return out

    def forget(self, drop: Callable[[Position], bool]) -> None:
        """Forget the strikes of records ``drop`` selects (their partition was revoked)."""
        for key in [k for k in self._strikes if drop(k)]:
            del self._strikes[key]

    def _call_with_retries(self, rows: Sequence[Mapping[str, Any]], out: Priced) -> list[Any]:
        for delay in (*self.retry_delays, None):
            try:
                out.calls += 1
                return self.client.predict(rows)
            except (ServiceUnavailable, ServiceFailed) as error:
                if delay is None:
                    raise
                logger.warning(
                    "prediction call failed, retrying",
                    extra={"records": len(rows), "retry_in_s": delay, "error": str(error)},
                )
                if self._wait(delay):
                    raise ServiceUnavailable("the bridge is stopping") from error
        raise AssertionError("unreachable")

    def _isolate(
        self,
        positions: list[int],
        rows: Sequence[Mapping[str, Any]],
        out: Priced,
        error: Exception | None,
        budget: _Budget,
        parent: Exception | None = None,
    ) -> None:
        """Find the records behind a failure by halving; ``error`` is the failure of
        ``positions`` already seen (no need to ask again).

        Halving a rejection is cheap and certain (the service says which records are
        bad), so only halving a failure (5xx, timeout) spends ``budget``; what a spent
        budget leaves unexamined is deferred to the next pass, blamed on nobody.
        """
        if error is None:
            if isinstance(parent, ServiceFailed) and not budget.take():
                for p in positions:
                    out.deferred[p] = f"service: not isolated this pass ({parent})"
                return
            try:
                out.calls += 1
                answer = self.client.predict([rows[p] for p in positions])
            except ServiceUnavailable as unavailable:
                raise Backpressure(str(unavailable)) from unavailable
            except (ServiceRejected, ServiceFailed) as failure:
                error = failure
            else:
                out.results.update(zip(positions, answer, strict=True))
                return
        if len(positions) == 1:
            target = out.rejected if isinstance(error, ServiceRejected) else out.unfinished
            target[positions[0]] = f"service: {error}"
            return
        middle = len(positions) // 2
        self._isolate(positions[:middle], rows, out, None, budget, error)
        self._isolate(positions[middle:], rows, out, None, budget, error)

    def _settle(self, out: Priced, keys: Sequence[Position]) -> None:
        for position in (*out.results, *out.rejected):
            self._strikes.pop(keys[position], None)
        if not out.unfinished and not out.deferred:
            return
        if not out.results and not out.rejected:
            # Nobody got an answer: the service is at fault, no record is to blame.
            reason = next(iter({**out.unfinished, **out.deferred}.values()))
            raise Backpressure(f"every record of the batch failed ({reason})")
        for position, reason in list(out.unfinished.items()):
            key = keys[position]
            strikes = self._strikes.get(key, 0) + 1
            if strikes >= self.max_strikes:
                del out.unfinished[position]
                self._strikes.pop(key, None)
                out.rejected[position] = (
                    f"{reason} (failed {strikes} times on its own while other records were priced)"
                )
            else:
                self._strikes[key] = strikes


class _Budget:
    """How many more calls one bisection may make."""

    def __init__(self, calls: int) -> None:
        self.left = calls

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0
