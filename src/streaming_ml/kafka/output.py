"""Output: a batch's records and its consumed offsets, in one Kafka transaction.

Each batch is published as

1. ``begin_transaction``;
2. ``produce`` every record (a record ``produce()`` refuses is replaced by its fallback,
   e.g. a prediction by a DLQ record, a DLQ record by one without the original bytes);
3. ``send_offsets_to_transaction`` with the consumer's group metadata (KIP-447);
4. ``commit_transaction`` (flushes, then writes the commit markers).

So the predictions, the DLQ records and the offsets become visible together or not at
all. Step 3 carries the consumer's group generation: a bridge that lost its partitions
without noticing (frozen, cut off) is refused by the group coordinator there, its
transaction is aborted, and readers in ``read_committed`` (the JDBC sink) never see
what it wrote. That is the fence that keeps a stale price or a ghost row out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

logger = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# Errors that belong to one record (Kafka will never take it): only these swap a record
# for its fallback. Everything else (timeouts, purges of an aborted transaction,
# fencing) is about the transaction: it aborts and the batch is consumed again.
REFUSED_RECORD = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.POLICY_VIOLATION,
    }
)


class OutputAborted(Exception):
    """The transaction was aborted: nothing of the batch is visible; consume it again."""


class OutputFatal(Exception):
    """The producer cannot go on (fenced, or its transaction cannot be finished): drop it;
    a new producer with the same transactional id aborts what it left open."""


@dataclass
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None
    # Produced instead when Kafka refuses this record (too large, say).
    fallback: OutRecord | None = None
    # None: the partitioner chooses; a number keeps a listing's records co-partitioned
    # with its change events (the evaluator joins them per partition).
    partition: int | None = None


class TransactionalOutput:
    """Publishes batches with a transactional producer; see the module docstring."""

    def __init__(
        self,
        config: dict[str, Any],
        group_metadata: Callable[[], Any],
        timeout_s: float,
        make_producer: Callable[[dict[str, Any]], Any] = Producer,
    ) -> None:
        self._config = config
        self._group_metadata = group_metadata
        self._timeout_s = timeout_s
        self._make_producer = make_producer
        self._producer = self._start_producer()

    def _start_producer(self) -> Any:
        producer = self._make_producer(self._config)
        # Also aborts whatever a previous process with the same transactional id left open.
        producer.init_transactions(self._timeout_s)
        return producer

    def publish(
        self,
        records: Sequence[OutRecord],
        offsets: Sequence[TopicPartition],
        after_produce: Callable[[], None] | None = None,
    ) -> None:
        """Produce ``records`` and commit ``offsets`` atomically.

        ``after_produce`` (fault injection) runs once every record is acknowledged by the
        brokers, before the offsets are sent. Raises OutputAborted (rewind and redo the
        batch) or OutputFatal.
        """
        refused: dict[int, OutRecord] = {}  # records Kafka refused, by position: use fallbacks
        for _attempt in range(3):
            delivery_errors: dict[int, KafkaError] = {}
            try:
                self._producer.begin_transaction()
                for position, record in enumerate(records):
                    self._produce(refused.get(position, record), position, delivery_errors)
                if after_produce is not None:
                    self._producer.flush(self._timeout_s)
                    after_produce()
                if offsets:
                    self._send_offsets(list(offsets))
                self._commit()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.fatal():
                    raise OutputFatal(str(error)) from exc
                self._abort(error)
                final = {p: e for p, e in delivery_errors.items() if e.code() in REFUSED_RECORD}
                replaced = self._replace_refused(records, refused, final)
                if not replaced:
                    raise OutputAborted(str(error)) from exc
        raise OutputAborted("records were refused by Kafka three times in a row")

    def _produce(self, record: OutRecord, position: int, errors: dict[int, KafkaError]) -> None:
        def on_delivery(error: KafkaError | None, _msg: Message) -> None:
            if error is not None:
                errors[position] = error

        current: OutRecord | None = record
        while current is not None:
            try:
                where = {} if current.partition is None else {"partition": current.partition}
                self._producer.produce(
                    current.topic, key=current.key, value=current.value,
                    headers=current.headers, on_delivery=on_delivery, **where,
                )  # fmt: skip
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: let deliveries drain
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() not in REFUSED_RECORD:
                    raise
                logger.warning(
                    "Kafka refused a record; producing its fallback",
                    extra={"topic": current.topic, "error": str(error)},
                )
                current = current.fallback
        logger.error("a record and all its fallbacks were refused; dropped", extra={})

    def _send_offsets(self, offsets: list[TopicPartition]) -> None:
        """``send_offsets_to_transaction`` with a wall-clock limit.

        librdkafka can block in this call past its timeout when the group coordinator
        it cached went away (a broker restart): confluentinc/librdkafka#5456 and #5511,
        open in 2.16. The call runs on a helper thread (it releases the GIL); if it has
        not returned in twice the timeout, the producer is given up as fatal. The next
        producer, with the same transactional id, fences this one and aborts its
        transaction, so the abandoned call can do no harm.
        """
        metadata = self._group_metadata()
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                self._producer.send_offsets_to_transaction(offsets, metadata, self._timeout_s)
                outcome.append(None)
            except BaseException as error:  # handed to the caller below
                outcome.append(error)

        worker = threading.Thread(target=call, name="send-offsets", daemon=True)
        worker.start()
        worker.join(self._timeout_s * 2)
        if not outcome:
            raise OutputFatal(
                f"send_offsets_to_transaction did not return in {self._timeout_s * 2:g} s "
                "(librdkafka#5456 after a broker restart); replacing the producer"
            )
        if outcome[0] is not None:
            raise outcome[0]

    def _commit(self, attempts: int = 3) -> None:
        """Commit, retrying a timed-out commit a few times: past that the broker or the
        coordinator is away, and the caller must not block (the consumer would be
        thrown out of its group for not polling)."""
        for attempt in range(1, attempts + 1):
            try:
                self._producer.commit_transaction(self._timeout_s)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
                logger.warning(
                    "transaction commit timed out; trying again",
                    extra={"attempt": attempt, "error": str(exc.args[0])},
                )
        raise OutputFatal(f"the transaction did not commit within {attempts} attempts")

    def _abort(self, error: KafkaError) -> None:
        logger.warning("transaction aborted", extra={"error": str(error)})
        try:
            self._producer.abort_transaction(self._timeout_s)
        except KafkaException as exc:
            # Could not even abort (Kafka away): the next producer's init_transactions
            # aborts this transaction for us.
            raise OutputFatal(f"abort failed: {exc.args[0]}") from exc

    @staticmethod
    def _replace_refused(
        records: Sequence[OutRecord], refused: dict[int, OutRecord], final: dict[int, KafkaError]
    ) -> bool:
        """Swap each record Kafka refused for good for its fallback; False if none."""
        replaced = False
        for position, error in final.items():
            current = refused.get(position, records[position])
            if current.fallback is not None:
                logger.warning(
                    "Kafka refused a record; producing its fallback next time",
                    extra={"topic": current.topic, "error": str(error)},
                )
                refused[position] = current.fallback
                replaced = True
        return replaced

    def close(self) -> None:
        try:
            self._producer.flush(self._timeout_s)
        finally:
            self._producer = None
