"""Bad handlers: one that raises (retried with backoff, then the run fails naming the kind and
the exception), one that is flaky (retried, then the run succeeds), ones that return garbage
(the run fails clearly), one that hangs and one that is never ready (the state's timeout
fails the run). Each misbehaves in its own run, all at once, in one in-process daemon: no
run hangs, no other run is disturbed."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from daemon import effects as effects_module
from daemon.engine import Engine
from handlers.base import EffectContext, Outcome
from machines.errors import HandlerError, NotReady, TransientError
from tests.faults.conftest import seed_for, summary
from tests.integration.conftest import (
    assert_consistent,
    audit,
    publish,
    run_doc,
    start_body,
    wait_for,
)

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 3  # instead of 5: backoff 2 + 4 s instead of 2 + 4 + 8 + 16 s
STATE_TIMEOUT = 4.0  # generating_config, provisioning_iam and deploying_director
ANY_STATE_TIMEOUT = 30.0  # every state without its own budget: nothing may hang longer
ENDS_WITHIN = 25.0  # seconds from the start command to the end, for every run


@dataclass
class Scenario:
    run_id: str
    kind: str  # the effect kind that misbehaves
    item: str | None  # and for which item (None: any)
    behave: Callable[[EffectContext, int], Sequence[Outcome]]  # (ctx, call number) -> outcomes
    status: str
    reason: str | None = None
    state: str | None = None
    needles: tuple[str, ...] = ()
    calls: tuple[int, int] = (1, 1_000)  # expected number of calls, inclusive


class Boom(Exception):
    pass


def test_bad_handlers_fail_their_run_clearly_and_never_hang(settings, db, daemon_factory, monkeypatch):
    seed = seed_for("bad_handlers")
    rng = random.Random(seed)
    token = f"{rng.getrandbits(32):08x}"  # in the exception text: the error must carry it through
    release = threading.Event()
    monkeypatch.setattr(effects_module, "MAX_ATTEMPTS", MAX_ATTEMPTS)
    base_limits = Engine.limits
    monkeypatch.setattr(Engine, "limits", lambda self: base_limits(self) | {
        "timeout_generating_config": timedelta(seconds=STATE_TIMEOUT),
        "timeout_deploying_director": timedelta(seconds=STATE_TIMEOUT),
        "timeout_provisioning_iam": timedelta(seconds=STATE_TIMEOUT),
        "state_timeout": timedelta(seconds=ANY_STATE_TIMEOUT),
    })

    def raises(ctx: EffectContext, n: int) -> Sequence[Outcome]:
        raise Boom(f"boom {token} (call {n})")

    def flaky(ctx: EffectContext, n: int) -> Sequence[Outcome]:
        if n < MAX_ATTEMPTS:
            raise TransientError(f"flaky {token} (call {n})")
        return [Outcome("preflight.passed", ctx.item, {"output_tail": "after two failures"})]

    def fatal(ctx: EffectContext, n: int) -> Sequence[Outcome]:
        raise HandlerError(f"fatal {token}", retryable=False)

    def hangs(ctx: EffectContext, n: int) -> Sequence[Outcome]:
        release.wait(120)
        return [Outcome("config.generated")]

    def never_ready(ctx: EffectContext, n: int) -> Sequence[Outcome]:
        raise NotReady(f"still starting {token} (call {n})", retry_after=0.3)

    scenarios = [
        Scenario("bad-raises", "build", "subscriber", raises, "failed", "build_failed", None,
                 ("build", "Boom", token, f"after {MAX_ATTEMPTS} attempts"), (MAX_ATTEMPTS, MAX_ATTEMPTS)),
        Scenario("bad-flaky", "preflight", "publisher", flaky, "succeeded", calls=(MAX_ATTEMPTS, MAX_ATTEMPTS)),
        Scenario("bad-fatal", "iam.provision", None, fatal, "failed", "iam_failed", "provisioning_iam",
                 (token,), (1, 1)),
        Scenario("bad-garbage-str", "deploy", "director", lambda c, n: "all good",  # type: ignore[arg-type,return-value]
                 "failed", "deploy_failed", "deploying_director", ("deploy", "returned str"), (1, 1)),
        Scenario("bad-garbage-list", "configgen", None, lambda c, n: [{"type": "config.generated"}],  # type: ignore[list-item]
                 "failed", "config_failed", "generating_config", ("configgen", "not outcomes"), (1, 1)),
        Scenario("bad-garbage-none", "preflight", "subscriber", lambda c, n: None,  # type: ignore[arg-type,return-value]
                 "failed", "preflight_failed", "preflight", ("preflight", "returned NoneType"), (1, 1)),
        Scenario("bad-unknown-outcome", "deploy", "director", lambda c, n: [Outcome("deploy.exploded", c.item)],
                 "failed", "deploy_failed", "deploying_director", ("not a valid event", "deploy.exploded"), (1, 1)),
        Scenario("bad-unserialisable-outcome", "iam.provision", None,
                 lambda c, n: [Outcome("iam.accounts_created", None, {"service_accounts": {"a": object()}})],
                 "failed", "iam_failed", "provisioning_iam", ("iam.provision", "not a valid event"), (1, 1)),
        # Valid JSON of the wrong shape: the machine ignores it (saying why in the audit log) and
        # the run is bounded by its state's timeout.
        Scenario("bad-malformed-outcome", "iam.provision", None,
                 lambda c, n: [Outcome("iam.accounts_created", None, {"service_accounts": ["a", "b"]})],
                 "failed", "timeout", "provisioning_iam", ("provisioning_iam", "timed out")),
        Scenario("bad-hangs", "configgen", None, hangs, "failed", "timeout", "generating_config",
                 ("generating_config", "timed out"), (1, 1)),
        Scenario("bad-never-ready", "deploy", "director", never_ready, "failed", "timeout", "deploying_director",
                 ("deploying_director", "timed out"), (3, 1_000)),
    ]
    by_run = {s.run_id: s for s in scenarios}
    calls: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()

    daemon = daemon_factory(settings)
    normal = dict(daemon.effects.handlers)

    def dispatcher(kind: str) -> Callable[[EffectContext], Sequence[Outcome]]:
        def run(ctx: EffectContext) -> Sequence[Outcome]:
            s = by_run.get(ctx.run_id)
            if s is None or s.kind != kind or (s.item is not None and s.item != ctx.item):
                return normal[kind](ctx)
            with lock:
                calls[s.run_id].append(time.monotonic())
                n = len(calls[s.run_id])
            return s.behave(ctx, n)

        return run

    for kind in normal:
        daemon.effects.handlers[kind] = dispatcher(kind)

    started: dict[str, float] = {}
    for s in [*scenarios, Scenario("bad-bystander", "-", None, raises, "succeeded")]:
        publish(settings, start_body(s.run_id))
        started[s.run_id] = time.monotonic()
    docs: dict[str, dict[str, Any]] = {}
    ended: dict[str, float] = {}
    deadline = time.monotonic() + ENDS_WITHIN + 20
    try:
        while len(ended) < len(started) and time.monotonic() < deadline:
            for run_id in set(started) - set(ended):
                doc = run_doc(db, settings, run_id) or {"status": "running", "state": None}
                docs[run_id] = doc
                if doc["status"] != "running":
                    ended[run_id] = time.monotonic()  # an upper bound: when we saw it end
            time.sleep(0.2)
    finally:
        release.set()  # let the hung handler's thread go

    problems: list[str] = []
    for run_id, doc in docs.items():
        s = by_run.get(run_id) or Scenario(run_id, "-", None, raises, "succeeded")
        err = doc.get("error") or {}
        took = ended.get(run_id, time.monotonic()) - started[run_id]
        n = len(calls.get(run_id, []))
        print(f"  {run_id}: {doc['status']} in {doc['state']!r} after <= {took:.1f} s, handler called {n}x; "
              f"error: {err.get('reason')} {str(err.get('message', ''))[:150]!r}", flush=True)
        if doc["status"] != s.status:
            problems.append(f"{run_id}: {doc['status']} (expected {s.status}): {err}")
        if s.reason and err.get("reason") != s.reason:
            problems.append(f"{run_id}: reason {err.get('reason')!r} (expected {s.reason!r})")
        if s.state and err.get("state") != s.state:
            problems.append(f"{run_id}: failed in {err.get('state')!r} (expected {s.state!r})")
        missing = [w for w in s.needles if w.lower() not in str(err.get("message", "")).lower()]
        if missing:
            problems.append(f"{run_id}: the error does not say {missing}: {err.get('message')!r}")
        if run_id in by_run and not s.calls[0] <= n <= s.calls[1]:
            problems.append(f"{run_id}: handler called {n} times (expected {s.calls[0]}..{s.calls[1]})")
        if took > ENDS_WITHIN:
            problems.append(f"{run_id}: took {took:.0f} s to end (bound {ENDS_WITHIN:.0f} s)")
        try:
            assert_consistent(db, settings, run_id)
        except AssertionError as exc:
            problems.append(f"{run_id}: {exc}")

    # backoff: the raising handler's retries waited about 2 s, then 4 s
    t = calls["bad-raises"]
    gaps = [round(b - a, 1) for a, b in zip(t, t[1:], strict=False)]
    print(f"  bad-raises retry gaps: {gaps} s", flush=True)
    if len(gaps) != MAX_ATTEMPTS - 1 or any(g < 2.0 ** (i + 1) - 0.2 for i, g in enumerate(gaps)):
        problems.append(f"bad-raises: retries not backed off 2, 4 s: gaps {gaps}")

    # the hung handler, released now, reports late: the failed run records it as ignored
    def late_outcome() -> list[dict[str, Any]]:
        return [e for e in audit(db, settings, "bad-hangs") if e["type"] == "config.generated"]

    try:
        late = wait_for(late_outcome, 15, "the late outcome of the released handler")
        if any(e["outcome"] == "applied" for e in late) or run_doc(db, settings, "bad-hangs")["status"] != "failed":
            problems.append(f"bad-hangs: a late outcome changed the failed run: {late}")
    except AssertionError as exc:
        problems.append(f"bad-hangs: {exc}")

    why = [e["detail"] for e in audit(db, settings, "bad-malformed-outcome") if e["type"] == "iam.accounts_created"]
    print(f"  bad-malformed-outcome audit: {why}", flush=True)
    if not any("not a map" in d for d in why):
        problems.append(f"bad-malformed-outcome: no ignored record says why: {why}")

    failed = {p.split(":")[0] for p in problems}
    summary("bad_handlers", tried=len(scenarios), survived=len(scenarios) - len(failed & set(by_run)),
            lost=len(failed))
    assert not problems, f"seed={seed}: " + "; ".join(problems)
