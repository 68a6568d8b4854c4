"""Following a topic as it grows, without a consumer group and without blocking.

The dashboard follows a few topics (the predictions, the DLQ, the model registry's log):
each ``TopicTail`` is assigned, not subscribed, so it never joins or disturbs a group and
commits nothing. A topic that does not exist yet is looked for again later.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from streaming_ml.config import Settings
from streaming_ml.kafka import clients
from streaming_ml.system.waits import Deadline

logger = logging.getLogger(__name__)

# How often a tail whose topic is missing looks for it again.
RETRY_S = 5.0
Start = Literal["beginning", "end"] | int  # an int: that many records before the end


class TopicTail:
    def __init__(self, settings: Settings, topic: str, start: Start) -> None:
        self.topic = topic
        self.start = start
        self.assigned = False
        self._next_try = 0.0
        self._consumer = clients.consumer(
            settings,
            f"sml-dashboard-{uuid.uuid4().hex[:8]}",  # never joined
            {
                # Aborted transactions of the bridge are not traffic.
                "isolation.level": "read_committed",
                "client.id": "streaming-ml-dashboard",
                "log_level": 3,
            },
        )

    def poll(self, batch: int = 10_000, budget_s: float = 0.2) -> list[Any]:
        """The records that arrived since the last call (none while the topic is missing),
        in batches until none is left or ``budget_s`` is spent: at a high rate one batch a
        round would fall behind, and a round must not take much longer than planned."""
        if not self.assigned and not self._assign():
            return []
        budget = Deadline.after(budget_s)
        messages: list[Any] = []
        while True:
            got = self._consumer.consume(num_messages=batch, timeout=0)
            messages += [m for m in got if m.error() is None]
            if len(got) < batch or budget.expired():
                return messages

    def _assign(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + RETRY_S
        try:
            meta = self._consumer.list_topics(self.topic, timeout=2).topics.get(self.topic)
        except Exception as error:  # KafkaException: broker away; the collector says so
            logger.debug("topic metadata unavailable", extra={"topic": self.topic, "error": error})
            return False
        if meta is None or meta.error is not None or not meta.partitions:
            return False
        self._consumer.assign(
            [TopicPartition(self.topic, p, self._offset(p)) for p in sorted(meta.partitions)]
        )
        self.assigned = True
        return True

    def _offset(self, partition: int) -> int:
        if self.start == "beginning":
            return OFFSET_BEGINNING
        if self.start == "end":
            return OFFSET_END
        low, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=2
        )
        return max(low, high - int(self.start))

    def close(self) -> None:
        self._consumer.close()
