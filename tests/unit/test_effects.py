"""The effect runner alone, with an autospecced store: bounds, retries, failures, garbage,
deadlines, lost leases, claims and the pool's health."""

from __future__ import annotations

import threading
import time
from unittest import mock

import pytest

from daemon.config import Settings
from daemon.effects import MAX_ATTEMPTS, EffectRunner
from daemon.store import Applied, RunStore
from daemon.store_leases import LeasedEffect, leased_effect
from handlers.base import Outcome
from machines.errors import HandlerError, NotReady
from machines.messages import EffectSpec, Event, RunView


@pytest.fixture
def store():
    return mock.create_autospec(RunStore, instance=True)


def make_runner(store, handlers, concurrency=None, **settings):
    published: list[Event] = []
    runner = EffectRunner(Settings(**({"effect_workers": 8} | settings)), store, handlers,
                          lambda e, a: published.append(e), concurrency=concurrency)
    return runner, published


def submit(runner, *effects: EffectSpec, run_id: str = "r1") -> None:
    claims = {e.effect_id: f"claim-{e.effect_id}" for e in effects}
    runner.on_applied(Applied("applied", run_id, effects=effects, run=RunView(run_id=run_id), claims=claims))


def redrive(runner, effect_id: str, kind: str, attempts: int) -> None:
    """An effect the sweep claimed again (its ``attempts``-th claim)."""
    spec = EffectSpec(effect_id=effect_id, kind=kind, item="s")
    runner._dispatcher.submit(RunView(run_id="r1"), LeasedEffect("r1", spec, "c", attempts))


def wait_idle(runner, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while runner.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not runner.busy


def test_outcomes_are_published_with_deterministic_ids_and_the_effect_id(store):
    runner, published = make_runner(store, {"build": lambda ctx: [Outcome("build.succeeded", ctx.item, {"image": "i"})]})
    submit(runner, EffectSpec(effect_id="build:svc:a0", kind="build", item="svc"))
    wait_idle(runner)
    [event] = published
    assert event.event_id == "build:svc:a0~build.succeeded~svc"
    assert event.data == {"image": "i", "effect_id": "build:svc:a0", "claim": "claim-build:svc:a0"}
    store.effect_done.assert_not_called()  # the transaction applying the outcome marks it done


def test_an_effect_without_outcome_is_marked_done_directly(store):
    runner, published = make_runner(store, {"director.command": lambda ctx: []})
    submit(runner, EffectSpec(effect_id="d:1", kind="director.command"))
    wait_idle(runner)
    assert published == []
    store.effect_done.assert_called_once_with("r1", "d:1", "claim-d:1")


def test_concurrency_bound_per_kind(store):
    running, peak, lock = 0, 0, threading.Lock()

    def slow(ctx):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return [Outcome("build.succeeded", ctx.item)]

    runner, published = make_runner(store, {"build": slow}, concurrency={"build": 2})
    submit(runner, *(EffectSpec(effect_id=f"b{i}", kind="build", item=f"s{i}") for i in range(6)))
    wait_idle(runner)
    assert len(published) == 6
    assert peak == 2


def test_a_retryable_failure_is_retried_later_through_the_lease(store):
    def flaky(ctx):
        raise HandlerError("briefly down", retryable=True)

    runner, published = make_runner(store, {"build": flaky})
    submit(runner, EffectSpec(effect_id="b", kind="build", item="s"))
    wait_idle(runner)
    assert published == []
    run_id, effect_id, claim, delay, error = store.effect_retry_later.call_args.args
    assert (run_id, effect_id, claim, error) == ("r1", "b", "claim-b", "briefly down")
    assert delay > 0


def test_a_retry_waits_as_long_as_the_service_asked(store):
    def throttled(ctx):
        raise HandlerError("quota exhausted", retryable=True, retry_after=45.0)

    runner, published = make_runner(store, {"build": throttled})
    submit(runner, EffectSpec(effect_id="b", kind="build", item="s"))
    wait_idle(runner)
    assert published == []
    assert store.effect_retry_later.call_args.args[3] == 45.0  # not the 2 s backoff of attempt 1


def test_the_last_attempt_fails_the_run_with_a_clear_error(store):
    def broken(ctx):
        raise RuntimeError("kaboom")

    runner, published = make_runner(store, {"build": broken})
    redrive(runner, "b", "build", MAX_ATTEMPTS)
    wait_idle(runner)
    [event] = published
    assert event.type == "build.failed"
    assert "kaboom" in event.data["error"] and "build" in event.data["error"]


def test_a_non_retryable_error_fails_at_once(store):
    def refuses(ctx):
        raise HandlerError("permission denied on topic t", retryable=False)

    runner, published = make_runner(store, {"iam.provision": refuses})
    submit(runner, EffectSpec(effect_id="i", kind="iam.provision", item="accounts"))
    wait_idle(runner)
    assert [e.type for e in published] == ["iam.failed"]
    assert "permission denied" in published[0].data["error"]


def test_garbage_from_a_handler_fails_the_run_clearly(store):
    runner, published = make_runner(store, {"deploy": lambda ctx: "not a list of outcomes"})
    submit(runner, EffectSpec(effect_id="d", kind="deploy", item="s"))
    wait_idle(runner)
    assert [e.type for e in published] == ["deploy.failed"]
    assert "returned str" in published[0].data["error"]


def test_not_ready_rechecks_later_without_counting_an_attempt(store):
    def starting(ctx):
        raise NotReady("process still starting", retry_after=0.5)

    runner, published = make_runner(store, {"deploy": starting})
    submit(runner, EffectSpec(effect_id="d", kind="deploy", item="s"))
    wait_idle(runner)
    assert published == []
    store.effect_retry_later.assert_called_once_with("r1", "d", "claim-d", 0.5, "process still starting", recheck=True)


def test_an_effect_already_held_is_not_run_twice(store):
    gate = threading.Event()
    calls = []

    def held(ctx):
        calls.append(ctx.effect_id)
        gate.wait(2)
        return []

    runner, _ = make_runner(store, {"build": held})
    effect = EffectSpec(effect_id="b", kind="build", item="s")
    submit(runner, effect)
    submit(runner, effect)  # e.g. the sweep finding it while it runs
    gate.set()
    wait_idle(runner)
    assert calls == ["b"]


def test_shutdown_hands_queued_effects_back(store):
    gate = threading.Event()
    runner, _ = make_runner(store, {"build": lambda ctx: gate.wait(2) and []}, concurrency={"build": 1})
    submit(runner, *(EffectSpec(effect_id=f"b{i}", kind="build", item=f"s{i}") for i in range(3)))
    time.sleep(0.1)
    threading.Timer(0.2, gate.set).start()
    runner.shutdown(grace=2)
    released = {key for call in store.release_leases.call_args_list for key in call.args[0]}
    assert len(released) == 2  # the two still waiting for the bound; the running one finished


def wait_until(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def gate():
    event = threading.Event()
    yield event
    event.set()  # free the threads a test left hanging


# ---- deadlines (issue 10, point 4) --------------------------------------------------


def test_a_hung_handler_is_abandoned_at_its_deadline_and_retried_later(store, gate):
    store.extend_leases.return_value = set()
    late = []

    def hangs(ctx):
        gate.wait(10)
        late.append(ctx.effect_id)
        return [Outcome("build.succeeded", ctx.item)]

    runner, published = make_runner(store, {"build": hangs}, effect_lease_seconds=0.6,
                                     effect_deadline_seconds={"build": 0.3})
    runner.start()
    submit(runner, EffectSpec(effect_id="b", kind="build", item="s"))
    wait_until(lambda: store.effect_retry_later.called, what="the retry after the deadline")
    run_id, effect_id, claim, delay, error = store.effect_retry_later.call_args.args
    assert (run_id, effect_id, claim) == ("r1", "b", "claim-b")
    assert "deadline" in error and delay > 0
    # the lease is no longer renewed
    store.extend_leases.reset_mock()
    wait_until(lambda: store.extend_leases.call_count >= 2, what="two more heartbeats")
    assert all(("r1", "b") not in call.args[0] for call in store.extend_leases.call_args_list)
    # the late result is dropped, not reported
    gate.set()
    wait_until(lambda: late, what="the hung handler to return")
    time.sleep(0.1)
    assert published == []
    store.effect_done.assert_not_called()
    runner.shutdown(grace=1)


def test_the_last_attempt_past_its_deadline_fails_the_run(store, gate):
    store.extend_leases.return_value = set()
    runner, published = make_runner(store, {"deploy": lambda ctx: gate.wait(10) and []},
                                    effect_lease_seconds=0.6, effect_deadline_seconds={"deploy": 0.2})
    runner.start()
    redrive(runner, "d", "deploy", MAX_ATTEMPTS)
    wait_until(lambda: published, what="the failure")
    [event] = published
    assert event.type == "deploy.failed" and "deadline" in event.data["error"]
    assert event.data["claim"] == "c"
    store.effect_retry_later.assert_not_called()
    runner.shutdown(grace=1)


def test_hung_handlers_do_not_wedge_the_pool(store, gate):
    store.extend_leases.return_value = set()
    runner, published = make_runner(
        store,
        {"build": lambda ctx: gate.wait(10) and [], "configgen": lambda ctx: [Outcome("config.generated")]},
        effect_workers=2, effect_lease_seconds=0.6, effect_deadline_seconds={"build": 0.2},
    )
    runner.start()
    submit(runner, *(EffectSpec(effect_id=f"b{i}", kind="build", item=f"s{i}") for i in range(2)))
    time.sleep(0.05)
    submit(runner, EffectSpec(effect_id="c", kind="configgen"))
    wait_until(lambda: published, timeout=3, what="configgen to run past two hung builds")
    assert [e.type for e in published] == ["config.generated"]
    runner.shutdown(grace=1)


def test_deadlines_default_per_kind_and_can_be_overridden():
    from daemon.effects import deadline_for

    s = Settings(preflight_timeout_seconds=100)
    assert deadline_for(s, "preflight") > 100
    assert deadline_for(s, "build") > deadline_for(s, "director.command")
    assert 60 <= deadline_for(s, "configgen") <= 120
    assert deadline_for(Settings(effect_deadline_seconds={"build": 3}), "build") == 3


# ---- the per-kind bound is taken before a worker ----------------------------------------


def test_effects_waiting_for_their_kind_hold_no_worker(store, gate):
    runner, published = make_runner(
        store,
        {"build": lambda ctx: gate.wait(10) and [], "configgen": lambda ctx: [Outcome("config.generated")]},
        concurrency={"build": 1}, effect_workers=2,
    )
    submit(runner, *(EffectSpec(effect_id=f"b{i}", kind="build", item=f"s{i}") for i in range(4)))
    submit(runner, EffectSpec(effect_id="c", kind="configgen"))
    # one build runs, three wait for the bound, and configgen still finds the second worker
    wait_until(lambda: published, timeout=2, what="configgen while builds wait for their bound")
    gate.set()
    wait_idle(runner)


def test_memory_is_bounded_the_rest_is_left_to_the_sweep(store, gate):
    runner, _ = make_runner(store, {"build": lambda ctx: gate.wait(10) and []}, concurrency={"build": 1},
                            effect_queue_limit=3)
    submit(runner, *(EffectSpec(effect_id=f"b{i}", kind="build", item=f"s{i}") for i in range(5)))
    assert runner.busy == 3
    gate.set()
    wait_idle(runner)


# ---- health ------------------------------------------------------------------------------


def test_health_reports_a_saturated_pool(store, gate):
    runner, _ = make_runner(store, {"build": lambda ctx: gate.wait(10) and []}, effect_workers=1,
                            effect_stall_seconds=0.2)
    submit(runner, *(EffectSpec(effect_id=f"b{i}", kind="build", item=f"s{i}") for i in range(2)))
    assert runner.health() is None
    reason = wait_until(runner.health, timeout=2, what="the pool to be reported saturated")
    assert "saturated" in reason
    gate.set()
    wait_idle(runner)
    assert runner.health() is None


def test_health_reports_handlers_hung_past_their_deadline(store, gate):
    store.extend_leases.return_value = set()
    runner, _ = make_runner(store, {"build": lambda ctx: gate.wait(10) and []}, effect_workers=2,
                            effect_lease_seconds=0.6, effect_deadline_seconds={"build": 0.1})
    runner.start()
    submit(runner, *(EffectSpec(effect_id=f"b{i}", kind="build", item=f"s{i}") for i in range(2)))
    reason = wait_until(runner.health, timeout=3, what="the hung handlers to be reported")
    assert "hung" in reason
    gate.set()
    wait_until(lambda: runner.health() is None, timeout=3, what="health to recover")
    runner.shutdown(grace=1)


def test_healthz_answers_503_with_the_reason():
    import json
    import urllib.error
    import urllib.request

    from daemon.http import DaemonHTTP

    class Unhealthy:
        def __call__(self) -> bool:
            return False

        def why(self) -> str:
            return "effect pool saturated: all 16 workers busy"

    http = DaemonHTTP(Settings(), mock.Mock(), Unhealthy(), port=0)
    http.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{http.port}/healthz", timeout=5)
        assert err.value.code == 503
        assert json.loads(err.value.read()) == {"status": "unhealthy", "reason": "effect pool saturated: all 16 workers busy"}
    finally:
        http.stop()


# ---- leases and claims (issue 10, point 5) ----------------------------------------------


def test_a_lost_lease_drops_the_effect_and_its_late_result(store, gate):
    store.extend_leases.side_effect = lambda held, fresh=(): set(held)  # another claim took every one
    runner, published = make_runner(store, {"build": lambda ctx: gate.wait(10) and [Outcome("build.succeeded", ctx.item)]},
                                    effect_lease_seconds=0.6)
    runner.start()
    submit(runner, EffectSpec(effect_id="b", kind="build", item="s"))
    wait_until(lambda: runner.busy == 0, what="the lost effect to be dropped")
    held = store.extend_leases.call_args_list[0].args[0]
    assert held == {("r1", "b"): "claim-b"}  # the heartbeat renews under the claim
    gate.set()
    time.sleep(0.2)
    assert published == []  # its result is not reported
    runner.shutdown(grace=1)


def test_a_lease_granted_moments_ago_is_only_checked_then_renewed_once_a_period_old(store, gate):
    store.extend_leases.return_value = set()
    runner, _ = make_runner(store, {"build": lambda ctx: gate.wait(10) and []}, effect_lease_seconds=30.0)
    submit(runner, EffectSpec(effect_id="b", kind="build", item="s"))
    key = ("r1", "b")
    wait_until(lambda: runner._held[key].state == "running", what="the build to start")
    runner.renew()  # its lease was granted with the effect: still fresh
    held, fresh = store.extend_leases.call_args.args
    assert held == {key: "claim-b"} and fresh == {key}
    runner._held[key].leased_at -= 11.0  # a period (10 s) later
    runner.renew()
    held, fresh = store.extend_leases.call_args.args
    assert held == {key: "claim-b"} and fresh == set()
    runner.renew()  # just renewed: fresh again
    assert store.extend_leases.call_args.args[1] == {key}
    runner._held[key].leased_at -= 2.0  # older than a quarter period (2.5 s)? not yet
    runner.renew()
    assert store.extend_leases.call_args.args[1] == {key}
    runner._held[key].leased_at -= 1.0
    runner.renew()
    assert store.extend_leases.call_args.args[1] == set()
    # after a failed heartbeat, the next one writes every lease, however young
    store.extend_leases.side_effect = [RuntimeError("firestore is away"), set()]
    runner.renew()
    runner.renew()
    assert store.extend_leases.call_args.args[1] == set()
    store.extend_leases.side_effect = None
    runner.renew()  # and then young ones are only checked again
    assert store.extend_leases.call_args.args[1] == {key}
    gate.set()
    runner.shutdown(grace=1)


def test_the_sweep_gives_up_an_effect_claimed_too_often(store):
    calls = []
    store.expired_effects.return_value = [{"run_id": "r1", "effect_id": "b"}]
    store.claim_effect.return_value = (
        leased_effect({"run_id": "r1", "effect_id": "b", "kind": "build", "item": "s", "claim": "c9",
                       "attempts": MAX_ATTEMPTS + 1, "last_error": "boom"}),
        RunView(run_id="r1", status="running"),
    )
    runner, published = make_runner(store, {"build": lambda ctx: calls.append(ctx) or []})
    assert runner.sweep() == 1
    wait_idle(runner)
    assert calls == []
    [event] = published
    assert event.type == "build.failed" and event.data["claim"] == "c9"
    assert f"crashed or was abandoned {MAX_ATTEMPTS} times" in event.data["error"]
    assert "boom" in event.data["error"]


def test_a_handler_reporting_another_effects_outcome_fails_clearly(store):
    runner, published = make_runner(store, {"deploy": lambda ctx: [Outcome("build.succeeded", ctx.item)]})
    submit(runner, EffectSpec(effect_id="d", kind="deploy", item="s"))
    wait_idle(runner)
    assert [e.type for e in published] == ["deploy.failed"]
    assert "wrong outcome" in published[0].data["error"]


@pytest.mark.parametrize(
    ("kind", "effect_item", "event_type", "event_item", "ok"),
    [
        ("build", "svc", "build.succeeded", "svc", True),
        ("build", "svc", "build.failed", "svc", True),
        ("build", "svc", "build.succeeded", "other", False),  # another item's outcome
        ("build", "svc", "deploy.succeeded", "svc", False),  # another kind's outcome
        ("iam.provision", "accounts", "iam.accounts_created", None, True),  # created for every service
        ("director.command", "ping", "director.ready", "director", True),  # the ping's answer names the director
        ("director.command", "tracer", "director.dataflow_complete", "tracer", True),
        ("director.command", "tracer", "director.dataflow_complete", "other", False),
        ("configgen", None, "config.generated", None, True),
        ("mystery", None, "director.failed", None, True),  # the runner's report for a kind without handler
    ],
)
def test_an_event_may_settle_only_an_effect_of_its_own_kind_and_item(kind, effect_item, event_type, event_item, ok):
    from handlers.base import outcome_mismatch

    assert (outcome_mismatch(kind, effect_item, event_type, event_item) is None) is ok
