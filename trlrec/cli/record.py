"""``trlrec record``: record a Gymnasium env through TorchRL, transitions and optionally video."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trlrec.cli.progress import Progress
from trlrec.errors import ConfigError
from trlrec.naming import safe_name

__all__ = ["RecordResult", "record", "load_policy", "new_run_dir"]

VIDEO_TAG = "episode"


@dataclass
class RecordResult:
    """What a recording produced."""

    run_dir: Path
    dataset: Path
    videos: list[Path] = field(default_factory=list)
    steps: int = 0
    episodes: int = 0


def load_policy(spec: str) -> Callable[[Any], Any]:
    """Import a policy given as ``module:callable`` or ``path/to/file.py:callable``.

    The callable is a TorchRL policy: it takes the env's tensordict and returns it
    with an ``"action"`` set (a ``TensorDictModule`` qualifies).

    Raises:
        ConfigError: the spec is malformed, the module or attribute is missing, or
            the object is not callable.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--policy must be module:callable, got {spec!r}")
    if os.getcwd() not in sys.path:  # as `python -m` does: modules next to the user resolve
        sys.path.insert(0, os.getcwd())
    try:
        if module_name.endswith(".py"):
            loc = importlib.util.spec_from_file_location("_trlrec_policy", module_name)
            if loc is None or loc.loader is None or not Path(module_name).is_file():
                raise ConfigError(f"--policy: no such file {module_name!r}")
            module = importlib.util.module_from_spec(loc)
            loc.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"--policy: cannot import {module_name!r}: {err}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--policy: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--policy: {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def new_run_dir(out: Path, env_id: str) -> Path:
    """A fresh directory ``<out>/<env_id>-<YYYYmmdd-HHMMSS>[-N]``: runs never overwrite."""
    stem = f"{safe_name(env_id)}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        path = out / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"could not find a free run directory under {str(out)!r}")


def _make_env(env_id: str, video: bool, seed: int | None) -> Any:
    from torchrl.envs import GymEnv

    try:
        env = GymEnv(env_id, render_mode="rgb_array") if video else GymEnv(env_id)
    except Exception as err:  # gymnasium raises several types for unknown ids / bad set-ups
        raise ConfigError(f"cannot create the Gymnasium env {env_id!r}: {err}") from None
    if seed is not None:
        env.set_seed(seed)
    return env


def record(
    env_id: str = "CartPole-v1",
    *,
    steps: int = 500,
    out: str | os.PathLike[str] = "runs",
    video: bool = False,
    policy: str | None = None,
    seed: int | None = None,
    fps: float | None = None,
) -> RecordResult:
    """Record ``steps`` transitions of ``env_id`` into a new run directory under ``out``.

    Layout: ``<run>/transitions`` (the store, through a
    :class:`~trlrec.TensorDictRecorder`), ``<run>/scalars/*.csv`` (episode statistics)
    and, with ``video``, ``<run>/videos/episode_0.mp4`` (a :class:`~trlrec.VideoRecorder`
    over a :class:`~trlrec.PixelRenderTransform`), all through one
    :class:`~trlrec.loggers.CSVLogger` whose experiment directory is the run directory.

    Raises:
        ConfigError: a bad argument, an unknown env id or an unusable policy.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a positive int, got {steps!r}")
    act = load_policy(policy) if policy else None
    if video:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    env = _make_env(env_id, video, seed)
    run_dir = new_run_dir(Path(out), env_id)
    result = RecordResult(run_dir, run_dir / "transitions")
    metadata = {
        "env_id": env_id,
        "policy": policy or "random",
        "seed": seed,
        "steps": steps,
        "recorded_by": "trlrec record",
    }
    from trlrec.loggers import CSVLogger
    from trlrec.transforms.tensordict_recorder import TensorDictRecorder

    # The store keeps the env's own keys: rendered frames go to the video, not the store.
    keep = [*env.observation_spec.keys(True, True), *env.action_keys, *env.reward_keys]
    logger = CSVLogger(run_dir.name, log_dir=run_dir.parent)
    recorders: list[Any] = []
    try:
        if video:
            from trlrec.transforms.pixel_render import PixelRenderTransform
            from trlrec.transforms.video_recorder import VideoRecorder

            env = env.append_transform(PixelRenderTransform())
            recorders.append(VideoRecorder(logger, tag=VIDEO_TAG, fps=fps))
            env = env.append_transform(recorders[-1])
        rec = TensorDictRecorder(
            result.dataset, logger=logger, tag="transitions", in_keys=keep, metadata=metadata
        )
        recorders.append(rec)
        env = env.append_transform(rec)
        _run(env, act, steps)
        for r in recorders:
            r.dump()
    finally:
        for r in recorders:
            r.close()
        env.close()
        logger.close()
    result.videos = sorted((run_dir / "videos").glob("*.mp4"))
    from trlrec.storage.reader import TrajectoryReader

    reader = TrajectoryReader(result.dataset)
    result.steps, result.episodes = reader.num_steps, reader.num_episodes
    return result


def _run(env: Any, act: Any, steps: int) -> None:
    """Step the env ``steps`` times (the recorders in its transform stack do the rest)."""
    with Progress("recording", steps) as bar:
        td = env.reset()
        for i in range(steps):
            td = act(td) if act is not None else env.rand_action(td)
            _, td = env.step_and_maybe_reset(td)
            bar.update(i + 1)
