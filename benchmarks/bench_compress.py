"""Compressed stores on real Atari frames: ratio on disk, bit-exactness, step cost, file sizes.

Frames come from ALE (``ale-py`` ships the ROMs) with a random policy: Pong and
Breakout, 84x84 grayscale (ALE's grayscale screen area-resized, as
``AtariPreprocessing`` does; ``frameskip=4``) and the raw 210x160 RGB screen. Each is
recorded twice side by side, raw (``compression=None``) and ``compression="zstd"``;
the ratio is the raw store's allocated bytes (``st_blocks``) over the compressed one's,
the whole store (every key and file), chunks of 1024 rows (so that chunks fill,
and are compressed on the writer's worker thread, during the step loop). The step
cost is the ``append`` time per step over interleaved runs, raw vs zstd, on the same
frames, in chunks of the default size (~19,000 rows of these frames: 60,000 steps,
the 6,000 frames cycled, fill three during the step loop, each compressed while the
loop goes on), and again in chunks of 1024 rows (a stress case without a budget:
what a chunk costs (its files created, each of its columns sealed) falls on 1024
rows instead of ~19,000); what zstd adds is the median of the repetitions'
differences (each repetition runs raw, then zstd, back to back: a slow phase of the
shared machine, seconds long, falls on both runs of a pair rather than on one case's
median). Each run starts settled (``benchmarks.settle``: the writeback of the last
run's files and its garbage otherwise land in the next run). The codec comparison
(zstandard vs blosc2, which chose zstd) compresses the same Pong frames in blocks of
64 rows.

``python -m benchmarks.bench_compress [--smoke]``
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from benchmarks import interleaved
from trlrec import TrajectoryReader, TrajectoryWriter

BUDGET_GRAY = 50.0
BUDGET_RGB = 100.0
BUDGET_STEP_US = 2.0
BUDGET_APPARENT = 1.05


def frames(env_id: str, n: int, gray: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n + 1`` frames of ``env_id`` under a random policy and the ``n`` done flags."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(
        env_id, obs_type="grayscale" if gray else "rgb", frameskip=4, repeat_action_probability=0.0
    )
    gen = torch.Generator().manual_seed(seed)

    def shot(o: Any) -> torch.Tensor:
        t = torch.from_numpy(o)
        if not gray:
            return t
        small = torch.nn.functional.interpolate(t[None, None].float(), (84, 84), mode="area")
        return small[0, 0].round().to(torch.uint8)

    obs, _ = env.reset(seed=seed)
    out, dones = [shot(obs)], []
    for _ in range(n):
        obs, _, term, trunc, _ = env.step(int(torch.randint(env.action_space.n, (), generator=gen)))
        done = bool(term or trunc)
        dones.append(done)
        if done:
            obs, _ = env.reset()
        out.append(shot(obs))
    env.close()
    return torch.stack(out), torch.tensor(dones)


def _steps(pix: torch.Tensor, dones: torch.Tensor) -> list[TensorDict]:
    n = dones.shape[0]
    return [
        TensorDict(
            {
                "pixels": pix[t],
                "action": torch.tensor([t % 4]),
                "next": {
                    "pixels": pix[t + 1],
                    "reward": torch.tensor([0.0]),
                    "done": dones[t : t + 1],
                },
            },
            batch_size=[],
        )
        for t in range(n)
    ]


CHUNK_ROWS = 1024  # chunks fill (and are compressed) during the step loop


CpuTimes = list[tuple[float, float]]


def _record(
    path: Path,
    steps: list[TensorDict],
    compression: Any,
    cpu: CpuTimes,
    chunk_rows: int | None = CHUNK_ROWS,
    n: int | None = None,
) -> float:
    """Record ``n`` steps (``steps`` cycled; all by default) with ``append``.

    Returns the step loop's seconds per step (close excluded). Appended to ``cpu``:
    the step loop's own CPU seconds per step (its thread's), and the process's,
    ``close()`` included (so every chunk's sealing).
    """
    n = len(steps) if n is None else n
    k = len(steps)
    w = TrajectoryWriter(path, compression=compression, chunk_rows=chunk_rows)
    t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    for i in range(n):
        w.append(steps[i % k])
    dt, dc = time.perf_counter() - t0, time.thread_time() - c0
    w.close()
    cpu.append((dc / n, (time.process_time() - p0) / n))
    return dt / n


def _recording(
    root: Path,
    name: str,
    steps: list[TensorDict],
    compression: Any,
    cpu: CpuTimes,
    chunk_rows: int | None = CHUNK_ROWS,
    n: int | None = None,
    keep: bool = True,
) -> Any:
    """A run of :func:`_record` into a new store ``root / name-<k>`` at each call (k = 0, 1...).

    ``keep=False``: each store is removed once timed (untimed), and its chunk count
    kept in ``chunks[name]``.
    """
    runs = itertools.count()

    def run() -> float:
        path = root / f"{name}-{next(runs)}"
        dt = _record(path, steps, compression, cpu, chunk_rows, n)
        if not keep:
            CHUNKS[name] = len(list(path.glob("**/chunk-*")))
            shutil.rmtree(path)
        return dt

    return run


CHUNKS: dict[str, int] = {}
"""Chunks of the last store of each removed recording (see :func:`_recording`)."""
FULL_STEPS = 60_000  # three chunks of the default size (~19,000 rows of 84x84 frames)


_SPIN = (
    "import os, sys\n"
    "try:\n"
    "    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "except (AttributeError, OSError):\n"
    "    os.nice(19)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    sum(range(1000))\n"
)


def _busy_core(run: Any) -> Any:
    """``run`` with another process spinning at the lowest priority (as the sealer runs).

    What a busy second core costs the raw step loop on this machine, by itself: the
    spin loop touches no memory and takes no lock, so what it adds is the machine's
    (on a VM, a vCPU kept busy slows its sibling), not trlrec's.
    """

    def busy() -> float:
        spin = subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
        try:
            if spin.stdout is None or spin.stdout.readline().strip() != "ready":
                raise RuntimeError("the spin loop of the busy-core case did not start")
            return float(run())
        finally:
            spin.kill()
            spin.wait()

    return busy


def _sizes(path: Path) -> tuple[int, int]:
    allocated = apparent = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def _exact(path: Path, pix: torch.Tensor) -> bool:
    r = TrajectoryReader(path)
    got = [r.episodes[i] for i in range(r.num_episodes)]
    seen = torch.cat([ep["pixels"] for ep in got])
    nxt = torch.cat([ep["next", "pixels"] for ep in got])
    return torch.equal(seen, pix[:-1]) and torch.equal(nxt, pix[1:])


def _codecs(pix: torch.Tensor) -> list[dict[str, Any]]:
    """zstandard vs blosc2 on the same blocks of 64 frames: ratio and MB/s each way."""
    import zstandard

    blocks = [pix[i : i + 64].numpy().tobytes() for i in range(0, pix.shape[0], 64)]
    raw = sum(map(len, blocks))
    coders: dict[str, tuple[Any, Any]] = {
        "zstandard level 3": (
            zstandard.ZstdCompressor(level=3).compress,
            zstandard.ZstdDecompressor().decompress,
        )
    }
    try:
        import blosc2

        coders["blosc2 zstd level 3"] = (
            lambda b: blosc2.compress(b, typesize=1, clevel=3, codec=blosc2.Codec.ZSTD),
            blosc2.decompress,
        )
        coders["blosc2 lz4 level 5"] = (
            lambda b: blosc2.compress(b, typesize=1, clevel=5, codec=blosc2.Codec.LZ4),
            blosc2.decompress,
        )
    except ImportError:
        pass
    rows = []
    for name, (comp, dec) in coders.items():
        t0 = time.perf_counter()
        packed = [comp(b) for b in blocks]
        tc = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = [dec(p) for p in packed]
        td = time.perf_counter() - t0
        if back != blocks:
            raise RuntimeError(f"{name} did not give the Pong frames back exactly")
        ratio = raw / sum(map(len, packed))
        note = f"compress {raw / tc / 1e6:.0f} MB/s, decompress {raw / td / 1e6:.0f} MB/s"
        rows.append(_row(f"codec {name}: Pong 84x84 gray, 64-frame blocks", ratio, "x", None,
                         None, note))  # fmt: skip
    return rows


def _step_cost_rows(
    label: str,
    raw: list[float],
    zstd: list[float],
    budgeted: bool,
    verdict: Any,
    reps: int,
) -> list[dict[str, Any]]:
    """Step cost off, on, and the median of the paired differences (the budget's figure)."""
    off, on = statistics.median(raw) * 1e6, statistics.median(zstd) * 1e6
    diffs = [(z - r) * 1e6 for r, z in zip(raw, zstd, strict=True)]
    added = statistics.median(diffs)
    q1, _, q3 = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [added] * 3
    name = f"Pong 84x84 gray append, {label}"
    return [
        _row(f"{name}: step cost, compression off", off, "us/step", None, None),
        _row(f"{name}: step cost, zstd on", on, "us/step", None, None),
        _row(
            f"{name}: zstd minus off", added, "us/step",
            f"<= {BUDGET_STEP_US:g}" if budgeted else None,
            verdict(added <= BUDGET_STEP_US) if budgeted else None,
            f"median of the differences of {reps} interleaved pairs of settled runs "
            f"(quartiles {q1:+.2f} and {q3:+.2f}; the difference of the medians "
            f"{on - off:+.2f})",
        ),
    ]  # fmt: skip


def _row(name: str, value: float, unit: str, budget: str | None, ok: bool | None,
         note: str = "") -> dict[str, Any]:  # fmt: skip
    return {"name": name, "value": round(value, 2), "unit": unit, "budget": budget, "ok": ok,
            "note": note}  # fmt: skip


def run(smoke: bool = False) -> list[dict[str, Any]]:
    """Ratios (gray and RGB, Pong and Breakout), bit-exactness, step cost, apparent size.

    Args:
        smoke: a tiny run (few frames) that checks the code path; no verdicts.

    Returns:
        Rows ``{"name", "value", "unit", "budget", "ok"}``.
    """
    n_gray, n_rgb, reps = (60, 30, 1) if smoke else (6000, 1500, 21)
    full = 120 if smoke else FULL_STEPS
    rows: list[dict[str, Any]] = []
    verdict = (lambda ok: None) if smoke else (lambda ok: bool(ok))
    with tempfile.TemporaryDirectory(prefix="trlrec-bench-compress-") as tmp:
        root = Path(tmp)
        for env_id in ("ALE/Pong-v5", "ALE/Breakout-v5"):
            game = env_id.split("/")[1].split("-")[0]
            for gray in (True, False):
                pix, dones = frames(env_id, n_gray if gray else n_rgb, gray)
                if gray and game == "Pong":
                    rows += _codecs(pix)
                steps = _steps(pix, dones)
                kind = "84x84 gray" if gray else "210x160 RGB"
                tag = f"{game}-{'gray' if gray else 'rgb'}"
                cpu: dict[str, CpuTimes] = {
                    m: [] for m in ("raw", "zstd", "raw-full", "zstd-full", "busy")
                }
                cases = {
                    mode: _recording(root, f"{tag}-{mode}", steps, comp, cpu[mode])
                    for mode, comp in (("raw", None), ("zstd", "zstd"))
                }
                timed_here = gray and game == "Pong"
                if timed_here:  # chunks of the default size, the stores removed as timed
                    for mode, comp in (("raw-full", None), ("zstd-full", "zstd")):
                        cases[mode] = _recording(root, f"{tag}-{mode}", steps, comp,
                                                 cpu[mode], None, full, keep=False)  # fmt: skip
                    cases["busy"] = _busy_core(
                        _recording(
                            root, f"{tag}-busy", steps, None, cpu["busy"], None, full, keep=False
                        )
                    )
                costs = interleaved(cases, reps if timed_here else 1)
                raw_alloc, raw_apparent = _sizes(root / f"{tag}-raw-0")
                z_alloc, z_apparent = _sizes(root / f"{tag}-zstd-0")
                ratio = raw_alloc / max(1, z_alloc)
                budget = BUDGET_GRAY if gray else BUDGET_RGB
                rows.append(_row(
                    f"{game} {kind} zstd: raw / compressed bytes on disk", ratio, "x",
                    f">= {budget:g}", verdict(ratio >= budget),
                    f"{len(steps)} steps; raw {raw_alloc / 2**20:.1f} MiB, zstd "
                    f"{z_alloc / 2**20:.2f} MiB allocated",
                ))  # fmt: skip
                exact = _exact(root / f"{tag}-zstd-0", pix)
                rows.append(_row(f"{game} {kind} zstd: frames read back bit-exact", float(exact),
                                 "bool", "== 1", verdict(exact)))  # fmt: skip
                if timed_here:
                    for label, raw_case, z_case, budgeted in (
                        (f"default chunks ({CHUNKS.get(f'{tag}-zstd-full', 0)} in {full:,} "
                         "steps)", "raw-full", "zstd-full", True),
                        (f"1024-row chunks ({len(steps):,} steps; stress case, no budget)",
                         "raw", "zstd", False),
                    ):  # fmt: skip
                        rows += _step_cost_rows(label, costs[raw_case], costs[z_case], budgeted,
                                                verdict, reps)  # fmt: skip
                    busy = statistics.median(
                        (b - r) * 1e6 for r, b in zip(costs["raw-full"], costs["busy"], strict=True)
                    )
                    on = statistics.median(costs["zstd-full"]) * 1e6
                    work = statistics.median(c[1] for c in cpu["zstd-full"]) - statistics.median(
                        c[1] for c in cpu["raw-full"]
                    )
                    rows.append(_row(
                        "Pong 84x84 gray append: compression off, other core busy, minus idle",
                        busy, "us/step", None, None,
                        "default chunks: the raw step loop with another process spinning at "
                        "the lowest priority (SCHED_IDLE, as the sealing thread runs) on the "
                        "other core, minus the same runs without it: what a busy second core "
                        "costs the step loop on this machine by itself; zstd's sealing keeps "
                        f"that core busy {work / (on * 1e-6):.0%} of the time ({work * 1e6:.2f} "
                        "us of CPU a step, the process's CPU time zstd minus off)",
                    ))  # fmt: skip
                    cpu_delta = statistics.median(
                        c[0] for c in cpu["zstd-full"]
                    ) - statistics.median(c[0] for c in cpu["raw-full"])
                    rows.append(_row(
                        "Pong 84x84 gray append: zstd minus off, step loop's CPU time",
                        cpu_delta * 1e6, "us/step", None, None,
                        "default chunks, the step loop's thread only (time.thread_time), same "
                        "runs: what compression adds to its own work; the rest of the "
                        "wall-time difference is the sealing thread's compression on the other "
                        "core",
                    ))  # fmt: skip
                    for mode, (alloc, apparent) in (
                        ("raw", (raw_alloc, raw_apparent)),
                        ("zstd", (z_alloc, z_apparent)),
                    ):
                        value = apparent / max(1, alloc)
                        rows.append(_row(
                            f"closed {mode} store: apparent / allocated size", value, "x",
                            f"<= {BUDGET_APPARENT:g}", verdict(value <= BUDGET_APPARENT),
                            f"{apparent / 2**20:.2f} MiB apparent, {alloc / 2**20:.2f} allocated",
                        ))  # fmt: skip
    return rows


if __name__ == "__main__":
    from benchmarks.report import text_table

    print(text_table([("bench_compress", run(smoke="--smoke" in sys.argv))]))
