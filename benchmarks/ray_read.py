"""read_transitions over a big store: rows/s and memory (not part of ``python -m benchmarks``).

``python -m benchmarks.ray_read [--steps 1000000] [--width 4] [--dir DIR]``

Writes ``--steps`` small transitions (``--width`` float32 observation, int64 action,
reward, done; episodes of 1000 steps) with ``TrajectoryWriter.extend`` of 50 000-step
batches, starts a local Ray cluster (2 CPUs, 256 MiB object store), iterates
``read_transitions(store).iter_batches(batch_size=4096)`` and prints the rows per second,
the driver's resident memory growth (anonymous and shared memory: Ray's object store
pages), for a first read (fresh read workers) and a second one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from tensordict import TensorDict


def rss() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssShmem", "RssFile")}


def write(path: Path, steps: int, width: int) -> float:
    from trlrec import TrajectoryWriter

    t0 = time.perf_counter()
    batch = 50_000
    with TrajectoryWriter(path) as w:
        for start in range(0, steps, batch):
            n = min(batch, steps - start)
            t = torch.arange(start, start + n + 1, dtype=torch.float32)
            obs = t[:, None].expand(n + 1, width).contiguous()
            done = ((torch.arange(start, start + n) + 1) % 1000 == 0)[:, None]
            w.extend(
                TensorDict(
                    {
                        "observation": obs[:-1],
                        "action": torch.arange(start, start + n)[:, None] % 3,
                        "next": {
                            "observation": obs[1:],
                            "reward": torch.ones(n, 1),
                            "done": done,
                        },
                    },
                    [n],
                )
            )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="trlrec-ray-"))
    store = root / "store"
    wrote = write(store, args.steps, args.width)
    print(f"wrote {args.steps} steps in {wrote:.1f} s ({args.steps / wrote:,.0f} steps/s)")

    import ray

    from trlrec.ray import read_transitions

    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for run in ("cold (read workers start: torch and trlrec import)", "warm"):
            print(f"-- {run}")
            read(store, args.steps, read_transitions)
    finally:
        ray.shutdown()


def read(store: Path, steps: int, read_transitions) -> None:
    ds = read_transitions(store)
    before = rss()
    peak = dict(before)
    t0 = time.perf_counter()
    rows = 0
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        rows += len(batch["observation"])
        now = rss()
        peak = {k: max(peak[k], now[k]) for k in peak}
    took = time.perf_counter() - t0
    assert rows == steps, rows
    out_mb = ds.size_bytes() / 2**20
    print(
        f"read {rows} transitions ({out_mb:,.0f} MiB of columns) in {took:.1f} s: "
        f"{rows / took:,.0f} rows/s"
    )
    print(
        "driver growth (MiB): "
        + ", ".join(f"{k} {(peak[k] - before[k]) / 2**20:.1f}" for k in peak)
    )


if __name__ == "__main__":
    main()
