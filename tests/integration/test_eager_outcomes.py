"""Eager outcomes (daemon/outcome_delivery.py): an outcome of an effect this replica ran is
applied here at once; Pub/Sub carries it only when eager is off or the local apply fails."""

from __future__ import annotations

from collections import Counter

from tests.integration.conftest import assert_consistent, audit, publish, start_body, wait_status

START = "command.start"


def _count_publishes(daemon) -> Counter[str]:
    """Count, by type, the outcomes the effect runner's delivery publishes on the events topic."""
    sent: Counter[str] = Counter()
    delivery = daemon.effects.publish  # daemon/outcome_delivery.OutcomeDelivery
    real = delivery.publish

    def counting(event, attributes):
        sent[event.type] += 1
        return real(event, attributes)

    delivery.publish = counting
    return sent


def test_eager_outcomes_are_applied_without_the_events_topic(settings, db, daemon_factory):
    daemon = daemon_factory(settings)
    assert settings.eager_outcomes  # the default
    sent = _count_publishes(daemon)
    publish(settings, start_body("eager-1"))
    assert wait_status(db, settings, "eager-1")["status"] == "succeeded"
    applied = assert_consistent(db, settings, "eager-1")
    outcomes = [e for e in applied if e["type"] != START and not e["type"].startswith("timer.")]
    assert len(outcomes) >= 15
    # every outcome was applied here, recorded under its own event id, and nothing was published
    assert {e["message_id"] for e in outcomes} == {"eager"}
    assert len({e["event_id"] for e in outcomes}) == len(outcomes)
    assert not sent, sent
    effects = [d.to_dict() for d in db.collection(settings.collection).document("eager-1").collection("effects").stream()]
    assert effects and all(e["status"] == "done" for e in effects)


def test_without_eager_outcomes_every_outcome_travels_through_the_events_topic(settings, db, daemon_factory):
    settings = settings.model_copy(update={"eager_outcomes": False})
    daemon = daemon_factory(settings)
    sent = _count_publishes(daemon)
    publish(settings, start_body("lazy-1"))
    assert wait_status(db, settings, "lazy-1")["status"] == "succeeded"
    outcomes = [e for e in assert_consistent(db, settings, "lazy-1") if e["type"] != START and not e["type"].startswith("timer.")]
    assert "eager" not in {e["message_id"] for e in outcomes}
    assert sum(sent.values()) >= len(outcomes)


def test_an_outcome_that_cannot_be_applied_here_is_published_and_applied_from_the_topic(
    settings, db, daemon_factory
):
    from google.api_core.exceptions import ServiceUnavailable

    daemon = daemon_factory(settings)
    sent = _count_publishes(daemon)
    batches = daemon.effects.publish.batches  # daemon/outcome_batches.OutcomeBatches
    real_apply = batches.apply_many
    refused: list[str] = []

    def flaky_apply(run_id, items):
        builds = [event.event_id for event, _ in items if event.type == "build.succeeded"]
        if builds:  # the whole batch fails: each of its outcomes is published
            refused.extend(builds)
            raise ServiceUnavailable("firestore is away for this replica")
        return real_apply(run_id, items)

    batches.apply_many = flaky_apply
    publish(settings, start_body("fallback-1"))
    assert wait_status(db, settings, "fallback-1")["status"] == "succeeded"
    applied = assert_consistent(db, settings, "fallback-1")
    builds = [e for e in applied if e["type"] == "build.succeeded"]
    assert len(builds) == 3 and sent["build.succeeded"] == 3
    assert sorted(refused) == sorted(e["event_id"] for e in builds)  # each build's outcome once, then Pub/Sub
    assert all(e["message_id"] != "eager" for e in builds)
    assert {e["message_id"] for e in applied if e["type"] == "deploy.succeeded"} == {"eager"}
    assert not [e for e in audit(db, settings, "fallback-1") if e["outcome"] == "duplicate"]
