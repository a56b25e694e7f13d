"""Recording a batched GPU env: step rates, ``extend`` bandwidth and host RSS, side by side.

A synthetic batched env in plain torch keeps its state on the GPU, as simulators that
run there do (Isaac Lab, ManiSkill, Brax/MJX through TorchRL): ``B = 4096`` sub-envs of
64-float observations, and a pixel variant of ``64x64x3`` frames at ``B = 256``. Its
episodes are staggered, so some sub-envs reset at every step (TorchRL's partial resets).
One run prints, for each variant:

- the env's step rate bare (a ``TransformedEnv`` without transform), with a no-op
  transform and with each recorder; the recorder's time against the no-op transform's
  (budget ``≤ 1.10`` at ``B = 4096``), median of interleaved repetitions;
- ``extend`` throughput from CUDA ``[B, T]`` batches in GB/s (the store on ``/dev/shm``
  where there is one, so that the disk is not what is measured) against a plain pinned
  ``copy_`` of the same bytes, the limit (budget ``≥ 0.5`` of it);
- the host's RssAnon over a recorded run of 10 M sub-env steps (budget: flat, growth
  after the first tenth ``≤ 16 MB``).

Without a CUDA device (or with ``--smoke``) it runs tiny sizes, on the CPU when there is
no CUDA device, and says so in its rows: a check that the script runs, not figures.

Run: ``.venv/bin/python benchmarks/bench_cuda.py [--smoke]``, or
``python -m benchmarks --only cuda --out FILE`` for BENCHMARKS.md's table format.

On the device machine (torch 2.11 + CUDA under ``python3``, no tensordict/torchrl):
first, here, in the repository root, fetch their wheels into an ignored ``.whl``::

    echo /.whl/ >> .git/info/exclude
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        -d .whl tensordict==0.14.3 torchrl==0.14.1 pyvers==0.2.3 hoptorch==0.1.4 \
        orjson==3.13.0 importlib_metadata==8.7.0

then one device ``run`` with ``carry=[".whl"]`` and ``timeout_s=540`` (the run itself
should take 3-5 minutes; tensordict's ``_C`` does not link libtorch, so the wheels load
under torch 2.11; trlrec's two C extensions are compiled there for Python 3.12)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
    I=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["include"])')
    X=$(python3 -c 'import sysconfig;print(sysconfig.get_config_var("EXT_SUFFIX"))')
    for m in storage/_capture io/_pwrite; do
      gcc -O2 -shared -fPIC -I$I trlrec/$m.c -o trlrec/$m$X -lpthread; done
    nvidia-smi -L; export PYTHONUNBUFFERED=1; set -o pipefail
    timeout 480 python3 -m benchmarks --only cuda --out $OUT/bench_cuda.md 2>&1 \
      | tee $OUT/bench_cuda.log
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, Transform, TransformedEnv

if __package__ in (None, ""):  # run as a script: its directory, not the repo, is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import row, segmented
from benchmarks.baselines import NoOp
from benchmarks.disk import scratch

STEP_BUDGET = 1.10  # recorder's loop time over the no-op transform's, at B = 4096
EXTEND_BUDGET = 0.50  # extend's GB/s over a pinned copy_'s
FLAT_BUDGET_MB = 16.0
NO_CUDA = "no CUDA device: CPU smoke path (checks that the script runs; no figure, no verdict)"


class BatchedGpuEnv(EnvBase):
    """``B`` sub-envs whose state lives on ``device``; a step is a few elementwise kernels.

    Sub-env ``b``'s episodes last ``length + b % length`` steps, so some sub-envs end
    at every step. Observations: ``observation`` ``[B, obs_dim]`` float32, and with
    ``pixels=(H, W, 3)`` a ``pixels`` ``[B, H, W, 3]`` uint8.
    """

    def __init__(
        self,
        batch: int,
        device: torch.device,
        obs_dim: int = 64,
        pixels: tuple[int, int, int] | None = None,
        length: int = 64,
    ) -> None:
        super().__init__(batch_size=torch.Size([batch]), device=device)
        B = batch
        obs: dict[str, Any] = {
            "observation": Unbounded(shape=(B, obs_dim), dtype=torch.float32, device=device)
        }
        if pixels is not None:
            obs["pixels"] = Bounded(0, 255, (B, *pixels), dtype=torch.uint8, device=device)
        self.observation_spec = Composite(obs, shape=(B,), device=device)
        self.action_spec = Categorical(4, shape=(B, 1), dtype=torch.int64, device=device)
        self.reward_spec = Unbounded(shape=(B, 1), dtype=torch.float32, device=device)
        flag = Categorical(2, shape=(B, 1), dtype=torch.bool, device=device)
        self.done_spec = Composite(
            done=flag.clone(),
            terminated=flag.clone(),
            truncated=flag.clone(),
            shape=(B,),
            device=device,
        )
        self._pixels = pixels
        self._state = torch.zeros(B, obs_dim, device=device)
        self._t = torch.zeros(B, dtype=torch.int64, device=device)
        self._length = length + torch.arange(B, device=device) % length
        self._ramp = torch.arange(obs_dim, device=device, dtype=torch.float32) / obs_dim
        if pixels is not None:
            n = pixels[0] * pixels[1] * pixels[2]
            self._pix = (torch.arange(n, device=device) % 251).reshape(pixels)

    def _observe(self) -> dict[str, torch.Tensor]:
        out = {"observation": self._state.clone()}
        if self._pixels is not None:
            shift = (self._t % 251).to(torch.uint8).view(-1, 1, 1, 1)
            out["pixels"] = (self._pix.to(torch.uint8) + shift).contiguous()
        return out

    def _flags(self, done: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"done": done, "terminated": done.clone(), "truncated": torch.zeros_like(done)}

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            self._t.zero_()
            self._state.zero_()
        else:  # no host sync: masked in place
            m = mask.reshape(-1)
            self._t.masked_fill_(m, 0)
            self._state.masked_fill_(m[:, None], 0.0)
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {**self._observe(), **self._flags(done)}, batch_size=self.batch_size, device=self.device
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").to(torch.float32)
        self._t += 1
        self._state.mul_(0.99).add_(action * self._ramp)
        reward = self._state[:, :1] * 0.5
        done = (self._t >= self._length).unsqueeze(-1)
        return TensorDict(
            {**self._observe(), "reward": reward, **self._flags(done)},
            batch_size=self.batch_size,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        torch.manual_seed(0 if seed is None else seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_anon_mb() -> float:
    """RssAnon of this process, in MB (Linux)."""
    text = Path("/proc/self/status").read_text()
    found = re.search(r"^RssAnon:\s*(\d+) kB", text, re.MULTILINE)
    return 0.0 if found is None else int(found.group(1)) / 1024


def _loop(env: TransformedEnv, steps: int, device: torch.device) -> Callable[[], float]:
    """A timed step loop (random actions made on the device), resuming where it stopped."""
    state = {"td": env.reset()}
    n_actions = 4

    def run() -> float:
        td = state["td"]
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            td.set("action", torch.randint(0, n_actions, env.action_spec.shape, device=device))
            _, td = env.step_and_maybe_reset(td)
        _sync(device)
        state["td"] = td
        return time.perf_counter() - t0

    return run


def _step_rows(
    label: str,
    make_env: Callable[[], EnvBase],
    recorders: dict[str, Callable[[Path], Transform]],
    steps: int,
    reps: int,
    device: torch.device,
    budget: bool,
    note: str | None,
) -> list[dict[str, Any]]:
    """Step rates bare, with a no-op transform and with each recorder; each one's ratio."""
    with scratch("trlrec-cuda-") as base:
        transforms: dict[str, Transform | None] = {"bare": None, "no-op transform": NoOp()}
        for name, make in recorders.items():
            transforms[name] = make(base / name.replace(" ", "_"))
        cases = {}
        B = 1
        for name, transform in transforms.items():
            env = make_env()
            B = env.batch_size[0]
            wrapped = TransformedEnv(env) if transform is None else TransformedEnv(env, transform)
            loop = _loop(wrapped, steps, device)
            loop()  # warm-up: kernels, allocator, writer's first chunk
            cases[name] = loop
        if budget or reps > 1:  # interleaved, each run settled (a GC pass: ~1 s here)
            times = segmented(cases, reps, 1)
        else:  # smoke: once each
            times = {name: [loop()] for name, loop in cases.items()}
        for transform in transforms.values():
            close = getattr(transform, "close", None)
            if close is not None:
                close()
    out = []
    for name, ts in times.items():
        rate = steps / statistics.median(ts)
        out.append(
            row(
                f"{label}: env steps/s, {name}",
                round(rate, 1),
                "steps/s",
                note=note or f"{rate * B / 1e6:.2f} M sub-env steps/s",
            )
        )
    noop = times["no-op transform"]
    for name in recorders:
        ratio = statistics.median([a / b for a, b in zip(times[name], noop, strict=True)])
        verdict = ratio <= STEP_BUDGET if budget else None
        out.append(
            row(
                f"{label}: {name} vs no-op transform",
                round(ratio, 3),
                "x",
                f"≤ {STEP_BUDGET:.2f}" if budget else None,
                verdict,
                note=note or f"median of {reps} interleaved repetitions of {steps} steps",
            )
        )
    return out


def _batch(B: int, T: int, device: torch.device, obs_dim: int = 64) -> TensorDict:
    """A ``[B, T]`` collector batch on ``device`` (episodes of T steps: no resets inside)."""
    g = torch.Generator(device=device).manual_seed(0)
    obs = torch.randn(B, T + 1, obs_dim, device=device, generator=g)
    done = torch.zeros(B, T, 1, dtype=torch.bool, device=device)
    return TensorDict(
        {
            "observation": obs[:, :-1],
            "action": torch.randint(0, 4, (B, T, 1), device=device, generator=g),
            "done": done,
            "terminated": done.clone(),
            "truncated": done.clone(),
            "next": {
                "observation": obs[:, 1:],
                "reward": torch.randn(B, T, 1, device=device, generator=g),
                "done": done.clone(),
                "terminated": done.clone(),
                "truncated": done.clone(),
            },
        },
        batch_size=[B, T],
        device=device,
    )


def _fast_dir() -> tempfile.TemporaryDirectory:
    """A directory in RAM (``/dev/shm``) where there is one, so the disk is not measured."""
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix="trlrec-cuda-", dir=where)


def _extend_rows(
    B: int, T: int, batches: int, device: torch.device, budget: bool, note: str | None
) -> list[dict[str, Any]]:
    """GB/s of ``extend`` from device batches, and of a plain pinned ``copy_`` of the bytes."""
    from trlrec import TensorDictRecorder

    batch = _batch(B, T, device)
    nbytes = sum(v.numel() * v.element_size() for v in batch.values(True, True))
    flat = torch.empty(nbytes, dtype=torch.uint8, device=device)
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    copies = []
    for _ in range(max(3, batches)):
        _sync(device)
        t0 = time.perf_counter()
        pinned.copy_(flat, non_blocking=True)
        _sync(device)
        copies.append(time.perf_counter() - t0)
    limit = nbytes / statistics.median(copies) / 1e9
    stage = _copy_stage(batch, batches, device)
    with _fast_dir() as tmp:
        rec = TensorDictRecorder(Path(tmp) / "run")
        rec.extend(batch)  # warm-up: schema, chunk files, pinned slots
        rec.dump()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            rec.extend(batch)
        rec.dump()  # the last batch is in the store
        seconds = time.perf_counter() - t0
        rec.close()
    got = nbytes * batches / seconds / 1e9
    where = "/dev/shm" if str(tmp).startswith("/dev/shm") else "the temp dir"
    size = f"[{B}, {T}] batches of {nbytes / 2**20:.0f} MiB, {batches} of them, store on {where}"
    return [
        row(f"extend from {device.type} [B={B}, T={T}]", round(got, 3), "GB/s", note=note or size),
        row(
            "extend's device copy alone (DeviceCopies, no store)",
            round(nbytes / stage / 1e9, 3),
            "GB/s",
            note=note or "snapshot, side-stream copy to pinned memory, event wait; per batch",
        ),
        row(
            "pinned copy_ of the same bytes (the limit)",
            round(limit, 3),
            "GB/s",
            note=note or "device to pinned host, one copy_, median",
        ),
        row(
            "extend / pinned copy_",
            round(got / limit, 3),
            "x",
            f"≥ {EXTEND_BUDGET:.2f}" if budget else None,
            got / limit >= EXTEND_BUDGET if budget else None,
            note=note,
        ),
    ]


def _copy_stage(batch: TensorDict, batches: int, device: torch.device) -> float:
    """Seconds a batch takes through the recorders' device path alone (median)."""
    from trlrec.device_copy import DeviceCopies

    copies = DeviceCopies()
    times = []
    for _ in range(max(3, batches)):
        _sync(device)
        t0 = time.perf_counter()
        copies.push({"batch": batch}, lambda host: None)
        copies.drain()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _rss_rows(
    B: int, sub_steps: int, seconds: float, device: torch.device, budget: bool, note: str | None
) -> list[dict[str, Any]]:
    """RssAnon over a TensorDictRecorder run of ``sub_steps`` sub-env steps (or ``seconds``)."""
    from trlrec import TensorDictRecorder

    steps = max(10, sub_steps // B)
    samples: list[tuple[int, float]] = []
    with scratch("trlrec-cuda-rss-") as base:
        rec = TensorDictRecorder(base / "run")
        env = TransformedEnv(BatchedGpuEnv(B, device), rec)
        td = env.reset()
        start = rss_anon_mb()
        t0 = time.perf_counter()
        done = 0
        while done < steps and (done < 10 or time.perf_counter() - t0 < seconds):
            td.set("action", torch.randint(0, 4, (B, 1), device=device))
            _, td = env.step_and_maybe_reset(td)
            done += 1
            if done % 20 == 0:
                samples.append((done, rss_anon_mb()))
        rec.close()
        _sync(device)
        took = time.perf_counter() - t0
        samples.append((done, rss_anon_mb()))
    warm = next(mb for i, mb in samples if i >= done // 10)  # after the first tenth
    peak = max(mb for _, mb in samples)
    growth = peak - warm
    reached = done * B
    whole = reached >= sub_steps
    return [
        row(
            f"host RssAnon growth over {reached / 1e6:.2f} M recorded sub-env steps (B={B})",
            round(growth, 1),
            "MB",
            f"≤ {FLAT_BUDGET_MB:g} over {sub_steps / 1e6:g} M" if budget else None,
            growth <= FLAT_BUDGET_MB if budget and whole else None,
            note=note
            or f"RssAnon {start:.0f} MB at the start, {warm:.0f} after the first tenth, peak "
            f"{peak:.0f}, {samples[-1][1]:.0f} at the end; {done / took:.1f} steps/s recording"
            + ("" if whole else f"; stopped after {seconds:g} s, short of the budget's steps"),
        )
    ]


def run(smoke: bool = False) -> list[dict[str, Any]]:
    from trlrec import TensorDictRecorder, VideoRecorder

    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    full = cuda and not smoke
    note = None if cuda else NO_CUDA
    if full:
        # the store writes each sub-env's stream apart: at B = 4096 a step may take ~0.5 s
        B, PB, steps, reps, ext, rss_steps = 4096, 256, 30, 3, (4096, 32, 8), 10_000_000
    else:
        B, PB, steps, reps, ext, rss_steps = 8, 2, 5, 1, (4, 8, 2), 80  # few files: fast
    state_recorders = {"TensorDictRecorder": lambda p: TensorDictRecorder(p)}
    pixel_recorders = {
        "TensorDictRecorder": lambda p: TensorDictRecorder(p),
        "VideoRecorder (grid)": lambda p: VideoRecorder(None, "v", spool_dir=p),
        "VideoRecorder (per env)": lambda p: VideoRecorder(None, "v", make_grid=False, spool_dir=p),
    }
    rows = _step_rows(
        f"state B={B}",
        lambda: BatchedGpuEnv(B, device),
        state_recorders,
        steps,
        reps,
        device,
        full,
        note,
    )
    side = (64, 64, 3) if full else (8, 8, 3)
    rows += _step_rows(
        f"pixels {side[0]}x{side[1]}x3 B={PB}",
        lambda: BatchedGpuEnv(PB, device, pixels=side),
        pixel_recorders,
        max(2, steps // 2),
        reps,
        device,
        False,
        note,
    )
    rows += _extend_rows(*ext, device, full, note)
    rows += _rss_rows(B, rss_steps, 90.0 if full else 10.0, device, full, note)
    return rows


if __name__ == "__main__":
    for result in run(smoke="--smoke" in sys.argv):
        flag = {True: "ok", False: "OVER BUDGET", None: ""}[result["ok"]]
        print(f"{result['name']:<72} {result['value']!s:>10} {result['unit']:<8}", end="")
        print(f" ({result['budget'] or '-'}) {flag}")
        if result.get("note"):
            print(f"    {result['note']}")
