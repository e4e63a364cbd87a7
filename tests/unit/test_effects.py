"""The effect runner alone, with an autospecced store: bounds, retries, failures, garbage."""

from __future__ import annotations

import threading
import time
from unittest import mock

import pytest

from daemon.config import Settings
from daemon.effects import MAX_ATTEMPTS, EffectRunner
from daemon.store import Applied, RunStore
from handlers.base import Outcome
from machines.errors import HandlerError, NotReady
from machines.messages import EffectSpec, Event


@pytest.fixture
def store():
    return mock.create_autospec(RunStore, instance=True)


def make_runner(store, handlers, concurrency=None):
    published: list[Event] = []
    runner = EffectRunner(Settings(effect_workers=8), store, handlers, lambda e, a: published.append(e),
                          concurrency=concurrency)
    return runner, published


def submit(runner, *effects: EffectSpec, run_id: str = "r1") -> None:
    runner.on_applied(Applied("applied", run_id, effects=list(effects), run_doc={"run_id": run_id}))


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
    assert event.data == {"image": "i", "effect_id": "build:svc:a0"}
    store.effect_done.assert_not_called()  # the transaction applying the outcome marks it done


def test_an_effect_without_outcome_is_marked_done_directly(store):
    runner, published = make_runner(store, {"director.command": lambda ctx: []})
    submit(runner, EffectSpec(effect_id="d:1", kind="director.command"))
    wait_idle(runner)
    assert published == []
    store.effect_done.assert_called_once_with("r1", "d:1")


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
    run_id, effect_id, delay, error = store.effect_retry_later.call_args.args
    assert (run_id, effect_id, error) == ("r1", "b", "briefly down")
    assert delay > 0


def test_the_last_attempt_fails_the_run_with_a_clear_error(store):
    def broken(ctx):
        raise RuntimeError("kaboom")

    runner, published = make_runner(store, {"build": broken})
    runner._submit({"run_id": "r1"}, {"effect_id": "b", "kind": "build", "item": "s"}, attempts=MAX_ATTEMPTS - 1)
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
    store.effect_retry_later.assert_called_once_with("r1", "d", 0.5, "process still starting", count=False)


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
