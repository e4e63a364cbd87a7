"""Checks of "nothing applied twice" that can fail (issue 10 point 8).

"No event id applied twice" cannot fail: an applied audit record's document id *is* its event
id, so two applied records with one event id cannot exist. What can go wrong instead, and is
checked here from the records' own fields:

* a transition applied but its record lost or overwritten: the applied records' versions
  must be exactly ``1..version``, one record per version (:func:`transition_problems`);
* one effect's outcome applied twice under two event ids (e.g. an outcome that carries its
  claim, or a re-run effect reporting under a new id): per run attempt, each outcome type
  for each item is applied at most once, whatever its event id (:func:`outcome_problems`);
* more (or other) transitions than a clean run: the applied (type, item) multiset, timers
  aside, equals a reference run's (:func:`transitions`);
* an effect executed more often than its faults explain: the stand-in ledger
  (:func:`ledger`, ``PODIUM_STANDIN_LEDGER=1``) or an in-process counter (:class:`Executions`).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from handlers.base import EffectContext, Outcome
from tests.integration.conftest import audit, run_doc

_ATTEMPT = re.compile(r":a(\d+)(?::|$)")
NOT_OUTCOMES = ("command.", "timer.")


def applied(db: Any, settings: Any, run_id: str) -> list[dict[str, Any]]:
    return [r for r in audit(db, settings, run_id) if r["outcome"] == "applied"]


def is_outcome(record: Mapping[str, Any]) -> bool:
    """An effect's outcome event (not a command, not a timer)."""
    return not str(record["type"]).startswith(NOT_OUTCOMES)


def effect_of(record: Mapping[str, Any]) -> str:
    """The effect an outcome record belongs to: its event id is ``<effect id>~<type>~<item>``."""
    return str(record["event_id"]).split("~", 1)[0]


def attempt_of(record: Mapping[str, Any]) -> int:
    """The run attempt (``retry`` count) an outcome belongs to, from its effect id's ``:a<n>``."""
    match = _ATTEMPT.search(effect_of(record))
    return int(match.group(1)) if match else -1


def transition_problems(doc: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The applied records carry the versions ``1..version``, each exactly once."""
    versions = sorted(int(r.get("version") or 0) for r in records)
    if versions != list(range(1, int(doc["version"]) + 1)):
        doubled = sorted(v for v, n in Counter(versions).items() if n > 1)
        missing = sorted(set(range(1, int(doc["version"]) + 1)) - set(versions))
        return [f"{doc['run_id']}: version {doc['version']} but {len(versions)} applied records "
                f"(versions doubled {doubled}, missing {missing})"]
    return []


def outcome_problems(records: Sequence[Mapping[str, Any]], run_id: str = "") -> list[str]:
    """Each effect outcome applied once: per (attempt, type, item), and per (effect, type, item)."""
    outcomes = [r for r in records if is_outcome(r)]
    per_item = Counter((attempt_of(r), r["type"], r.get("item")) for r in outcomes)
    per_effect = Counter((effect_of(r), r["type"], r.get("item")) for r in outcomes)
    problems = []
    twice = {f"a{a} {t} {i}": n for (a, t, i), n in per_item.items() if n > 1}
    if twice:
        ids = sorted(r["event_id"] for r in outcomes if per_item[(attempt_of(r), r["type"], r.get("item"))] > 1)
        problems.append(f"{run_id}: outcomes applied more than once: {twice} (event ids {ids})")
    twice_effect = {f"{e} {t} {i}": n for (e, t, i), n in per_effect.items() if n > 1}
    if twice_effect and not twice:
        problems.append(f"{run_id}: an effect's outcome applied more than once: {twice_effect}")
    return problems


def transitions(records: Sequence[Mapping[str, Any]]) -> Counter[tuple[str, str | None]]:
    """The applied transitions as a multiset of (type, item), timers left out (their count
    depends on timing: IAM polls, director pings)."""
    return Counter((str(r["type"]), r.get("item")) for r in records if not str(r["type"]).startswith("timer."))


def applied_once_problems(db: Any, settings: Any, run_id: str,
                          reference: Counter[tuple[str, str | None]] | None = None) -> list[str]:
    """Every can-fail check of the audit log of one run; ``reference``: a clean run's
    :func:`transitions` (then the run must have applied exactly those)."""
    doc = run_doc(db, settings, run_id)
    if doc is None:
        return [f"{run_id}: no run document"]
    records = applied(db, settings, run_id)
    problems = transition_problems(doc, records) + outcome_problems(records, run_id)
    if reference is not None:
        got = transitions(records)
        if got != reference:
            problems.append(f"{run_id}: applied transitions differ from the reference run's: "
                            f"extra {dict(got - reference)}, missing {dict(reference - got)}")
    return problems


def reference_transitions(db: Any, settings: Any, run_id: str) -> Counter[tuple[str, str | None]]:
    records = applied(db, settings, run_id)
    doc = run_doc(db, settings, run_id)
    assert doc is not None and doc["status"] == "succeeded", (run_id, doc)
    problems = transition_problems(doc, records) + outcome_problems(records, run_id)
    assert not problems, problems
    return transitions(records)


def ledger(db: Any, run_id: str) -> dict[str, int]:
    """The stand-in backend's executions per effect id (daemons with ``PODIUM_STANDIN_LEDGER=1``)."""
    docs = db.collection("standin_ledger").where(filter=FieldFilter("run_id", "==", run_id)).stream()
    return {d.to_dict()["effect_id"]: int(d.to_dict()["executions"]) for d in docs}


def effect_ids(db: Any, settings: Any, run_id: str) -> set[str]:
    return {e.id for e in db.collection(settings.collection).document(run_id).collection("effects").stream()}


class Executions:
    """Wraps in-process daemons' handlers and counts executions per (run id, effect id)."""

    def __init__(self, *tables: dict[str, Callable[[EffectContext], Sequence[Outcome]]]) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        for handlers in tables:
            for kind, handler in list(handlers.items()):
                handlers[kind] = self._wrap(handler)

    def _wrap(self, handler: Callable[[EffectContext], Sequence[Outcome]]) -> Callable[[EffectContext], Sequence[Outcome]]:
        def run(ctx: EffectContext) -> Sequence[Outcome]:
            with self._lock:
                self.counts[(ctx.run_id, ctx.effect_id)] += 1
            return handler(ctx)

        return run

    def of(self, run_id: str) -> dict[str, int]:
        with self._lock:
            return {e: n for (r, e), n in self.counts.items() if r == run_id}

    def problems(self, db: Any, settings: Any, run_id: str, allowed: int = 1) -> list[str]:
        return execution_problems(run_id, self.of(run_id), effect_ids(db, settings, run_id), allowed)


_POLL = re.compile(r":p\d+$")


def execution_problems(run_id: str, counts: Mapping[str, int], effects: set[str], allowed: int = 1,
                       exceptions: Mapping[str, int] | None = None) -> list[str]:
    """Every effect of the run executed at least once (a poll, ``:p<n>``, may have been overtaken
    by the next one and never run) and at most ``allowed`` times (``exceptions``: per effect)."""
    exceptions = exceptions or {}
    problems = []
    never = sorted(e for e in effects - set(counts) if not _POLL.search(e))
    if never:
        problems.append(f"{run_id}: effects never executed: {never}")
    often = {e: n for e, n in counts.items() if n > exceptions.get(e, allowed)}
    if often:
        problems.append(f"{run_id}: effects executed more often than allowed ({allowed}, {exceptions}): {often}")
    return problems
