"""``trlrec record``: record a Gymnasium env through TorchRL, transitions and optionally video."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trlrec.cli.progress import Progress
from trlrec.errors import ConfigError, TrlrecError
from trlrec.naming import safe_name

__all__ = ["RecordResult", "record", "load_policy", "new_run_dir"]

VIDEO_TAG = "rollout"


@dataclass
class RecordResult:
    """What a recording produced."""

    run_dir: Path
    dataset: Path
    videos: list[Path] = field(default_factory=list)
    steps: int = 0
    episodes: int = 0
    interrupted: bool = False


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
    """A fresh directory ``<out>/<env_id>-<YYYYmmdd-HHMMSS>[-N]``: runs never overwrite.

    Raises:
        ConfigError: ``out`` is not a directory, or cannot be created.
    """
    stem = f"{safe_name(env_id)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {str(out)!r} is a file; give the directory the run directories go in"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out: cannot create the directory {str(out)!r}: {err}") from err
    for n in range(1000):
        path = out / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"could not find a free run directory under {str(out)!r}")


def _make_env(env_id: str, render: bool, seed: int | None) -> Any:
    from torchrl.envs import GymEnv

    try:
        env = GymEnv(env_id, render_mode="rgb_array") if render else GymEnv(env_id)
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
    pixels: bool = False,
    policy: str | None = None,
    seed: int | None = None,
    fps: float | None = None,
) -> RecordResult:
    """Record ``steps`` transitions of ``env_id`` into a new run directory under ``out``.

    Layout: ``<run>/transitions`` (the store, through a
    :class:`~trlrec.TensorDictRecorder`), ``<run>/scalars/*.csv`` (episode statistics)
    and, with ``video``, ``<run>/videos/rollout_<steps>.mp4`` (a
    :class:`~trlrec.VideoRecorder` over a :class:`~trlrec.PixelRenderTransform`), all
    through one :class:`~trlrec.loggers.CSVLogger` whose experiment directory is the run
    directory. With ``pixels`` the rendered frames are also kept in the store under
    ``"pixels"`` (what ``trlrec video`` reads).

    A first Ctrl-C (SIGINT) ends the recording after the current step; what was
    recorded is committed and filmed as at the end, and the result says
    ``interrupted``. A failure removes the run directory when nothing was recorded;
    otherwise a note on the error says how many steps were kept and where.

    Raises:
        ConfigError: a bad argument, an unknown env id, or a policy that fails, raises
            or does not return the tensordict with an action.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a positive int, got {steps!r}")
    if fps is not None and not video:
        raise ConfigError(f"--fps {fps} is the frame rate of the video: add --video")
    act = load_policy(policy) if policy else None
    if video or pixels:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    env = _make_env(env_id, video or pixels, seed)
    try:
        run_dir = new_run_dir(Path(out), env_id)
    except BaseException:
        env.close()
        raise
    result = RecordResult(run_dir, run_dir / "transitions")
    metadata = {
        "env_id": env_id,
        "policy": policy or "random",
        "seed": seed,
        "steps": steps,
        "pixels": pixels,
        "recorded_by": "trlrec record",
    }
    from trlrec.cli import DEFAULT_KEY
    from trlrec.loggers import CSVLogger
    from trlrec.transforms.tensordict_recorder import TensorDictRecorder

    # The store keeps the env's own keys, and the rendered frames only when asked.
    keep = [*env.observation_spec.keys(True, True), *env.action_keys, *env.reward_keys]
    if pixels:
        keep.append(DEFAULT_KEY)
    logger = CSVLogger(run_dir.name, log_dir=run_dir.parent)
    recorders: list[Any] = []
    failure: Exception | None = None
    try:
        if video or pixels:
            from trlrec.transforms.pixel_render import PixelRenderTransform

            env = env.append_transform(PixelRenderTransform(out_keys=[DEFAULT_KEY]))
        if video:
            from trlrec.transforms.video_recorder import VideoRecorder

            recorders.append(VideoRecorder(logger, tag=VIDEO_TAG, in_keys=[DEFAULT_KEY], fps=fps))
            env = env.append_transform(recorders[-1])
        rec = TensorDictRecorder(
            result.dataset, logger=logger, tag="transitions", in_keys=keep, metadata=metadata
        )
        recorders.append(rec)
        env = env.append_transform(rec)
        result.interrupted = _run(env, act, policy, steps)
        for r in recorders:
            r.dump()
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the step loop
        result.interrupted = True  # closing below commits what was recorded
    except Exception as err:
        failure = err
        raise
    finally:
        for r in recorders:
            r.close()
        env.close()
        logger.close()
        if failure is not None:
            _after_failure(result, failure)
    if result.interrupted and _committed_steps(result.dataset) == 0:
        shutil.rmtree(run_dir)  # interrupted before a step was kept: nothing to show
        raise KeyboardInterrupt
    _remove_if_empty(run_dir / "videos")  # the logger makes it whether a video comes or not
    result.videos = sorted((run_dir / "videos").glob("*.mp4"))
    from trlrec.storage.reader import TrajectoryReader

    reader = TrajectoryReader(result.dataset)
    result.steps, result.episodes = reader.num_steps, reader.num_episodes
    return result


def _committed_steps(dataset: Path) -> int | None:
    """Steps committed to ``dataset`` (0 when it was never created), None if unreadable."""
    from trlrec.errors import NotAStoreError, TrlrecError
    from trlrec.storage.reader import TrajectoryReader

    try:
        return TrajectoryReader(dataset).num_steps
    except NotAStoreError:
        return 0
    except TrlrecError:
        return None


def _after_failure(result: RecordResult, error: Exception) -> None:
    """Remove the run directory of a recording that kept nothing; say what was kept."""
    kept = _committed_steps(result.dataset)
    if kept == 0:
        try:
            shutil.rmtree(result.run_dir)
        except OSError as err:
            error.add_note(f"(nothing was recorded; removing {result.run_dir} failed: {err})")
        else:
            error.add_note(f"(nothing was recorded: removed {result.run_dir})")
    elif kept is None:
        error.add_note(f"(the store {result.dataset} could not be read back; it was left)")
    else:
        error.add_note(f"({kept} steps recorded before it are kept in {result.dataset})")


def _remove_if_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


class _StopOnInterrupt:
    """While active, a first SIGINT asks the step loop to stop; a second raises at once.

    The loop then ends between two steps, never inside one, so the recorders commit
    and encode what was recorded as at a normal end. Outside the main thread (where
    Python cannot set signal handlers) Ctrl-C keeps its usual meaning.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def _act(act: Callable[[Any], Any], td: Any, policy: str | None, action_key: Any, i: int) -> Any:
    """One call of the user's policy, checked: it returns the tensordict with the action."""
    from tensordict import TensorDictBase

    try:
        out = act(td)
    except Exception as err:
        raise ConfigError(
            f"--policy {policy}: the policy raised {type(err).__name__} at step {i}: {err}"
        ) from err
    if not isinstance(out, TensorDictBase) or out.get(action_key, None) is None:
        got = "no action" if isinstance(out, TensorDictBase) else repr(out)[:80]
        raise ConfigError(
            f"--policy {policy}: the policy returned {got} at step {i}; a TorchRL policy "
            f"returns the tensordict it is given, with {action_key!r} set"
        )
    return out


def _run(env: Any, act: Any, policy: str | None, steps: int) -> bool:
    """Step the env ``steps`` times (the recorders in its transform stack do the rest).

    Returns:
        Whether a Ctrl-C ended the loop before ``steps``.
    """
    with Progress("recording", steps) as bar, _StopOnInterrupt() as stop:
        td = env.reset()
        for i in range(steps):
            if stop.requested:
                return True
            if act is None:
                td = env.rand_action(td)
                _, td = env.step_and_maybe_reset(td)
            else:
                td = _act(act, td, policy, env.action_key, i)
                try:
                    _, td = env.step_and_maybe_reset(td)
                except TrlrecError:
                    raise
                except Exception as err:  # TorchRL / the env refusing the policy's action
                    raise ConfigError(
                        f"--policy {policy}: stepping the env with its action failed at step "
                        f"{i}: {type(err).__name__}: {err}"
                    ) from err
            bar.update(i + 1)
    return stop.requested
