"""Planning ``topics migrate``: which topic needs which step, from what exists, so that a
run stopped at any point is finished by the next one."""

from __future__ import annotations

import pytest

from streaming_ml.config import Settings
from streaming_ml.connect.repartition import readers, sink_group, sink_topics
from streaming_ml.kafka.migrate import Step, TopicPlan, next_step, plan, temporary_topic
from streaming_ml.kafka.topics import pipeline_topics


@pytest.mark.parametrize(
    ("count", "has_temporary", "step"),
    [
        (3, False, Step.NOTHING),  # already right
        (None, False, Step.NOTHING),  # not there: ensure_topics creates it
        (1, False, Step.COPY_OUT),  # the upgrade
        (1, True, Step.COPY_OUT),  # stopped during the copy out: the copy may be partial
        (None, True, Step.COPY_BACK),  # stopped after the delete: the copy is complete
        (3, True, Step.COPY_BACK),  # stopped during the copy back
        (6, False, Step.COPY_OUT),  # more partitions than wanted is odd too
    ],
)
def test_the_step_follows_from_what_exists(
    count: int | None, has_temporary: bool, step: Step
) -> None:
    assert next_step(count, has_temporary, wanted=3) is step


def test_the_plan_lists_only_topics_with_a_step_and_marks_derived_state() -> None:
    counts = {
        "changes": 1,
        "predictions": 1,
        "outcomes": 3,
        "outcomes.migrating": 1,
        "state": 1,
        "alerts": 3,
        "someone-elses": 1,
    }
    topics = ["changes", "predictions", "outcomes", "alerts", "state", "missing"]
    assert plan(counts, topics, 3, recreate_empty=["state"]) == [
        TopicPlan("changes", 1, Step.COPY_OUT, keep_records=True),
        TopicPlan("predictions", 1, Step.COPY_OUT, keep_records=True),
        TopicPlan("outcomes", 3, Step.COPY_BACK, keep_records=True),
        TopicPlan("state", 1, Step.COPY_OUT, keep_records=False),
    ]


def test_a_finished_migration_plans_nothing() -> None:
    counts = {"changes": 3, "predictions": 3}
    assert plan(counts, ["changes", "predictions"], 3) == []


def test_the_temporary_topic_is_not_one_of_ours() -> None:
    settings = Settings()
    ours = set(pipeline_topics(settings))
    assert not {temporary_topic(t) for t in ours} & ours


def test_every_sink_and_every_committing_reader_is_known() -> None:
    settings = Settings()
    sinks = sink_topics(settings)
    assert set(sinks) == set(settings.connector_names) - {settings.source_connector}
    assert set(sinks.values()) <= set(pipeline_topics(settings))
    assert sink_group(settings.sink_connector) == f"connect-{settings.sink_connector}"
    assert readers(settings)[settings.consumer_group] == [settings.listings_topic]
