"""Reading the store back: open and random-episode latency as it grows, full scans, disk use."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import median, row
from benchmarks.disk import allocated_bytes
from benchmarks.synth import batch_bytes, batch_cycle
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.writer import TrajectoryWriter

FLAT_BUDGET = 1.5  # "O(1) in the dataset's size": the big store may cost at most 1.5x the small
DISK_BUDGET = 1.10  # bytes on disk / unique tensor bytes: observations stored once, little else


def build(path: Path, batches: list, count: int) -> TrajectoryReader:
    """Write ``count`` batches (cycling) with ``extend``; return a reader of the result."""
    with TrajectoryWriter(path) as w:
        for i in range(count):
            w.extend(batches[i % len(batches)])
    return TrajectoryReader(path)


def _size(n: int) -> str:
    return f"{n // 1_000_000} M" if n >= 1_000_000 else f"{n // 1000} k"


def _entry_bytes(e: Any) -> int:
    return torch.Size(e.shape).numel() * torch.empty((), dtype=e.dtype).element_size()


def unique_bytes(r: TrajectoryReader) -> int:
    """Tensor bytes of the data with each observation once: T + 1 states per episode."""
    total = 0
    for shard in r.shards:
        state = sum(_entry_bytes(e) for e in shard.schema.entries if e.role == "state")
        other = sum(_entry_bytes(e) for e in shard.schema.entries if e.role != "state")
        total += (shard.num_steps + shard.num_episodes) * state + shard.num_steps * other
    return total


def _open_us(path: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        TrajectoryReader(path)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _fetch_us(r: TrajectoryReader, rng: random.Random, n: int) -> list[float]:
    out = []
    for _ in range(n):
        i = rng.randrange(r.num_episodes)
        t0 = time.perf_counter()
        r.episodes[i].clone()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def scan_gbs(r: TrajectoryReader, reps: int) -> tuple[float, float]:
    """Read every episode into RAM, ``reps`` times: (median GB/s of episode tensor bytes, s)."""
    times = []
    for _ in range(reps):
        nbytes = 0
        t0 = time.perf_counter()
        for ep in r.episodes:
            nbytes += batch_bytes(ep.clone())
        times.append(time.perf_counter() - t0)
    dt = median(times)
    return nbytes / dt / 1e9, dt


def latency_rows(base: Path, smoke: bool) -> tuple[list[dict[str, Any]], TrajectoryReader]:
    """(c) open and random-episode latency at growing sizes, measured interleaved."""
    t = 500 if smoke else 10_000
    sizes = [1000, 2000] if smoke else [10_000, 100_000, 1_000_000]
    batches = batch_cycle("small", None, t, 1, 100)
    readers = {n: build(base / f"small-{n}", batches, n // t) for n in sizes}
    rounds, per = (1, 2) if smoke else (10, 20)
    opens: dict[int, list[float]] = {n: [] for n in sizes}
    fetches: dict[int, list[float]] = {n: [] for n in sizes}
    rng = random.Random(0)
    for _ in range(rounds):
        for n in sizes:
            opens[n] += _open_us(base / f"small-{n}", per // 4 or 1)
            fetches[n] += _fetch_us(readers[n], rng, per)
    out = []
    lo, hi = sizes[0], sizes[-1]
    for what, res, unit_note in (
        ("open a store", opens, "TrajectoryReader(path)"),
        ("fetch a random episode", fetches, "episodes[i].clone(): view + copy to RAM"),
    ):
        for n in sizes:
            out.append(row(f"{what}: {_size(n)} steps", median(res[n]), "µs"))
        ratio = median(res[hi]) / median(res[lo])
        out.append(
            row(
                f"{what}: {_size(hi)} / {_size(lo)} steps",
                ratio,
                "ratio",
                f"≤ {FLAT_BUDGET:g}",
                ratio <= FLAT_BUDGET,
                note=f"{unit_note}; medians of {len(res[lo])} interleaved samples per size, "
                "small steps, 100-step episodes, warm page cache",
            )
        )
    for n in sizes[:-1]:
        readers.pop(n).close()
    return out, readers[hi]


def _disk_row(name: str, r: TrajectoryReader) -> list[dict[str, Any]]:
    on_disk = allocated_bytes(r.path)
    unique = unique_bytes(r)
    ratio = on_disk / unique
    return [
        row(f"disk: {name}", on_disk / r.num_steps, "B/transition"),
        row(
            f"disk: {name} / unique tensor bytes",
            ratio,
            "ratio",
            f"≤ {DISK_BUDGET:g}",
            ratio <= DISK_BUDGET,
            note=f"allocated blocks of every file of the store (st_blocks x 512) over the raw "
            f"bytes of each timestep once ({unique / r.num_steps:.1f} B/transition; a "
            "root + next copy of every transition would double the observations)",
        ),
    ]


def read_rows(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """(c) latency and scans, (d) bytes on disk, on a small and a pixel store."""
    out, big = latency_rows(base, smoke)
    reps = 1 if smoke else 3
    gbs, dt = scan_gbs(big, reps)
    out.append(
        row(
            f"full scan: {_size(big.num_steps)} small steps",
            gbs,
            "GB/s",
            note=f"every episode cloned to RAM ({big.num_episodes:,} episodes in {dt:.2f} s, "
            f"median of {reps} scans); "
            "bytes of the returned root + next tensors; per-episode overhead dominates",
        )
    )
    pixels = build(
        base / "pixels",
        batch_cycle("pixels", None, 32 if smoke else 1024, 1 if smoke else 4, 32 if smoke else 256),
        1 if smoke else 20,
    )
    gbs, dt = scan_gbs(pixels, reps)
    out.append(
        row(
            f"full scan: {pixels.num_steps:,} pixel steps",
            gbs,
            "GB/s",
            note=f"as above, {pixels.num_episodes} episodes in {dt:.2f} s, warm page cache",
        )
    )
    out += _disk_row(f"{_size(big.num_steps)} small steps", big)
    out += _disk_row(f"{pixels.num_steps:,} pixel steps", pixels)
    big.close()
    pixels.close()
    return out
