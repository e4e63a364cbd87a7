"""Cloud Run's CPU and memory rules, checked when the architecture is loaded (pure).

From https://cloud.google.com/run/docs/configuring/services/cpu and .../memory-limits:
"The minimum vCPU setting is 0.08 vCPU"; below 1 "any value between 0.08 and 1, in increments
of 0.001"; above it 1, 2, 4, 6 or 8 ("The maximum amount of vCPU you can configure is 8 vCPU").
Memory per CPU: up to 512 MiB below 0.5 vCPU, up to 1 GiB below 1, 1: 128 MiB-4 GiB, 2: up to
8 GiB, 4: 2-16 GiB, 6: 4-24 GiB, 8: 4-32 GiB. Sizes are "a fixed or floating point number
followed by a unit: G, M, or K ... or ... Gi, Mi, Ki". Unset limits mean 1 vCPU and 512 MiB.
Below 1 vCPU Cloud Run needs request-based billing, which starves the director's streaming pull:
the director must have at least one whole CPU.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["cpu_count", "cpu_problem", "memory_problem", "sizing_problem"]

_MIB, _GIB = 2**20, 2**30
_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": _MIB, "Gi": _GIB}
_SIZE = re.compile(r"^(?P<number>\d+(\.\d+)?)(?P<unit>[KMG]i?)$")
_WHOLE = {1: (128 * _MIB, 4 * _GIB), 2: (128 * _MIB, 8 * _GIB), 4: (2 * _GIB, 16 * _GIB),
          6: (4 * _GIB, 24 * _GIB), 8: (4 * _GIB, 32 * _GIB)}


def _cpu(text: str) -> Decimal | None:
    try:
        value = Decimal(text[:-1]) / 1000 if text.endswith("m") else Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def cpu_count(text: str) -> float | None:
    """``"2"`` → 2.0, ``"500m"`` → 0.5; None when unset or not a number."""
    cpu = _cpu(text) if text else None
    return None if cpu is None else float(cpu)


def cpu_problem(text: str) -> str | None:
    if not text:
        return None
    cpu = _cpu(text)
    if cpu is None:
        return f"cpu {text!r} is not a number of vCPUs (e.g. \"1\", \"0.5\" or \"500m\")"
    if cpu < Decimal("0.08"):
        return f"cpu {text!r}: the minimum is 0.08 vCPU"
    if cpu < 1:
        return None if (cpu * 1000) == (cpu * 1000).to_integral_value() else (
            f"cpu {text!r}: below 1 vCPU, set it in steps of 0.001")
    if cpu != cpu.to_integral_value() or int(cpu) not in _WHOLE:
        return f"cpu {text!r}: from 1 vCPU up, Cloud Run allows 1, 2, 4, 6 or 8"
    return None


def _memory(text: str) -> int | None:
    match = _SIZE.match(text)
    return int(Decimal(match["number"]) * _UNITS[match["unit"]]) if match else None


def memory_problem(text: str) -> str | None:
    if text and _memory(text) is None:
        return f"memory {text!r} is not a size like \"512Mi\" or \"2Gi\" (units K, M, G, Ki, Mi, Gi)"
    return None


def sizing_problem(cpu_text: str, memory_text: str, *, director: bool = False) -> str | None:
    """What is wrong with this CPU and memory together (None if Cloud Run accepts them)."""
    problem = cpu_problem(cpu_text) or memory_problem(memory_text)
    if problem:
        return problem
    cpu = _cpu(cpu_text) if cpu_text else Decimal(1)
    assert cpu is not None
    if director and cpu < 1:
        return (f"cpu {cpu_text!r}: the ServiceDirector needs at least 1 vCPU (below 1 Cloud Run "
                "only runs CPU during requests, and the director lives on a streaming pull)")
    memory = _memory(memory_text) if memory_text else 512 * _MIB
    assert memory is not None
    if cpu < Decimal("0.5"):
        low, high = 128 * _MIB, 512 * _MIB
    elif cpu < 1:
        low, high = 128 * _MIB, _GIB
    else:
        low, high = _WHOLE[int(cpu)]
    if not low <= memory <= high:
        return (f"memory {memory_text or '512Mi (the default)'} with {cpu_text or '1 (the default)'} vCPU: "
                f"Cloud Run allows {_human(low)} to {_human(high)}")
    return None


def _human(size: int) -> str:
    return f"{size // _GIB}Gi" if size % _GIB == 0 else f"{size // _MIB}Mi"
