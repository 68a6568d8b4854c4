"""The models a service replica serves right now, and how they change while it serves.

A ``Lineup`` is immutable: the champion, an optional challenger with its share of the
listings, an optional shadow. A request reads ``Predictor.lineup`` once and prices every
row with that lineup, so a swap (one attribute assignment, atomic in Python) lets
in-flight requests finish on the models they started with.

``RegistryFollower`` reads the registry's event log (``streaming_ml.registry``) from a
daemon thread in each worker, and when the aliases change it imports, loads and checks
the new models in the background, then swaps. A model that fails to load or fails the
canary is refused: the old lineup keeps serving and the reason is kept for
``/model_info``, the log and a metric.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from streaming_ml.config import Settings
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.errors import ModelNotFoundError, UntrustedModelError
from streaming_ml.kafka import clients
from streaming_ml.kafka.loop import ConsumeLoop
from streaming_ml.models import registry
from streaming_ml.models.loader import from_bento_model
from streaming_ml.models.protocol import PriceModelProtocol
from streaming_ml.models.store import get_bento_model, model_card
from streaming_ml.service.api import EXAMPLE_RECORDS
from streaming_ml.system.waits import Deadline

logger = logging.getLogger(__name__)

Arm = Literal["champion", "challenger", "shadow"]
# Buckets per listing: the split's resolution is 0.01 %.
BUCKETS = 10_000


def bucket_of(listing_id: int) -> int:
    """A listing's fixed bucket in [0, BUCKETS): the same in every process and replica."""
    return zlib.crc32(str(listing_id).encode()) % BUCKETS


@dataclass(frozen=True)
class ServedModel:
    model: PriceModelProtocol
    card: Mapping[str, Any]

    @property
    def tag(self) -> str:
        return str(self.model.tag)

    @property
    def name(self) -> str:
        return self.tag.partition(":")[0]

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]


@dataclass(frozen=True)
class Lineup:
    champion: ServedModel
    challenger: ServedModel | None = None
    split_percent: float = 0.0
    shadow: ServedModel | None = None

    def arm_of(self, listing_id: Any) -> Arm:
        """Sticky A/B: a listing's arm depends only on its id (no id: champion)."""
        if (
            self.challenger is None
            or not isinstance(listing_id, int)
            or isinstance(listing_id, bool)
        ):
            return "champion"
        return (
            "challenger"
            if bucket_of(listing_id) < self.split_percent * BUCKETS / 100
            else "champion"
        )

    def model_of(self, arm: Arm) -> ServedModel:
        chosen = {"champion": self.champion, "challenger": self.challenger, "shadow": self.shadow}[
            arm
        ]
        assert chosen is not None, f"no {arm} in this lineup"
        return chosen

    def tags(self) -> dict[str, str]:
        arms = {"champion": self.champion, "challenger": self.challenger, "shadow": self.shadow}
        return {arm: served.tag for arm, served in arms.items() if served is not None}

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"champion": dict(self.champion.card)}
        if self.challenger is not None:
            described["challenger"] = {**self.challenger.card, "split_percent": self.split_percent}
        if self.shadow is not None:
            described["shadow"] = dict(self.shadow.card)
        return described


def canary_problem(model: PriceModelProtocol) -> str | None:
    """Price fixed reference listings; why the answers are unusable, or None."""
    records = [*EXAMPLE_RECORDS, *generate_listing_records(30, seed=2024)]
    try:
        prices = [float(p) for p in model.predict_records(records)]
    except Exception as error:  # any failure of a new model is a refusal, not a crash
        return f"canary batch failed: {type(error).__name__}: {reason_of(error)}"
    if len(prices) != len(records):
        return f"canary batch: {len(prices)} prices for {len(records)} listings"
    bad = [p for p in prices if not math.isfinite(p) or p <= 0]
    if bad:
        return (
            f"canary batch: {len(bad)} of {len(prices)} prices are not finite and "
            f"positive, e.g. {bad[0]}"
        )
    return None


def load_checked(
    tag: str, settings: Settings | None, aliases: registry.Aliases | None = None
) -> ServedModel:
    """Import (from Kafka if ``settings``), load and canary-check one model; raises
    ``RefusedModel`` with the reason when it cannot serve. ``aliases``: the registry's
    state as the caller has folded it (it says where the export sits), else read here."""

    try:
        stored = registry.fetch(settings, tag, aliases=aliases) if settings is not None else tag
        bento_model = get_bento_model(stored)
        model = from_bento_model(bento_model)
    except UntrustedModelError as error:
        raise RefusedModel(tag, f"untrusted: {reason_of(error)}", "untrusted") from error
    except Exception as error:
        raise RefusedModel(tag, f"cannot load: {reason_of(error)}", "load") from error
    problem = canary_problem(model)
    if problem is not None:
        raise RefusedModel(tag, problem, "canary")
    return ServedModel(model, model_card(bento_model))


# An absolute path: a slash not inside a word, then directories. Only its file name is
# kept, so a refusal tells what failed without describing the machine.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\":,()\[\]]+/)+([^\s/'\":,()\[\]]*)")


def reason_of(error: BaseException) -> str:
    """What ``/model_info``, the log and the metric say about a failure: its first line
    (libraries append stack traces below), with absolute paths cut to their file names."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(a directory)", first)


# Why a model was refused, in a word: the refusal metric's label.
RefusalCause = Literal["untrusted", "load", "canary"]


class RefusedModel(Exception):
    def __init__(self, tag: str, reason: str, cause: RefusalCause = "load") -> None:
        super().__init__(f"{tag}: {reason}")
        self.tag = tag
        self.reason = reason
        self.cause: RefusalCause = cause


@dataclass
class Refusal:
    tag: str
    reason: str
    at: float = field(default_factory=time.time)
    cause: RefusalCause = "load"

    def as_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "reason": self.reason, "cause": self.cause, "at": self.at}


class RegistryFollower:
    """Keeps ``apply(lineup)`` in step with the registry's aliases, from a daemon thread.

    ``load`` (``load_checked`` by default) may be slow: it runs on this thread, never on
    a request. Each wanted (alias, tag) pair is tried once per change of the aliases: a
    refused model is not retried in a loop, and a new event naming it tries again.
    """

    def __init__(
        self,
        settings: Settings,
        lineup: Lineup | None,
        load: Callable[[str], ServedModel] | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.settings = settings
        self.lineup = lineup
        # Set by the service once its Predictor exists; catch_up() runs before that.
        self.on_swap: Callable[[Lineup], None] = lambda _lineup: None
        # The follower's own fold names every model it loads (an event is applied before
        # the models it names are loaded), so fetch need not read the log again.
        self._load = load or (lambda tag: load_checked(tag, settings, self._aliases))
        self.on_refused = on_refused
        self.refused: list[Refusal] = []
        self.events_read = 0
        self.connected = False
        self.error: str | None = None
        self._aliases: Any = None
        self._seen_end = False
        self._tried: set[tuple[str, str]] = set()  # (arm, tag) loads tried since named
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: ConsumeLoop | None = None
        self._changed = False

    def status(self) -> dict[str, Any]:
        """What ``/model_info`` says about following the registry."""
        return {
            "following": True,
            "connected": self.connected,
            "events_read": self.events_read,
            "events_unreadable": self._aliases.unreadable if self._aliases is not None else 0,
            "error": self.error,
            "refused": [r.as_dict() for r in self.refused],
        }

    # -- the follower thread --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def catch_up(self, timeout_s: float) -> bool:
        """Read the log to its end now (at start, before serving); False if Kafka is away."""
        deadline = Deadline.after(timeout_s)
        while not deadline.expired() and not self._stop.is_set():
            if self._poll(until_end=True, deadline=deadline):
                return True
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll(until_end=False, deadline=Deadline.after(self.settings.model_poll_s))
            except Exception as error:  # the follower must outlive any registry hiccup
                logger.exception("registry follower error", extra={"error": str(error)})
                self._reset_consumer(str(error))
                self._stop.wait(2.0)
        self._reset_consumer(None)

    def _poll(self, until_end: bool, deadline: Deadline) -> bool:
        """Consume events until the deadline (or the log's end); reconcile on change.
        True once the log's end was seen in this call."""
        loop = self._ensure_loop()
        if loop is None:
            self._stop.wait(min(2.0, deadline.remaining()))
            return False
        self._changed = False
        loop.ends.clear()

        def done() -> bool:
            return self._stop.is_set() or (until_end and bool(loop.ends))

        loop.run(timeout=deadline.remaining(), until=done)
        at_end = bool(loop.ends)
        if self._changed or (at_end and not self._seen_end):
            # The first time the log's end is reached, even an empty log is news: it
            # means there is no champion yet, and this replica claims its own.
            self._seen_end = self._seen_end or at_end
            self._reconcile()
        return at_end

    def _on_events(self, batch: list[Message]) -> None:
        for msg in batch:
            self._on_event(msg.value())
            self._changed = True

    def _on_kafka_error(self, error: KafkaError) -> None:
        self.error = str(error)

    def _ensure_loop(self) -> ConsumeLoop | None:
        if self._loop is not None:
            return self._loop
        try:
            registry.ensure_registry_topics(self.settings, timeout_s=5.0)
        except Exception as error:
            if self.connected or self.error is None:
                logger.warning(
                    "model registry unreachable: serving the current models",
                    extra={"kafka": self.settings.kafka_bootstrap, "error": str(error)},
                )
            self.connected, self.error = False, str(error)
            return None
        consumer = clients.consumer(
            self.settings, "sml-service-follower", {"enable.partition.eof": True, "log_level": 2}
        )
        self._loop = ConsumeLoop(
            consumer, self._on_events, batch_size=100, poll_s=0.25, on_error=self._on_kafka_error
        )
        self._loop.assign([TopicPartition(self.settings.model_events_topic, 0, OFFSET_BEGINNING)])
        self._aliases = registry.Aliases()
        self.events_read = 0
        self._seen_end = False
        self.connected, self.error = True, None
        return self._loop

    def _reset_consumer(self, error: str | None) -> None:
        if self._loop is not None:
            self._loop.consumer.close()
        self._loop = None
        self.connected = False
        self.error = error

    def _on_event(self, value: bytes | None) -> None:
        event = self._aliases.apply_record(value)
        if event is None:
            return
        self.events_read += 1
        # A new event naming a model gives a refused model another chance.
        self._tried = {
            t for t in self._tried if t[1] not in (event.tag, event.challenger, event.shadow)
        }

    # -- deciding and swapping --

    def _reconcile(self) -> None:
        aliases = self._aliases
        if aliases is None:
            return
        if aliases.champion is None:
            self._claim()
            return
        current = self.lineup
        champion = self._served("champion", aliases.champion, current.champion if current else None)
        if champion is None:
            return
        experiment = aliases.experiment
        challenger = shadow = None
        split = 0.0
        if experiment is not None:
            if experiment.challenger:
                challenger = self._served(
                    "challenger", experiment.challenger, current.challenger if current else None
                )
                split = experiment.split_percent if challenger is not None else 0.0
            if experiment.shadow:
                shadow = self._served(
                    "shadow", experiment.shadow, current.shadow if current else None
                )
        new = Lineup(champion, challenger, split, shadow)
        if (
            current is None
            or new.tags() != current.tags()
            or new.split_percent != current.split_percent
        ):
            self.lineup = new
            self.on_swap(new)
            logger.info("models swapped", extra={"lineup": new.tags(), "split_percent": split})

    def _served(self, arm: str, tag: str, held: ServedModel | None) -> ServedModel | None:
        """The model to serve as ``arm``: the one held if it is ``tag``, else ``tag`` loaded
        now; on refusal the one held for that arm (the champion keeps serving)."""
        if held is not None and held.tag == tag:
            return held
        for served in self._loaded_models():
            if served.tag == tag:
                return served
        attempt = (arm, tag)
        if attempt in self._tried:
            return held if arm == "champion" else None
        self._tried.add(attempt)
        try:
            return self._load(tag)
        except RefusedModel as refused:
            refusal = Refusal(tag, refused.reason, cause=refused.cause)
            self.refused = [*self.refused[-19:], refusal]
            logger.error(
                "model refused: the current models keep serving",
                extra={"tag": tag, "arm": arm, "reason": refused.reason},
            )
            if self.on_refused is not None:
                self.on_refused(refusal)
            return held if arm == "champion" else None

    def _loaded_models(self) -> list[ServedModel]:
        current = self.lineup
        if current is None:
            return []
        return [m for m in (current.champion, current.challenger, current.shadow) if m is not None]

    def _claim(self) -> None:
        """No champion yet: this replica's own model becomes the first one."""
        if self.lineup is None:
            return
        tag = self.lineup.champion.tag
        try:
            registry.publish(self.settings, tag, self._aliases)
            registry.append_event(
                self.settings, registry.ModelEvent(kind="claimed", tag=tag, note="first model")
            )
            logger.info("claimed champion for the first model", extra={"tag": tag})
        except Exception as error:
            logger.warning("could not claim champion", extra={"tag": tag, "error": str(error)})


def initial_lineup(settings: Settings) -> tuple[Lineup, RegistryFollower | None]:
    """What a new service worker serves first, and the follower that keeps it current.

    Without following (``SML_MODEL_FOLLOW=false``) it is the stored
    ``SML_MODEL_NAME:SML_MODEL_VERSION``, as plain ``bentoml serve`` always did. With it,
    the registry's champion and experiment once the log is read; the stored model while
    Kafka cannot be reached, and as the first champion when the registry has none."""
    local: ServedModel | None = None
    try:
        local = load_checked(settings.model_tag, None)
    except RefusedModel as refused:
        if not settings.model_follow:
            raise ModelNotFoundError(refused.reason) from refused
        logger.info(
            "no usable local model: waiting for the registry", extra={"reason": refused.reason}
        )
    if not settings.model_follow:
        assert local is not None
        return Lineup(local), None
    follower = RegistryFollower(settings, Lineup(local) if local is not None else None)
    # With a local model to fall back on, a missing Kafka delays start only a little.
    follower.catch_up(timeout_s=8.0 if local is not None else 60.0)
    if follower.lineup is None:
        raise ModelNotFoundError(
            f"nothing to serve: no usable {settings.model_tag} in the local model store and "
            f"no champion obtainable from the registry at {settings.kafka_bootstrap} "
            f"({follower.error or 'no champion yet'}); run `streaming-ml train`, or start "
            "the stack and promote a model."
        )
    return follower.lineup, follower
