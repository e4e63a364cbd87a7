"""``podium serve`` with slow stand-in handlers, for lease tests (test code, not a backend).

``python -m tests.faults.slow_standin serve`` with ``PODIUM_TEST_SLOW_EFFECTS="configgen=6.5,deploy=1"``:
each named effect kind runs its stand-in handler (which counts the execution in the ledger
with ``PODIUM_STANDIN_LEDGER=1``) and then takes that many seconds before returning its
outcome, so the effect stays in flight, leased, for that long.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from handlers import standin
from handlers.base import EffectContext, Handler, Outcome


def _slow(handler: Handler, seconds: float) -> Handler:
    def run(ctx: EffectContext) -> Sequence[Outcome]:
        outcomes = handler(ctx)
        time.sleep(seconds)
        return outcomes

    return run


def slow_down(spec: str) -> None:
    for part in filter(None, spec.split(",")):
        kind, _, seconds = part.partition("=")
        standin.HANDLERS[kind] = _slow(standin.HANDLERS[kind], float(seconds))


if __name__ == "__main__":
    slow_down(os.environ.get("PODIUM_TEST_SLOW_EFFECTS", ""))
    from cli.main import main

    sys.exit(main())
