"""Replay sampling: ``as_replay_buffer`` against TorchRL's ``LazyMemmapStorage`` buffer.

Both buffers hold the same transitions: a store written by ``TrajectoryWriter`` (on the
repository's disk, warm page cache) and ``TensorDictReplayBuffer(storage=
LazyMemmapStorage(N))`` extended with the store's episodes read back (plus their episode
id, the ``traj_key`` of TorchRL's ``SliceSampler``). A figure is ``rb.sample()`` calls a
second (batch 256), the median of interleaved repetitions (trlrec, TorchRL, trlrec...),
and the budget is on the ratio of the medians, in one run:

- uniform transitions (``RandomSampler``) and ``SliceSampler`` slices (32 slices of 8);
- small observations (4 float32, 200 k transitions) and 84x84x3 uint8 pixels;
- the same small transitions stored in many chunks against few (a sample costs one
  ``take`` per chunk touched and column);
- a pixel store recorded with ``compression="zstd"`` against the raw one, when this
  tree's ``TrajectoryWriter`` has a ``compression`` parameter: real ALE Pong frames
  (``ale-py``), 84x84x3 (noise does not compress);
- the first samples right after recording a pixel store, with the writer's page drops
  (``POSIX_FADV_DONTNEED`` behind its writes, ``trlrec/io/backend.py``) on and off, and
  what the recording took in each case;
- the set-up of a buffer over a store of many short episodes (no budget).

``python -m benchmarks --only replay [--smoke]``
"""

from __future__ import annotations

import inspect
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torchrl.data import LazyMemmapStorage, SliceSampler, TensorDictReplayBuffer

import trlrec.io.backend as io_backend
from benchmarks import interleaved, median, row
from benchmarks.disk import scratch
from benchmarks.synth import batch_cycle, transition
from trlrec.replay import EPISODE_KEY
from trlrec.storage.decode_threads import DECODE_THREADS
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.writer import TrajectoryWriter

BATCH = 256
SLICE = 8
RAW_BUDGET = 1.0  # trlrec / LazyMemmapStorage, DESIGN.md
COMPRESSED_BUDGET = 0.5  # compressed pixel store / raw pixel store, issue 17


def _write(path: Path, batches: list, count: int, **kw: Any) -> float:
    """Extend ``count`` batches (cycling) into a new store; the seconds it took, close included."""
    t0 = time.perf_counter()
    with TrajectoryWriter(path, **kw) as w:
        for i in range(count):
            w.extend(batches[i % len(batches)])
    return time.perf_counter() - t0


def _reference(reader: TrajectoryReader, sliced: bool) -> TensorDictReplayBuffer:
    """TorchRL's buffer over the same transitions, in RAM (``/dev/shm``) as by default."""
    sampler = (
        SliceSampler(slice_len=SLICE, traj_key=EPISODE_KEY, cache_values=True) if sliced else None
    )
    rb = TensorDictReplayBuffer(
        storage=LazyMemmapStorage(reader.num_steps), batch_size=BATCH, sampler=sampler
    )
    for i, ep in enumerate(reader.episodes):
        ep = ep.to_tensordict()
        ep[EPISODE_KEY] = torch.full((ep.shape[0],), i, dtype=torch.int64)
        rb.extend(ep)
    return rb


def _ours(reader: TrajectoryReader, sliced: bool) -> TensorDictReplayBuffer:
    return reader.as_replay_buffer(batch_size=BATCH, slice_len=SLICE if sliced else None)


def _rate(rb: TensorDictReplayBuffer, calls: int) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            rb.sample()
        return calls / (time.perf_counter() - t0)

    return run


def _atari_frames(n: int) -> torch.Tensor:
    """``n`` real ALE Pong screens (random policy), area-resized to 84x84x3 RGB.

    What ``Resize(84, 84)`` of a pixel env's RGB frames gives a training loop.
    """
    from benchmarks.bench_compress import frames

    screens, _ = frames("ALE/Pong-v5", n - 1, gray=False)
    small = torch.nn.functional.interpolate(
        screens.permute(0, 3, 1, 2).float(), (84, 84), mode="area"
    )
    return small.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _atari_batches(steps: int, count: int, episode_len: int) -> list:
    pool = _atari_frames(count * steps + 1)
    out = []
    for c in range(count):
        t = torch.arange(c * steps, (c + 1) * steps)
        done = (t + 1) % episode_len == 0
        out.append(transition("pixels", pool[t], pool[t + 1], done))
    return out


def _pair_rows(
    what: str, ours: list[float], ref: list[float], budget: float, vs: str, note: str
) -> list[dict[str, Any]]:
    a, b = median(ours), median(ref)
    ratio = a / b
    return [
        row(f"replay {what}: trlrec", a, "samples/s"),
        row(f"replay {what}: {vs}", b, "samples/s"),
        row(
            f"replay {what}: trlrec / {vs}",
            ratio,
            "ratio",
            f"≥ {budget:g}",
            ratio >= budget,
            note=note,
        ),
    ]


def sampling_rows(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """Uniform and sliced sampling, small and pixel stores, against LazyMemmapStorage."""
    reps = 1 if smoke else 7
    specs = {  # kind: (transitions, steps per batch, episode length, sample calls per run)
        "small": (4_000, 500, 200, 5) if smoke else (200_000, 1000, 200, 200),
        "pixels": (1_000, 250, 250, 2) if smoke else (20_000, 1000, 200, 10),
    }
    out = []
    for kind, (n, steps, ep_len, calls) in specs.items():
        path = base / f"replay-{kind}"
        _write(path, batch_cycle(kind, None, steps, 4, ep_len), n // steps)
        reader = TrajectoryReader(path)
        for sliced in (False, True):
            what = f"{'slices 32x8' if sliced else 'uniform'}, {kind}"
            ours, ref = _ours(reader, sliced), _reference(reader, sliced)
            res = interleaved({"ours": _rate(ours, calls), "ref": _rate(ref, calls)}, reps)
            note = (
                f"batch {BATCH}, {reader.num_steps:,} transitions in {ep_len}-step episodes, "
                f"{len(reader.shards[0].streams)} stream, chunks of "
                f"{reader.shards[0].chunk_rows:,} rows; median of {reps} interleaved runs of "
                f"{calls} sample() calls; TorchRL: TensorDictReplayBuffer(storage="
                "LazyMemmapStorage(N)"
                + (f", sampler=SliceSampler(slice_len={SLICE}, traj_key=...))" if sliced else ")")
            )
            out += _pair_rows(what, res["ours"], res["ref"], RAW_BUDGET, "LazyMemmapStorage", note)
            del ref
        reader.close()
        shutil.rmtree(path, ignore_errors=True)
    return out


def chunk_rows_case(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """The same small transitions in many chunks (4,096 rows) against few (65,536 rows)."""
    reps, n, calls = (1, 4_000, 2) if smoke else (5, 200_000, 20)
    batches = batch_cycle("small", None, 1000 if not smoke else 500, 4, 200)
    bufs = {}
    for rows in (65_536, 4_096):
        path = base / f"chunks-{rows}"
        _write(path, batches, n // batches[0].shape[0], chunk_rows=rows)
        bufs[rows] = _ours(TrajectoryReader(path), False)
    res = interleaved({rows: _rate(rb, calls) for rows, rb in bufs.items()}, reps)
    chunks, few_chunks = -(-n // 4_096), -(-n // 65_536)
    note = (
        f"{n:,} small transitions, uniform batch 256, in {chunks} chunks of 4,096 rows against "
        f"{few_chunks} of 65,536; median of {reps} interleaved runs of {calls} sample() "
        "calls. A sample touches every chunk: one take per chunk and column, and every "
        "chunk must stay mapped (ShardReader's chunk cache)"
    )
    many, few = median(res[4_096]), median(res[65_536])
    return [
        row(f"replay uniform, small, {chunks} chunks", many, "samples/s"),
        row(
            f"replay uniform, small, {chunks} chunks / {few_chunks}",
            many / few,
            "ratio",
            note=note,
        ),
    ]


def compressed_rows(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """A zstd pixel store against the same frames raw (when the writer can compress)."""
    if "compression" not in inspect.signature(TrajectoryWriter.__init__).parameters:
        return [
            row(
                "replay compressed pixels: trlrec zstd / raw",
                None,
                "ratio",
                f"≥ {COMPRESSED_BUDGET:g}",
                None,
                note="not measured: this tree's TrajectoryWriter has no compression parameter",
            )
        ]
    reps, calls, count = (1, 2, 2) if smoke else (5, 10, 20)
    batches = _atari_batches(250 if smoke else 1000, 2, 250 if smoke else 200)
    readers = {}
    for name, kw in (("raw", {}), ("zstd", {"compression": "zstd"})):
        _write(base / f"game-{name}", batches, count, **kw)
        readers[name] = TrajectoryReader(base / f"game-{name}")
    out = []
    for sliced in (False, True):
        bufs = {name: _ours(r, sliced) for name, r in readers.items()}
        res = interleaved({name: _rate(rb, calls) for name, rb in bufs.items()}, reps)
        what = f"compressed pixels, {'slices 32x8' if sliced else 'uniform'}"
        note = (
            f"the same {readers['raw'].num_steps:,} transitions of real ALE Pong frames "
            "(84x84x3, area-resized) stored raw and with compression='zstd' (every key); "
            f"median of {reps} interleaved runs of {calls} sample() calls, batch 256, warm "
            f"page cache; decoded on up to {DECODE_THREADS} threads"
        )
        out += _pair_rows(what, res["zstd"], res["raw"], COMPRESSED_BUDGET, "raw store", note)
    for r in readers.values():
        r.close()
    return out


@contextmanager
def _drops(on: bool) -> Iterator[None]:
    """The writer's page drops on (the default) or off, for this block."""
    saved = io_backend._DROP_BEHIND
    io_backend._DROP_BEHIND = saved if on else 1 << 62
    try:
        yield
    finally:
        io_backend._DROP_BEHIND = saved


def drop_rows(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """Sampling right after recording a pixel store, the writer's page drops on and off."""
    reps, count, calls = (1, 2, 2) if smoke else (3, 10, 20)
    batches = batch_cycle("pixels", None, 250 if smoke else 1000, 2, 250 if smoke else 200)
    writes: dict[bool, list[float]] = {True: [], False: []}
    first: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(reps):
        for on in (True, False):
            path = base / f"drops-{on}-{rep}"
            with _drops(on):
                writes[on].append(_write(path, batches, count))
            rb = TrajectoryReader(path).as_replay_buffer(batch_size=BATCH)
            first[on].append(_rate(rb, calls)())
            del rb
            shutil.rmtree(path, ignore_errors=True)
    steps = count * batches[0].shape[0]
    note = (
        f"{steps:,} 84x84x3 noise transitions extended as [1000] batches, then at once "
        f"{calls} uniform sample() calls (batch 256) on a new reader; median of {reps} "
        "alternating repetitions; drops off = trlrec.io.backend._DROP_BEHIND raised past "
        "any write"
    )
    on_rate, off_rate = median(first[True]), median(first[False])
    on_w, off_w = median(writes[True]), median(writes[False])
    return [
        row("replay right after recording, drops on", on_rate, "samples/s"),
        row("replay right after recording, drops off", off_rate, "samples/s"),
        row("replay right after recording: drops on / off", on_rate / off_rate, "ratio"),
        row("record pixels, drops on", steps / on_w, "steps/s"),
        row("record pixels, drops off", steps / off_w, "steps/s", note=note),
    ]


def setup_rows(base: Path, smoke: bool) -> list[dict[str, Any]]:
    """What ``as_replay_buffer`` takes to set up over a store of many short episodes."""
    reps, n, ep_len = (1, 4_000, 2) if smoke else (5, 200_000, 2)
    path = base / "setup"
    _write(path, batch_cycle("small", None, 1000, 4, ep_len), n // 1000)
    reader = TrajectoryReader(path)
    episodes = reader.num_episodes
    out = []
    for sliced in (False, True):

        def build(sliced: bool = sliced) -> float:
            t0 = time.perf_counter()
            reader.as_replay_buffer(batch_size=BATCH, slice_len=ep_len if sliced else None)
            return time.perf_counter() - t0

        seconds = median(interleaved({"build": build}, reps)["build"])
        what = f"replay buffer set-up, {'slices' if sliced else 'uniform'}, {episodes:,} episodes"
        note = (
            f"as_replay_buffer(batch_size={BATCH}"
            + (f", slice_len={ep_len})" if sliced else ")")
            + f" over {reader.num_steps:,} transitions in {ep_len}-step episodes; median of "
            f"{reps} runs. Built from each shard's episode table (one array), where a loop "
            "of episode_info() took 42 us an episode (3.2 s for 80,000) before stop 31"
        )
        out += [
            row(what, seconds, "s"),
            row(f"{what}: per episode", seconds / episodes * 1e6, "us", note=note),
        ]
    reader.close()
    shutil.rmtree(path, ignore_errors=True)
    return out


def run(smoke: bool = False) -> list[dict[str, Any]]:
    with scratch() as base:
        return [
            *sampling_rows(base, smoke),
            *chunk_rows_case(base, smoke),
            *compressed_rows(base, smoke),
            *drop_rows(base, smoke),
            *setup_rows(base, smoke),
        ]


__all__ = ["run"]
