"""Overhead of recording transitions: trlrec's TensorDictRecorder next to TorchRL's.

Each case runs the same ``step_and_maybe_reset`` loop (or ``env.rollout``) on a
trivial deterministic env without a recorder and with one; each repetition
alternates the cases in short segments, and the reported value is the median of the
per-repetition time ratios (with / without), with their quartiles in the note. The
run without a recorder is the same ``TransformedEnv`` with no transform (DESIGN.md:
"over the same rollout without it"); trlrec's rows are also
given against the recorder replaced by a transform that does nothing, which TorchRL
runs faster than an empty ``TransformedEnv`` (see ``benchmarks/baselines.py``).
Budget: ``<= 1.10`` for trlrec, against the first; TorchRL's in-RAM recorder is
measured in the same run for comparison.

Torch runs single-threaded during the measurement (``torch.set_num_threads(1)``, as
in an actor process): the step loop's tensors are tiny, and on a shared 2-core box
intra-op threads spin against each other in the recorder's block copies.

Run: ``.venv/bin/python benchmarks/bench_recorder.py [--smoke]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, Transform, TransformedEnv

if __package__ in (None, ""):  # run as a script: its directory, not the repo, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import row, settle
from benchmarks.baselines import NOOP_NOTE, NoOp

BUDGET = 1.10
SEGMENTS = 4  # per repetition, each case runs in this many alternating segments


class TrivialEnv(EnvBase):
    """A deterministic env doing almost nothing (a copy of the tests' stub env, reduced)."""

    def __init__(self, episode_length: int = 200, obs_shape: Sequence[int] = (4,), pixels=None):
        super().__init__(batch_size=torch.Size([]))
        self._length = episode_length
        self._pixels = None if pixels is None else torch.Size(pixels)
        obs = {"observation": Unbounded(shape=tuple(obs_shape), dtype=torch.float32)}
        if self._pixels is not None:
            obs["pixels"] = Bounded(0, 255, shape=self._pixels, dtype=torch.uint8)
        self.observation_spec = Composite(obs)
        self.action_spec = Categorical(3, shape=(1,), dtype=torch.int64)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32)
        flag = Categorical(2, shape=(1,), dtype=torch.bool)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone()
        )
        self._obs_shape = torch.Size(obs_shape)
        self._t = 0
        self._episode = 0

    def _observe(self) -> dict[str, torch.Tensor]:
        base = float(self._episode * 1000 + self._t)
        out = {"observation": torch.full(self._obs_shape, base)}
        if self._pixels is not None:
            out["pixels"] = torch.full(
                self._pixels, (self._episode * 7 + self._t) % 251, dtype=torch.uint8
            )
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        self._t = 0
        self._episode += 1
        done = torch.zeros(1, dtype=torch.bool)
        return TensorDict(
            {
                **self._observe(),
                "done": done,
                "terminated": done.clone(),
                "truncated": done.clone(),
            },
            batch_size=[],
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._t += 1
        done = torch.tensor([self._t >= self._length])
        return TensorDict(
            {
                **self._observe(),
                "reward": torch.ones(1),
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros(1, dtype=torch.bool),
            },
            batch_size=[],
        )

    def _set_seed(self, seed: int | None) -> None:
        pass


class CopyFloor(Transform):
    """The least an exact recorder does in ``_step``: copy the leaves it must keep.

    One fused copy (``torch._foreach_copy_``) of the ``"next"`` leaves and the root
    leaves that are not states (the action), into buffers reused every step; nothing
    is stored. Its ratio is the floor of any recorder that copies each step (the data
    may be reused or modified in place after the step, so a recorder cannot keep
    references): trlrec's ratio minus this one is what trlrec itself adds.
    """

    def __init__(self) -> None:
        super().__init__()
        self._dst: list[torch.Tensor] | None = None

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        nxt = next_tensordict._tensordict
        src = [v for k, v in tensordict._tensordict.items() if k not in nxt and k != "next"]
        src += nxt.values()
        if self._dst is None:
            self._dst = [torch.empty_like(v) for v in src]
        torch._foreach_copy_(self._dst, src)
        return next_tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return next_tensordict


def _floor(env_fn: Callable[[], EnvBase]) -> Callable[[str], tuple[EnvBase, Callable[[], None]]]:
    def make(path: str) -> tuple[EnvBase, Callable[[], None]]:
        return TransformedEnv(env_fn(), CopyFloor()), lambda: None

    return make


def _loop(env: EnvBase, steps: int) -> float:
    action = env.action_spec.zero()
    action.view(-1)[0] = 1  # a valid action for both the one-hot and the categorical spec
    td = env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        td.set("action", action)
        _, td = env.step_and_maybe_reset(td)
    return time.perf_counter() - start


def _rollout(env: EnvBase, steps: int) -> float:
    start = time.perf_counter()
    env.rollout(steps, break_when_any_done=False)
    return time.perf_counter() - start


def _median_ratio(
    make_bare: Callable[[], EnvBase],
    make_rec: Callable[[str], tuple[EnvBase, Callable[[], None]]],
    run: Callable[[EnvBase, int], float],
    steps: int,
    reps: int,
    make_noop: Callable[[], EnvBase] | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """Per-repetition ratios of the recorded loop over the bare one (and the no-op one),
    and the microseconds a step it adds over the no-op one."""
    ratios, noop_ratios, added_us = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare = make_bare()
        run(bare, max(10, steps // 10))  # warm up
        noop = None if make_noop is None else make_noop()
        if noop is not None:
            run(noop, max(10, steps // 10))
        part = max(10, steps // SEGMENTS)
        for r in range(reps):
            env, finish = make_rec(os.path.join(tmp, f"rep{r}"))
            run(env, max(10, steps // 10))
            t_rec = t_bare = t_noop = 0.0
            # a repetition alternates the cases in short segments (rec, bare, no-op, rec,
            # ...): a slow phase of the machine then falls on all of them alike
            for _ in range(SEGMENTS):
                settle()
                t_rec += run(env, part)
                settle()
                t_bare += run(bare, part)
                if noop is not None:
                    settle()
                    t_noop += run(noop, part)
            finish()
            ratios.append(t_rec / t_bare)
            if noop is not None:
                noop_ratios.append(t_rec / t_noop)
                added_us.append((t_rec - t_noop) / (SEGMENTS * part) * 1e6)
    return ratios, noop_ratios, added_us


def _trlrec(env_fn: Callable[[], EnvBase]) -> Callable[[str], tuple[EnvBase, Callable[[], None]]]:
    from trlrec import TensorDictRecorder

    def make(path: str) -> tuple[EnvBase, Callable[[], None]]:
        rec = TensorDictRecorder(path)
        return TransformedEnv(env_fn(), rec), rec.close

    return make


def _torchrl(env_fn: Callable[[], EnvBase]) -> Callable[[str], tuple[EnvBase, Callable[[], None]]]:
    from torchrl.record import TensorDictRecorder as TorchRLRecorder

    def make(path: str) -> tuple[EnvBase, Callable[[], None]]:
        rec = TorchRLRecorder(path, skip=1)
        return TransformedEnv(env_fn(), rec), lambda: rec.td.clear()

    return make


def run(smoke: bool = False) -> list[dict]:
    """Measure the recorders' overhead; one row per case."""
    steps, reps = (200, 3) if smoke else (2000, 11)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(steps, reps)
    finally:
        torch.set_num_threads(threads)


def _run(steps: int, reps: int) -> list[dict]:
    cases = {
        "small": lambda: TrivialEnv(obs_shape=(4,)),
        "pixels84": lambda: TrivialEnv(obs_shape=(4,), pixels=(84, 84, 3)),
    }
    rows: list[dict] = []

    def measure(env_fn: Callable[[], EnvBase], make, run, who: str, name: str) -> None:
        with_noop = who != "torchrl"
        ratios, vs_noop, added = _median_ratio(
            lambda: TransformedEnv(env_fn()),
            make,
            run,
            steps,
            reps,
            (lambda: TransformedEnv(env_fn(), NoOp())) if with_noop else None,
        )
        rows.append(_row(name, ratios, who))
        if vs_noop:
            first = not any(r.get("note") == NOOP_NOTE for r in rows)
            rows.append(
                row(
                    f"{name}, vs a no-op transform",
                    round(statistics.median(vs_noop), 3),
                    "x",
                    note=(NOOP_NOTE + "; " if first else "") + _spread(vs_noop),
                )
            )
            rows.append(
                row(
                    f"{name}, us a step over the no-op",
                    round(statistics.median(added), 1),
                    "us",
                    note=_spread(added).replace("ratios", "differences"),
                )
            )

    for obs, env_fn in cases.items():
        for who, make in (
            ("trlrec", _trlrec(env_fn)),
            ("torchrl", _torchrl(env_fn)),
            ("floor", _floor(env_fn)),
        ):
            name = (
                f"floor: copy the step's leaves only, no store, {obs}"
                if who == "floor"
                else f"{who} TensorDictRecorder step_and_maybe_reset {obs}"
            )
            measure(env_fn, make, _loop, who, name)
    # DESIGN.md states the budget for env.rollout (the issue for the step loop above)
    for obs, env_fn in cases.items():
        measure(
            env_fn,
            _trlrec(env_fn),
            _rollout,
            "trlrec",
            f"trlrec TensorDictRecorder env.rollout {obs}",
        )
    # DESIGN.md's reference point: a real GymEnv("CartPole-v1") step (~250-450 us here).
    from torchrl.envs import GymEnv

    def cartpole() -> EnvBase:
        return GymEnv("CartPole-v1")

    for who, make in (("trlrec", _trlrec(cartpole)), ("torchrl", _torchrl(cartpole))):
        measure(
            cartpole, make, _loop, who, f"{who} TensorDictRecorder step_and_maybe_reset CartPole"
        )
    measure(
        cartpole,
        _trlrec(cartpole),
        _rollout,
        "trlrec",
        "trlrec TensorDictRecorder env.rollout CartPole",
    )
    return rows


_TORCHRL_NOTE = (
    "TorchRL's recorder (torchrl 0.14, in_keys=None) appends a reference to each step's "
    "'next' tensordict to a Python list: no copy (an env that reuses its buffers, e.g. a "
    "ParallelEnv, overwrites what it kept), no root keys or action, memory that grows with "
    "the rollout, and a dump() that raises AttributeError"
)


def _spread(ratios: list[float]) -> str:
    """How the repetitions' ratios spread around their median (the machine is noisy)."""
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return f"median of {len(ratios)} interleaved repetitions, quartiles {q1:.3f}-{q3:.3f}"


def _row(name: str, ratios: list[float], who: str) -> dict:
    """A result row: trlrec's against its budget; TorchRL's and the floor for comparison."""
    ratio = statistics.median(ratios)
    if who != "trlrec":
        first = who == "torchrl" and name.endswith(" small")  # the note once
        note = (_TORCHRL_NOTE + "; " if first else "") + _spread(ratios)
        return row(name, round(ratio, 3), "x", note=note)
    return row(
        name, round(ratio, 3), "x", f"<= {BUDGET:.2f}", ratio <= BUDGET, note=_spread(ratios)
    )


if __name__ == "__main__":
    for result in run(smoke="--smoke" in sys.argv):
        flag = {True: "ok", False: "OVER BUDGET", None: ""}[result["ok"]]
        value = f"{result['value']:>7.3f}{result['unit']}"
        print(f"{result['name']:<62} {value}  ({result['budget'] or '-'}) {flag}")
