"""trlrec benchmarks: ``python -m benchmarks [--smoke] [--only NAME] [--out BENCHMARKS.md]``.

Each ``benchmarks/bench_*.py`` module has ``run(smoke: bool = False) -> list[dict]``
returning rows ``{"name", "value", "unit", "budget", "ok"}`` (``ok`` is None when
the figure has no budget; an optional ``"note"`` is printed under the table).
The helpers here are shared by the modules; none of them is required.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["row", "median", "timed", "interleaved", "segmented", "settle"]


def row(
    name: str,
    value: float | None,
    unit: str,
    budget: str | None = None,
    ok: bool | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One result row; ``budget`` is text such as ``"≥ 1 GB/s"``, ``ok`` its verdict."""
    out: dict[str, Any] = {"name": name, "value": value, "unit": unit, "budget": budget, "ok": ok}
    if note:
        out["note"] = note
    return out


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return statistics.median(values)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes (``perf_counter``)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def settle() -> None:
    """Start a timed run from the same state: no dirty pages, no garbage of the last run.

    Without it, the kernel's writeback of what the previous case wrote (a recorder's
    files, GBs after bench_memory) and the collection of its garbage land inside the
    next case's timing, whichever case that is: per-repetition ratios then spread from
    ~0.8 to ~1.2. What a case writes or leaves while it is timed still counts.
    """
    os.sync()
    gc.collect()


def interleaved(cases: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Run each case ``reps`` times, round-robin (a, b, a, b...), collecting what each returns.

    Interleaving spreads slow phases of a shared machine over all cases, so the
    ratio of their medians is fairer than timing one case after the other. Each run
    starts :func:`settle`d.
    """
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            settle()
            out[name].append(fn())
    return out


def segmented(
    cases: dict[str, Callable[[], float]],
    reps: int,
    segments: int,
    after: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """:func:`interleaved`, with each repetition cut into ``segments`` rounds (a, b, a, b...).

    A repetition's value for a case is the sum of what its runs in that repetition
    return: a slow phase of a shared machine, seconds long, then falls on every case of
    the repetition alike instead of on one. ``after`` runs after each repetition,
    untimed (e.g. a recorder's ``dump()``).
    """
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        total = dict.fromkeys(cases, 0.0)
        for _ in range(segments):
            for name, fn in cases.items():
                settle()
                total[name] += fn()
        for name, value in total.items():
            out[name].append(value)
        if after is not None:
            after()
    return out
