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

The end-to-end ratio is noisy (a collector's frame is ~600 us of TorchRL's own work,
which varies by tens of us from one collector to the next), so the recorder's own time
is also measured where it runs: the time of each recorder ``_step`` call (its part of
the step: capture, and the writes and commits it triggers), summed in the worker
processes through shared memory, against the same in a single process.

Run: ``.venv/bin/python benchmarks/bench_workers.py [--smoke]``.
"""

from __future__ import annotations

import multiprocessing
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
from trlrec import TensorDictRecorder

WORKERS = 2

# seconds spent in recorder steps and their count, over every process (forked workers
# inherit it): [0] seconds, [1] steps
_SPENT = multiprocessing.Array("d", 2)


class _TimedRecorder(TensorDictRecorder):
    """A recorder adding the time of its own step to ``_SPENT`` (every 32 steps)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._spent = [0.0, 0]

    def _step(self, tensordict, next_tensordict):
        t0 = time.perf_counter()
        out = super()._step(tensordict, next_tensordict)
        spent = self._spent
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        if spent[1] == 32:
            with _SPENT.get_lock():
                _SPENT[0] += spent[0]
                _SPENT[1] += spent[1]
            spent[:] = [0.0, 0]
        return out


def make_env(path: str | None, timed_steps: bool = False):
    """A worker's env: the trivial env holding a recorder at ``path`` (None: a no-op).

    ``timed_steps``: the recorder adds its steps' time to ``_SPENT``.
    """
    from torchrl.envs import TransformedEnv

    cls = _TimedRecorder if timed_steps else TensorDictRecorder
    transform = NoOp() if path is None else cls(path)
    return TransformedEnv(TrivialEnv(obs_shape=(4,)), transform)


def _spent() -> float:
    """Seconds a recorder step took on average since the last call (counts reset)."""
    with _SPENT.get_lock():
        seconds, steps = _SPENT[0], _SPENT[1]
        _SPENT[0] = _SPENT[1] = 0.0
    return seconds / steps if steps else float("nan")


def _collect(
    path: str | None, frames_per_batch: int, batches: int, timed_steps: bool = False
) -> float:
    """Seconds per frame of ``batches`` batches of a fresh 2-worker collector (warm-up off)."""
    from torchrl.collectors import MultiSyncCollector

    collector = MultiSyncCollector(
        [partial(make_env, path, timed_steps)] * WORKERS,
        None,
        frames_per_batch=frames_per_batch,
        total_frames=frames_per_batch * (batches + 1),
    )
    try:
        it = iter(collector)
        next(it)  # workers started, envs and recorders built
        _spent()
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
    fpb, batches, reps, steps = (64, 2, 1, 100) if smoke else (1000, 6, 7, 1000)
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
            # the recorder's own step time: in the workers, then in this process
            inside = []
            for rep in range(reps):
                _collect(os.path.join(tmp, f"t{rep}"), fpb, batches, timed_steps=True)
                inside.append(_spent())
            env = make_env(os.path.join(tmp, "single-timed"), timed_steps=True)
            env.rollout(50, break_when_any_done=False)
            alone = []
            for _ in range(reps):
                _spent()
                env.rollout(fpb * batches // WORKERS, break_when_any_done=False)
                alone.append(_spent())
            env.transform.close()
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
    a, b = statistics.median(inside), statistics.median(alone)
    measured = a == a and b == b  # not NaN: some steps were timed
    rows.append(
        row(
            "TensorDictRecorder step, in a MultiSyncCollector worker / in a single process",
            round(a / b, 3) if measured else None,
            "x",
            note=(
                f"{a * 1e6:.1f} vs {b * 1e6:.1f} us a step, medians of {reps}"
                if measured
                else "too few steps to time"
            ),
        )
    )
    return rows


if __name__ == "__main__":
    for r in run(smoke="--smoke" in sys.argv):
        print(r)
