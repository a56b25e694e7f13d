"""VideoRecorder overhead at 84x84x3, next to TorchRL's, in one run.

Three cases, interleaved (bare, trlrec, torchrl, bare, ...), each a loop of
``env.step_and_maybe_reset`` on a trivial env with 84x84x3 uint8 pixels, then the same
three as ``env.rollout`` (DESIGN.md's budget is stated for ``env.rollout``, the issue's
for the step loop; both are reported):

- bare: the same ``TransformedEnv`` without the recorder (no transform; the budget's
  baseline, as in bench_recorder), and with a no-op transform instead (the stricter
  baseline, see ``benchmarks/baselines.py``); the env alone is timed too, for the note;
- trlrec: ``env.append_transform(trlrec.VideoRecorder(...))`` (frames spooled to disk);
- torchrl: ``env.append_transform(torchrl.record.VideoRecorder(None, ..., skip=1))``
  (frames kept in RAM, as TorchRL does; ``skip=1`` so both record every frame).

The ratios are medians of per-repetition ratios (each recorder's loop over the bare
loop of the same repetition); a repetition alternates the cases in 4 segments of 250
steps, as bench_recorder does, so that a slow phase of the shared machine falls on all
of them. Videos are dumped between repetitions, outside the timing, to a logger that
discards them (encoding is the logger's cost, not the recorder's).

Run: ``.venv/bin/python -m benchmarks.bench_video [--smoke]`` or
``.venv/bin/python benchmarks/bench_video.py [--smoke]``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, TransformedEnv

if __package__ in (None, ""):  # run as a script: its directory, not the repo, is on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import median, row, segmented
from benchmarks.baselines import NOOP_NOTE, NoOp
from benchmarks.disk import scratch

PIXELS = (84, 84, 3)
BUDGET = 1.10
SEGMENTS = 4  # per repetition, the cases alternate in this many runs (as bench_recorder)


class _PixelEnv(EnvBase):
    """A trivial env: 4-float observation, 84x84x3 uint8 pixels, 100-step episodes."""

    def __init__(self, episode_len: int = 100) -> None:
        super().__init__(batch_size=torch.Size([]))
        g = torch.Generator().manual_seed(0)
        self._frames = torch.randint(0, 256, (2, *PIXELS), dtype=torch.uint8, generator=g)
        self._len = episode_len
        self._t = 0
        self.observation_spec = Composite(
            observation=Unbounded(shape=(4,)),
            pixels=Bounded(0, 255, shape=PIXELS, dtype=torch.uint8),
        )
        self.action_spec = Categorical(2, shape=(1,), dtype=torch.int64)
        self.reward_spec = Unbounded(shape=(1,))

    def _obs(self, done: bool) -> TensorDictBase:
        flag = torch.tensor([done])
        return TensorDict(
            {
                "observation": torch.full((4,), float(self._t)),
                "pixels": self._frames[self._t % 2],
                "done": flag,
                "terminated": flag.clone(),
                "truncated": torch.zeros(1, dtype=torch.bool),
            },
            batch_size=[],
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        self._t = 0
        return self._obs(False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._t += 1
        out = self._obs(self._t >= self._len)
        out["reward"] = torch.ones(1)
        return out

    def _set_seed(self, seed: int | None) -> None:
        del seed


class _NullLogger:
    def log_video(self, name: str, video: Any, step: int | None = None, **kwargs: Any) -> None:
        del name, video, step, kwargs


def _loop(env: EnvBase, steps: int) -> float:
    """Seconds per ``step_and_maybe_reset`` over ``steps`` steps."""
    td = env.reset()
    td["action"] = torch.zeros(1, dtype=torch.int64)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, td = env.step_and_maybe_reset(td)
    return (time.perf_counter() - t0) / steps


def _rollout(env: EnvBase, steps: int) -> float:
    """Seconds per step of ``env.rollout(steps)`` (no early stop: episodes are reset)."""
    t0 = time.perf_counter()
    env.rollout(steps, break_when_any_done=False)
    return (time.perf_counter() - t0) / steps


def _case(env: EnvBase, steps: int, run: Any = _loop) -> Any:
    return lambda: run(env, steps)


def step_loop_rows(spool: Path, smoke: bool) -> list[dict[str, Any]]:
    from torchrl.record import VideoRecorder as TorchRLVideoRecorder

    from trlrec import VideoRecorder

    steps, reps = (48, 2) if smoke else (1000, 11)
    rows = []
    for mode, run in (("step loop", _loop), ("env.rollout", _rollout)):
        ours = VideoRecorder(_NullLogger(), "bench", spool_dir=spool / mode.replace(" ", "-"))
        theirs = TorchRLVideoRecorder(None, "bench", skip=1)
        part = steps // SEGMENTS
        cases = {
            "env": _case(_PixelEnv(), part, run),
            "bare": _case(TransformedEnv(_PixelEnv()), part, run),
            "noop": _case(_PixelEnv().append_transform(NoOp()), part, run),
            "trlrec": _case(_PixelEnv().append_transform(ours), part, run),
            "torchrl": _case(_PixelEnv().append_transform(theirs), part, run),
        }

        def dump(ours: Any = ours, theirs: Any = theirs) -> None:  # untimed, between reps
            ours.dump()
            theirs.dump()

        for fn in cases.values():  # warm-up
            fn()
        dump()
        times = segmented(cases, reps, SEGMENTS, after=dump)
        ours.close()
        rows += _rows(mode, {k: [t / SEGMENTS for t in v] for k, v in times.items()}, steps, reps)
    return rows


def _rows(mode: str, times: dict[str, list[float]], steps: int, reps: int) -> list[dict]:
    def ratio(name: str, base: str) -> float:
        return median([t / b for t, b in zip(times[name], times[base], strict=True)])

    bare_us = median(times["bare"]) * 1e6
    noop_us = median(times["noop"]) * 1e6
    env_us = median(times["env"]) * 1e6
    ours_us = (median(times["trlrec"]) - median(times["bare"])) * 1e6
    theirs_us = (median(times["torchrl"]) - median(times["bare"])) * 1e6
    note = (
        f"baseline: the same TransformedEnv without the recorder, {bare_us:.0f} µs per step "
        f"(with a no-op transform instead: {noop_us:.0f} µs; the env alone: {env_us:.0f} µs); "
        f"trlrec adds {ours_us:.1f} µs per frame, torchrl {theirs_us:.1f} µs; {reps} "
        f"interleaved repetitions of {steps} steps in {SEGMENTS} segments; load average "
        f"{os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs (the spool's writer thread needs a CPU of its own to take the "
        "disk writes off the step)"
    )
    ours = ratio("trlrec", "bare")
    return [
        row(
            f"VideoRecorder overhead 84x84x3 ({mode})",
            round(ours, 3),
            "x",
            f"<= {BUDGET:.2f}",
            ours <= BUDGET,
            note=note,
        ),
        row(
            f"VideoRecorder overhead 84x84x3 ({mode}, vs a no-op transform)",
            round(ratio("trlrec", "noop"), 3),
            "x",
            note=NOOP_NOTE if mode == "step loop" else None,
        ),
        row(
            f"torchrl VideoRecorder overhead 84x84x3 ({mode}, same run)",
            round(ratio("torchrl", "bare"), 3),
            "x",
        ),
    ]


def run(smoke: bool = False) -> list[dict[str, Any]]:
    with scratch("trlrec-bench-video-") as base:
        return step_loop_rows(base / "spool", smoke)


__all__ = ["run"]


if __name__ == "__main__":
    for r in run(smoke="--smoke" in sys.argv[1:]):
        print(r)
