"""The store on its own: append µs/step, extend GB/s, read latency and scans, bytes on disk.

No env: the data is synthetic (``benchmarks.synth``) and already in RAM, so the
figures are the store's cost alone. Stores live in a scratch directory on the
repository's disk (page cache, then the disk), deleted afterwards. First, what the
machine itself does now (a Python loop, a copy into fresh and reused memory), so that a
budget missed on a slow day can be told from a slow change.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import interleaved, median, row
from benchmarks.disk import scratch
from benchmarks.store_read import read_rows
from benchmarks.synth import batch_bytes, batch_cycle, step_cycle
from trlrec.storage.writer import TrajectoryWriter

# 10 % of the cheapest bare CartPole step in DESIGN.md (250 µs): what recording may add.
APPEND_BUDGET_US = 25.0
EXTEND_BUDGET_GBS = 1.0


def _append_case(base: Path, cycle: list, steps: int, cpu: dict[str, list[float]]) -> float:
    """Wall µs per append of ``steps`` transitions into a fresh store (close included).

    The process CPU µs per append go to ``cpu`` (wall time also counts waiting for a core).
    """
    path = base / f"append-{time.perf_counter_ns()}"
    w = TrajectoryWriter(path)
    n = len(cycle)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        w.append(cycle[i % n])
    w.close()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    _rmtree(path)
    cpu.setdefault(id(cycle), []).append(dc / steps * 1e6)
    return dt / steps * 1e6


def _extend_case(base: Path, batches: list, count: int) -> float:
    """Seconds to extend ``count`` batches (cycling) into a fresh store, close included."""
    path = base / f"extend-{time.perf_counter_ns()}"
    w = TrajectoryWriter(path)
    t0 = time.perf_counter()
    for i in range(count):
        w.extend(batches[i % len(batches)])
    w.close()
    dt = time.perf_counter() - t0
    _rmtree(path)
    return dt


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _one_thread(fn: Callable[[], float]) -> Callable[[], float]:
    """``fn`` run with one intra-op thread (torch's pool restored afterwards)."""

    def wrapped() -> float:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(n)

    return wrapped


def append_rows(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """(a) ``append`` µs per step, small and pixel transitions, interleaved repetitions."""
    reps, small_n, pix_n = (1, 200, 50) if smoke else (7, 20_000, 4_000)
    cases = {  # name: (transitions of one episode, appends per run)
        "small step (4 floats)": (step_cycle("small", 200), small_n),
        "small step, 20-step episodes": (step_cycle("small", 20), small_n),
        "84x84x3 uint8 pixel step": (step_cycle("pixels", 200), pix_n),
    }
    cpu: dict[int, list[float]] = {}
    res = interleaved(
        {
            name: (lambda c=cycle, n=n: _append_case(base, c, n, cpu))
            for name, (cycle, n) in cases.items()
        },
        reps,
    )
    out = []
    for name, (cycle, n) in cases.items():
        wall, proc = median(res[name]), median(cpu[id(cycle)])
        budget = name.startswith("small")
        out.append(
            row(
                f"append: {name}",
                wall,
                "µs/step",
                f"≤ {APPEND_BUDGET_US:g}" if budget else None,
                wall <= APPEND_BUDGET_US if budget else None,
                note=f"median of {reps} runs of {n:,} appends, {len(cycle)}-step episodes "
                f"(commit_on_done); {proc:.1f} µs/step of process CPU time, both threads"
                + (
                    "; budget = 10 % of the cheapest bare CartPole step (250 µs, DESIGN.md)"
                    if budget
                    else "; no budget of its own (a pixel env step costs more than "
                    "CartPole's): bench_recorder has the ratio"
                ),
            )
        )
    return out


def extend_rows(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """(b) ``extend`` of collector-like batches: GB/s of batch tensor bytes, steps/s."""
    reps = 1 if smoke else 5
    shapes = {
        # name: (kind, envs, steps per batch, batches in the cycle, episode length, batches)
        "pixels [16, 64] batches": ("pixels", 16, 64, 4, 64, 8),
        "pixels [1024] batches": ("pixels", None, 1024, 4, 256, 8),
        "small [16, 64] batches": ("small", 16, 64, 4, 64, 200),
    }
    if smoke:
        shapes = {
            "pixels [4, 16] batches": ("pixels", 4, 16, 2, 16, 2),
            "pixels [64] batches": ("pixels", None, 64, 2, 32, 2),
            "small [4, 16] batches": ("small", 4, 16, 2, 16, 2),
        }
    data = {name: batch_cycle(*spec[:5]) for name, spec in shapes.items()}
    cases = {
        name: (lambda b=data[name], n=spec[5]: _extend_case(base, b, n))
        for name, spec in shapes.items()
    }
    first = next(iter(shapes))
    # The same batches with torch's intra-op pool at one thread: shows how much of the
    # time is the pool waiting for a core (the store's per-byte ops are multi-threaded).
    single = f"{first}, 1 intra-op thread"
    shapes[single], data[single] = shapes[first], data[first]
    cases[single] = _one_thread(cases[first])
    res = interleaved(cases, reps)
    out = []
    for name, (kind, _envs, _t, _k, ep_len, count) in shapes.items():
        batches = data[name]
        nbytes = sum(batch_bytes(batches[i % len(batches)]) for i in range(count))
        steps = count * batches[0].numel()
        dt = median(res[name])
        if kind == "pixels":
            gbs = nbytes / dt / 1e9
            out.append(
                row(
                    f"extend: {name}",
                    gbs,
                    "GB/s",
                    f"≥ {EXTEND_BUDGET_GBS:g}",
                    gbs >= EXTEND_BUDGET_GBS,
                    note=f"tensor bytes handed to extend (root + next, {nbytes / 1e9:.2f} GB in "
                    f"{count} batches, close included) / median time of {reps} runs; "
                    f"{ep_len}-step episodes; "
                    "the store writes each frame once, so it writes about half of these bytes",
                )
            )
        out.append(row(f"extend: {name}", steps / dt, "steps/s"))
    return out


def _python_loop(n: int) -> float:
    """Nanoseconds an iteration of a fixed loop of dict, attribute and int work."""

    class Box:
        value = 0

    box = Box()
    t0 = time.perf_counter()
    for i in range(n):
        d = {"a": i, "b": box}
        d["b"].value = d["a"] + 1
    return (time.perf_counter() - t0) / n * 1e9


def _copy(src: torch.Tensor, fresh: bool, out: torch.Tensor) -> float:
    """GB/s of copying ``src`` into fresh memory (page faults included) or into ``out``."""
    t0 = time.perf_counter()
    if fresh:
        torch.empty_like(src).copy_(src)
    else:
        out.copy_(src)
    return src.nbytes / (time.perf_counter() - t0) / 1e9


def machine_rows(smoke: bool) -> list[dict[str, Any]]:
    """What this machine does now, beside the budgets: no trlrec code, no budget.

    A shared VM's speed moves by 2x between days: a budget miss with these rows slow is
    the machine, one with them as before is the code.
    """
    reps, n = (1, 20_000) if smoke else (7, 500_000)
    src = torch.randint(0, 256, (16, 64, 84, 84, 3), dtype=torch.uint8)  # a [16, 64] batch
    out = torch.empty_like(src)
    res = interleaved(
        {
            "loop": lambda: _python_loop(n),
            "fresh": lambda: _copy(src, True, out),
            "reused": lambda: _copy(src, False, out),
        },
        reps,
    )
    note = (
        f"median of {reps} interleaved runs. For telling a slow machine from slow code: on "
        "2026-12-07 the tree of 27b4fe8, whose BENCHMARKS.md had 14.1 µs/step for 'append: "
        "small step' on 2026-12-02, measured 32-38 µs/step, and the main tree 26-31"
    )
    mb = src.nbytes / 2**20
    return [
        row("machine: a Python loop iteration (dicts, attributes)", median(res["loop"]), "ns"),
        row(f"machine: copy {mb:.0f} MiB into fresh memory", median(res["fresh"]), "GB/s"),
        row(
            f"machine: copy {mb:.0f} MiB into memory reused",
            median(res["reused"]),
            "GB/s",
            note=note,
        ),
    ]


def run(smoke: bool = False) -> list[dict[str, Any]]:
    with scratch() as base:
        return [
            *machine_rows(smoke),
            *append_rows(base, smoke),
            *extend_rows(base, smoke),
            *read_rows(base, smoke),
        ]


__all__ = ["run"]
