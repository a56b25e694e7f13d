"""What a recorder inside a collector worker costs that worker: with vs without it.

A ``MultiSyncCollector`` of 2 worker processes, each running the benchmarks' trivial
env in a ``TransformedEnv`` holding a ``TensorDictRecorder`` (every worker writing its
own shard of one store) or, as the baseline, a transform that does nothing. The figure
is the time per collected frame as the training loop sees it, after a warm-up batch:
each repetition builds a fresh collector per case (alternating), and the value is the
ratio of the medians, with the microseconds a frame gains. The single-process ratio
(the same env and recorder in ``env.rollout``) is measured in the same run, side by
side: a worker's recorder should cost what a single-process one costs (the issue's
budget, no number). Workers are forked (spawning re-imports torch: ~20 s each).

Run: ``.venv/bin/python benchmarks/bench_workers.py [--smoke]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from functools import partial

import torch

if __package__ in (None, ""):  # run as a script: its directory, not the repo, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import row, segmented, settle, timed
from benchmarks.baselines import NoOp
from benchmarks.bench_recorder import TrivialEnv

WORKERS = 2


def make_env(path: str | None):
    """A worker's env: the trivial env holding a recorder at ``path`` (None: a no-op)."""
    from torchrl.envs import TransformedEnv

    from trlrec import TensorDictRecorder

    transform = NoOp() if path is None else TensorDictRecorder(path)
    return TransformedEnv(TrivialEnv(obs_shape=(4,)), transform)


def _collect(path: str | None, frames_per_batch: int, batches: int) -> float:
    """Seconds per frame of ``batches`` batches of a fresh 2-worker collector (warm-up off)."""
    from torchrl.collectors import MultiSyncCollector

    collector = MultiSyncCollector(
        [partial(make_env, path)] * WORKERS,
        None,
        frames_per_batch=frames_per_batch,
        total_frames=frames_per_batch * (batches + 1),
    )
    try:
        it = iter(collector)
        next(it)  # workers started, envs and recorders built
        t0 = time.perf_counter()
        frames = sum(batch.numel() for batch in it)
        return (time.perf_counter() - t0) / frames
    finally:
        collector.shutdown()


def _single(tmp: str, steps: int, reps: int) -> dict[str, list[float]]:
    """Seconds per step of ``env.rollout`` in this process, the cases alternating in segments."""
    envs = {"without": make_env(None), "with": make_env(os.path.join(tmp, "single"))}
    for env in envs.values():
        env.rollout(50, break_when_any_done=False)  # warm-up: the writer opened

    def case(env):
        return lambda: timed(lambda: env.rollout(steps, break_when_any_done=False)) / steps

    try:
        out = segmented({name: case(env) for name, env in envs.items()}, reps, 4)
    finally:
        envs["with"].transform.close()
    return {name: [v / 4 for v in values] for name, values in out.items()}


def _fork_workers() -> tuple[object, object]:
    import torchrl._utils
    import torchrl.collectors._multi_base

    saved = (
        torchrl._utils._get_default_mp_start_method,
        torchrl.collectors._multi_base._set_mp_start_method_if_unset,
    )
    torchrl._utils._get_default_mp_start_method = lambda: "fork"
    torchrl.collectors._multi_base._set_mp_start_method_if_unset = lambda method: None
    return saved


def _restore(saved: tuple[object, object]) -> None:
    import torchrl._utils
    import torchrl.collectors._multi_base

    torchrl._utils._get_default_mp_start_method = saved[0]  # type: ignore[assignment]
    torchrl.collectors._multi_base._set_mp_start_method_if_unset = saved[1]  # type: ignore[assignment]


def run(smoke: bool = False) -> list[dict]:
    """Per-frame time in collector workers and in one process, with and without a recorder."""
    fpb, batches, reps, steps = (64, 2, 1, 100) if smoke else (1000, 6, 5, 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = _fork_workers()
    try:
        with tempfile.TemporaryDirectory(prefix="trlrec-bench-workers-") as tmp:
            worker: dict[str, list[float]] = {"with": [], "without": []}
            for rep in range(reps):
                for case in ("without", "with"):
                    path = None if case == "without" else os.path.join(tmp, f"w{rep}")
                    settle()
                    worker[case].append(_collect(path, fpb, batches))
            single = _single(tmp, steps, reps)
    finally:
        _restore(saved)
        torch.set_num_threads(threads)
    rows = []
    for name, data in (("MultiSyncCollector worker", worker), ("single process", single)):
        with_, without = statistics.median(data["with"]), statistics.median(data["without"])
        rows.append(
            row(
                f"TensorDictRecorder in a {name}: per-frame time with / without",
                round(with_ / without, 3),
                "x",
                note=(
                    f"{with_ * 1e6:.1f} vs {without * 1e6:.1f} us a frame "
                    f"({(with_ - without) * 1e6:+.1f} us), medians of {len(data['with'])}"
                ),
            )
        )
    return rows


if __name__ == "__main__":
    for r in run(smoke="--smoke" in sys.argv):
        print(r)
