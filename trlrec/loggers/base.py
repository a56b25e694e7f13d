"""The ``Logger`` base class, and helpers that accept any logger (trlrec's or TorchRL's).

A trlrec logger has TorchRL's method names and signatures (``log_scalar``,
``log_video``, ``log_hparams``, ``log_metrics``), so TorchRL code can use it; trlrec
code that receives a logger goes through :func:`is_logger`,
:func:`experiment_dir_of` and :func:`log_trajectory_to`, which also accept a
``torchrl.record.loggers.Logger``.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import numbers
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trlrec.closing import Closeable
from trlrec.errors import ClosedError, NotAStoreError, UnsupportedDataError
from trlrec.loggers.mp4 import DEFAULT_FPS, _check_fps
from trlrec.loggers.video import Video
from trlrec.naming import safe_name

__all__ = ["Logger", "is_logger", "experiment_dir_of", "log_trajectory_to"]

_log = logging.getLogger("trlrec.loggers")

TRAJECTORIES_FILE = "trajectories.jsonl"
"""File under the experiment directory listing the recorded datasets, one JSON line each."""


def _one_number(value: Any) -> Any:
    """The Python number inside a one-element tensor/array, or ``value`` unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().reshape(()).item()
    if isinstance(value, np.ndarray | np.generic) and value.size == 1:
        return np.asarray(value).reshape(()).item()
    return value


def _as_float(value: Any, name: str) -> float:
    number = _one_number(value)
    if isinstance(number, numbers.Real):
        return float(number)
    raise UnsupportedDataError(
        f"scalar {name!r} must be a real number or a one-element tensor, got "
        f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}; log one number per call"
    )


def _as_step(step: Any, what: str) -> int | None:
    if step is None:
        return None
    number = _one_number(step)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral):
        raise UnsupportedDataError(
            f"step of {what} must be an int or None, got {type(step).__name__} {step!r}"
        )
    return int(number)


def plain_hparams(cfg: Any) -> dict[str, Any]:
    """Turn a config (dict, Mapping, dataclass, Namespace, OmegaConf) into a plain dict.

    Raises:
        UnsupportedDataError: for anything else.
    """
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf  # only when the user already gave us one

        cfg = OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    elif not isinstance(cfg, Mapping) and hasattr(cfg, "__dict__") and not callable(cfg):
        cfg = vars(cfg)
    if not isinstance(cfg, Mapping):
        raise UnsupportedDataError(
            f"hparams must be a dict (or Mapping, dataclass, Namespace), got {type(cfg).__name__}"
        )
    return {str(k): v for k, v in cfg.items()}


def flat_hparams(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings with ``/``; values that are not numbers/str/bool become str."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, prefix=f"{name}/"))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        elif isinstance(value, torch.Tensor | np.ndarray | np.generic) and np.size(value) == 1:
            out[name] = np.asarray(value).item()
        else:
            out[name] = str(value)
    return out


def _append_trajectory_record(directory: Path, name: str, path: Path, step: int | None) -> None:
    record = {"name": name, "step": step, "path": str(path), "time": time.time()}
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / TRAJECTORIES_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


class Logger(abc.ABC, Closeable):
    """Base of the trlrec experiment loggers.

    Subclasses implement ``_log_scalar``, ``_log_video`` and ``_log_hparams`` (and may
    override ``_log_trajectory`` and ``_close``); the public methods check their
    arguments, resolve default steps and refuse to work after :meth:`close`.

    When ``step`` is ``None`` a per-name counter is used: the first value of a name
    gets step 0, the next 1, and so on (an explicit step moves the counter past it).

    Args:
        exp_name: the experiment's name.
        log_dir: where experiments go (backend specific).
        video_fps: frames per second of videos when ``log_video`` gets no ``fps``.

    Attributes:
        exp_name: as given.
        log_dir: as given.
        experiment_dir: the directory this experiment writes files to, or ``None``.
        video_fps: default frames per second of videos.
    """

    experiment_dir: Path | None = None

    def __init__(
        self,
        exp_name: str,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        video_fps: float = DEFAULT_FPS,
    ) -> None:
        safe_name(exp_name)  # refuse NUL bytes, empty and dot-only names early
        self.exp_name = exp_name
        self.log_dir = log_dir
        _check_fps(video_fps)
        self.video_fps = video_fps
        self._counters: dict[tuple[str, str], int] = {}
        self._closed = False
        self._warned: set[str] = set()

    # -- bookkeeping ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what} on {self!r} after close(); create a new logger")

    def _step(self, kind: str, name: str, step: Any) -> int:
        """Resolve ``step``: ``None`` becomes the per-name counter (see :meth:`_advance`)."""
        value = _as_step(step, f"{kind} {name!r}")
        return self._counters.get((kind, name), 0) if value is None else value

    def _advance(self, kind: str, name: str, step: int) -> None:
        """Move the per-name counter past ``step`` once the value has been logged."""
        key = (kind, name)
        self._counters[key] = max(self._counters.get(key, 0), step + 1)

    # -- public API ----------------------------------------------------------------------

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Log one scalar value.

        Args:
            name: the series name (``/`` groups series in TensorBoard and W&B).
            value: a real number or a one-element tensor/array.
            step: the x coordinate; ``None`` uses the per-name counter.

        Raises:
            UnsupportedDataError: for a value that is not one number, or a bad step.
            UnsafeNameError: for an empty name or one with a NUL byte.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_scalar")
        safe_name(name)
        v = _as_float(value, name)
        at = self._step("scalar", name, step)
        self._log_scalar(name, v, at)
        self._advance("scalar", name, at)

    def log_video(self, name: str, video: Any, step: int | None = None, **kwargs: Any) -> None:
        """Log a video, streamed frame by frame to the backend's encoder.

        Args:
            name: the video's tag; it becomes part of a file name, made safe.
            video: uint8 (or float in [0, 1]) ``(T, C, H, W)`` or ``(N, T, C, H, W)``
                (tiled into a grid), a tensor, ``MemoryMappedTensor``, array, list or
                iterator of frames: see :class:`~trlrec.loggers.video.Video`.
            step: the step the video belongs to; ``None`` uses the per-name counter.
            **kwargs: ``fps`` (defaults to ``video_fps``); other keys (TorchRL's
                ``format``, ``video_codec``...) are ignored with a log message.

        Raises:
            VideoError: for frames that cannot be made into a video; nothing is written.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_video")
        safe_name(name)
        fps = kwargs.pop("fps", None)
        fps = self.video_fps if fps is None else fps
        _check_fps(fps)
        for key in kwargs:
            if key not in self._warned:
                self._warned.add(key)
                _log.info("%s.log_video ignores the option %r", type(self).__name__, key)
        v = Video.of(video)
        at = self._step("video", name, step)
        self._log_video(name, v, at, float(fps))
        self._advance("video", name, at)

    def log_hparams(self, cfg: Any) -> None:
        """Log the experiment's configuration (a dict, Mapping, dataclass, Namespace...).

        Raises:
            UnsupportedDataError: for a config that is not mapping-like.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_hparams")
        self._log_hparams(plain_hparams(cfg))

    def log_trajectory(
        self, name: str, path: str | os.PathLike[str], step: int | None = None
    ) -> None:
        """Tell the logger where a recorded dataset directory is (called by recorders on dump).

        Args:
            name: the recording's tag.
            path: the dataset directory; it must exist.
            step: the step it belongs to; ``None`` uses the per-name counter.

        Raises:
            NotAStoreError: when ``path`` is not an existing directory.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_trajectory")
        safe_name(name)
        p = Path(path).resolve()
        if not p.is_dir():
            raise NotAStoreError(f"trajectory {name!r}: {str(path)!r} is not a directory")
        at = self._step("trajectory", name, step)
        self._log_trajectory(name, p, at)
        self._advance("trajectory", name, at)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Log several scalars at one step (TorchRL's ``Logger.log_metrics``).

        A ``TensorDict`` is flattened with ``/`` between nested keys.

        Returns:
            The logged values as floats.
        """
        flatten = getattr(metrics, "flatten_keys", None)
        if callable(flatten):
            metrics = flatten("/").to_dict()
        out = {str(k): _as_float(v, str(k)) for k, v in metrics.items()}
        for name, value in out.items():
            self.log_scalar(name, value, step=step)
        return out

    def flush(self) -> None:
        """Push buffered data to disk (a no-op where every call is already written)."""

    def close(self) -> None:
        """Flush and release the backend; later calls raise :class:`ClosedError`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close()

    def __repr__(self) -> str:
        where = self.experiment_dir
        return f"{type(self).__name__}(exp_name={self.exp_name!r}, experiment_dir={where})"

    # -- backend hooks -------------------------------------------------------------------

    @abc.abstractmethod
    def _log_scalar(self, name: str, value: float, step: int) -> None: ...

    @abc.abstractmethod
    def _log_video(self, name: str, video: Video, step: int, fps: float) -> None: ...

    @abc.abstractmethod
    def _log_hparams(self, cfg: dict[str, Any]) -> None: ...

    def _log_trajectory(self, name: str, path: Path, step: int) -> None:
        """Default: append a JSON line to ``<experiment_dir>/trajectories.jsonl``."""
        if self.experiment_dir is None:
            _log.info("trajectory %r (step %d) recorded at %s", name, step, path)
            return
        _append_trajectory_record(self.experiment_dir, name, path, step)

    def _close(self) -> None:
        """Release the backend (files, runs)."""


def is_logger(obj: Any) -> bool:
    """Whether ``obj`` can be used as a logger: trlrec's, TorchRL's, or duck-typed.

    Examples:
        >>> is_logger(object())
        False
    """
    return all(callable(getattr(obj, m, None)) for m in ("log_scalar", "log_video"))


def experiment_dir_of(logger: Any) -> Path | None:
    """The directory a logger writes its experiment to, or ``None`` if it has none.

    Understands trlrec loggers (``experiment_dir``) and TorchRL's CSV, TensorBoard
    and W&B loggers (``logger.experiment.log_dir`` or the W&B run directory).
    """
    directory = getattr(logger, "experiment_dir", None)
    if directory is not None:
        return Path(directory)
    experiment = getattr(logger, "experiment", None)
    log_dir = getattr(experiment, "log_dir", None)  # torchrl CSVExperiment, SummaryWriter
    if isinstance(log_dir, str | os.PathLike):
        return Path(log_dir)
    run_dir = getattr(experiment, "dir", None)  # a wandb Run: <run>/files is uploaded
    if isinstance(run_dir, str | os.PathLike):
        return Path(run_dir).parent / "trlrec"
    return None


def log_trajectory_to(
    logger: Any, name: str, path: str | os.PathLike[str], step: int | None = None
) -> None:
    """Tell ``logger`` where a recorded dataset is, whatever kind of logger it is.

    A logger with ``log_trajectory`` (trlrec's) is called; for another (TorchRL's),
    a JSON line is appended to ``trajectories.jsonl`` in :func:`experiment_dir_of`,
    or, with no such directory, the path is logged with :mod:`logging`.
    """
    method = getattr(logger, "log_trajectory", None)
    if callable(method):
        method(name, path, step=step)
        return
    p = Path(path).resolve()
    directory = experiment_dir_of(logger)
    if directory is None:
        _log.info("trajectory %r (step %s) recorded at %s", name, step, p)
        return
    _append_trajectory_record(directory, name, p, _as_step(step, f"trajectory {name!r}"))
