"""What makes replicas safe to run side by side: client configuration and one watcher."""

from __future__ import annotations

from streaming_ml.config import Settings
from streaming_ml.connect.watchdog import PartitionZeroWatchdog
from streaming_ml.kafka import clients

TOPIC = "cars.public.car_listings"


def test_replicas_share_a_group_with_cooperative_assignment_and_read_committed() -> None:
    config = clients.consumer_config(Settings(), "g")
    assert config["group.id"] == "g"
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["isolation.level"] == "read_committed"
    assert config["enable.auto.commit"] is False
    assert "group.instance.id" not in config


def test_static_member_gets_a_stable_transactional_id_others_a_unique_one() -> None:
    static = Settings(bridge_instance_id="bridge-a")
    assert clients.consumer_config(static, "g")["group.instance.id"] == "bridge-a"
    assert clients.transactional_id(static, "g") == "g-bridge-a"
    assert clients.transactional_id(static, "g") == clients.transactional_id(static, "g")
    plain = Settings()
    assert clients.transactional_id(plain, "g") != clients.transactional_id(plain, "g")


def test_transaction_timeout_bounds_message_timeout() -> None:
    config = clients.producer_config(Settings(transaction_timeout_s=7), "g")
    assert config["transaction.timeout.ms"] == config["message.timeout.ms"] == 7000


class FakeWatchdog:
    def __init__(self) -> None:
        self.events: list[str] = []

    def start(self) -> None:
        self.events.append("start")

    def stop(self, wait: bool = True) -> None:
        self.events.append("stop")


def test_only_the_owner_of_partition_zero_watches_the_connectors() -> None:
    watchdog = FakeWatchdog()
    leader = PartitionZeroWatchdog(watchdog, TOPIC)  # type: ignore[arg-type]

    leader.on_partitions({(TOPIC, 1), (TOPIC, 2)})
    assert watchdog.events == []  # another replica owns partition 0
    leader.on_partitions({(TOPIC, 0), (TOPIC, 1)})
    leader.on_partitions({(TOPIC, 0)})  # still the owner: no second start
    assert watchdog.events == ["start"]
    leader.on_partitions({(TOPIC, 2)})  # partition 0 moved away: hand the job over
    assert watchdog.events == ["start", "stop"]
    leader.stop()  # not watching: nothing to stop
    assert watchdog.events == ["start", "stop"]
