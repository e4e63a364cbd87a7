"""daemon/wakeups.py: actions run once at their moment, in order; replaced, cancelled, bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from daemon.wakeups import Wakeups


def _recorder() -> tuple[list[str], threading.Event, Callable[..., Callable[[], None]]]:
    ran: list[str] = []
    done = threading.Event()

    def action(name: str, last: bool = False):
        def run() -> None:
            ran.append(name)
            if last:
                done.set()
        return run

    return ran, done, action


def test_actions_run_once_in_the_order_they_are_due():
    wheel = Wakeups()
    wheel.start()
    ran, done, action = _recorder()
    began = time.monotonic()
    wheel.at("c", 0.30, action("c", last=True))
    wheel.at("a", 0.05, action("a"))
    wheel.at("b", 0.15, action("b"))
    assert done.wait(5)
    assert ran == ["a", "b", "c"]
    assert time.monotonic() - began >= 0.29
    assert len(wheel) == 0
    wheel.stop()


def test_a_key_scheduled_again_runs_only_its_latest_action_and_a_cancelled_one_never():
    wheel = Wakeups()
    wheel.start()
    ran, done, action = _recorder()
    wheel.at("timer", 0.05, action("old"))
    wheel.at("timer", 0.10, action("new"))
    wheel.at("gone", 0.05, action("gone"))
    wheel.cancel("gone")
    wheel.at("end", 0.25, action("end", last=True))
    assert done.wait(5)
    assert ran == ["new", "end"]
    wheel.stop()


def test_a_full_wheel_refuses_new_keys_and_a_failing_action_does_not_stop_it():
    wheel = Wakeups(limit=2)
    ran, done, action = _recorder()
    assert wheel.at("a", 0.0, lambda: 1 / 0)
    assert wheel.at("b", 0.05, action("b", last=True))
    assert not wheel.at("c", 0.0, action("c"))  # left to the sweeps
    assert wheel.at("b", 0.05, action("b", last=True))  # a known key may be moved
    wheel.start()
    assert done.wait(5)
    assert ran == ["b"]
    wheel.stop()
    assert not wheel.at("d", 0.0, action("d"))  # stopped
