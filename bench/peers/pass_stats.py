"""The per-pass statistics both sides of the peer benchmark compute alike (stdlib only: the
Temporal side imports it from the peer venv, the Podium side from the project's)."""

from __future__ import annotations

import statistics
from typing import Any

# CPU totals a side's passes may carry: Temporal's server + worker, and the name both share.
_CPU_TOTALS = ("cpu_s_server_worker", "cpu_s_engine_total")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median_of(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the passes (a pass without latencies counts 0 ms)."""
    med = statistics.median
    medians: dict[str, Any] = {
        "runs": passes[0]["runs"],
        "passes": len(passes),
        "complete": all(p["complete"] for p in passes),
        "deployments_per_second": round(med(p["deployments_per_second"] for p in passes), 2),
        "p50_ms": round(med(p["p50_ms"] or 0.0 for p in passes), 1),
        "p99_ms": round(med(p["p99_ms"] or 0.0 for p in passes), 1),
        "cpu_s": {name: round(med(p["cpu_s"][name] for p in passes), 3) for name in passes[0]["cpu_s"]},
    }
    for key in _CPU_TOTALS:
        if key in passes[0]:
            medians[key] = round(med(p[key] for p in passes), 3)
    return medians
