"""The ``Logger`` base class, and helpers that accept any logger (trlrec's or TorchRL's).

trlrec's loggers *are* TorchRL loggers: :class:`Logger` subclasses
``torchrl.record.loggers.Logger`` and implements its whole interface (``log_scalar``,
``log_video``, ``log_hparams``, ``log_histogram``, ``log_str``, ``log_metrics``,
``state_dict``/``load_state_dict``, the service API ``start``/``client``/``shutdown``
and ``service_backend="process"``/``"ray"``), so TorchRL's trainers, checkpoints,
logger services and recorders take them. trlrec code that receives a logger goes
through :func:`is_logger`, :func:`experiment_dir_of` and :func:`log_trajectory_to`,
which also accept TorchRL's loggers and their service clients.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import logging
import numbers
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torchrl.record.loggers.common import Logger as TorchRLLogger

from trlrec.closing import Closeable
from trlrec.errors import (
    ClosedError,
    ConfigError,
    LoggerWriteError,
    NotAStoreError,
    TrlrecError,
    UnsupportedDataError,
    UnsupportedOperationError,
)
from trlrec.loggers.mp4 import DEFAULT_FPS, _check_fps
from trlrec.loggers.video import Video
from trlrec.naming import safe_join, safe_name

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


def flat_metrics(metrics: Any, keys_sep: str = "/") -> dict[str, Any]:
    """A dict or ``TensorDict`` of metrics as a flat dict, nested keys joined by ``keys_sep``.

    Raises:
        UnsupportedDataError: for something that is neither.
    """
    flatten = getattr(metrics, "flatten_keys", None)
    if callable(flatten):
        metrics = flatten(keys_sep).to_dict()
    if not isinstance(metrics, Mapping):
        raise UnsupportedDataError(
            f"metrics must be a dict or TensorDict of numbers, got {type(metrics).__name__}"
        )
    return {str(k): v for k, v in metrics.items()}


def _histogram_values(data: Any, name: str) -> np.ndarray:
    """The values of a histogram as a flat float64 array."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().double().numpy()
    try:
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise UnsupportedDataError(
            f"histogram {name!r} takes a tensor, array or sequence of numbers, got "
            f"{type(data).__name__}"
        ) from None
    if values.size == 0:
        raise UnsupportedDataError(f"histogram {name!r} got no values; pass at least one")
    return values


@contextlib.contextmanager
def writing_to(logger: Any, what: str) -> Iterator[None]:
    """Turn an OS error raised while ``logger`` writes ``what`` into a :class:`LoggerWriteError`.

    For trlrec's loggers and any other TorchRL logger a recorder logs to: the error names
    the file (or the experiment's directory), says what was being logged, and keeps
    ``errno``; what was logged before stays where it is. trlrec errors pass unchanged.
    """
    try:
        yield
    except TrlrecError:
        raise
    except OSError as err:
        where = err.filename or getattr(logger, "experiment_dir", None)
        where = where or getattr(logger, "log_dir", None)
        raise LoggerWriteError(
            err.errno,
            f"{type(logger).__name__} could not write {what} to {str(where)!r}: "
            f"{err.strerror or err}; what was logged before is kept. Free space in (or pick "
            "another) log_dir and log again",
        ) from err


class _LoggerMeta(type(TorchRLLogger), abc.ABCMeta):  # type: ignore[misc]
    """TorchRL's service-backend metaclass, with ``abc`` checks of the backend hooks."""


class Logger(TorchRLLogger, Closeable, metaclass=_LoggerMeta):
    """Base of the trlrec experiment loggers: a ``torchrl.record.loggers.Logger``.

    Subclasses implement ``_create_experiment`` (TorchRL's hook), ``_log_scalar``,
    ``_log_video`` and ``_log_hparams`` (and may override ``_log_histogram``,
    ``_log_text``, ``_log_trajectory``, ``_flush`` and ``_close``); the public methods
    check their arguments, resolve default steps and refuse to work after :meth:`close`.

    When ``step`` is ``None`` a per-name counter is used: the first value of a name
    gets step 0, the next 1, and so on (an explicit step moves the counter past it).
    The counters are what :meth:`state_dict` saves, so a run restored through
    ``torchrl.checkpoint.Checkpoint`` continues its numbering.

    As every TorchRL logger, ``service_backend="process"`` (or ``"ray"``) in the
    constructor runs the logger in another process and returns TorchRL's service
    owner (``ProcessLogger``); ``client()`` gives what workers log through.

    Args:
        exp_name: the experiment's name.
        log_dir: where experiments go (backend specific).
        video_fps: frames per second of videos when ``log_video`` gets no ``fps``.

    Attributes:
        exp_name: as given.
        log_dir: as given.
        experiment: the backend object (TorchRL's attribute).
        experiment_dir: the directory this experiment writes files to, or ``None``.
        video_fps: default frames per second of videos.
    """

    experiment_dir: Path | None = None
    _VIDEO_OPTIONS: ClassVar[frozenset[str]] = frozenset()
    """``log_video`` keyword arguments (besides ``fps``) the backend uses."""
    _HISTOGRAM_OPTIONS: ClassVar[frozenset[str]] = frozenset()
    """``log_histogram`` keyword arguments (besides ``step`` and ``bins``) the backend uses."""
    _TEXT_OPTIONS: ClassVar[frozenset[str]] = frozenset()
    """``log_str`` keyword arguments the backend uses."""

    def __init__(
        self,
        exp_name: str,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        video_fps: float = DEFAULT_FPS,
    ) -> None:
        safe_name(exp_name)  # refuse NUL bytes, empty and dot-only names early
        _check_fps(video_fps)
        self.video_fps = video_fps
        self._counters: dict[str, dict[str, int]] = {}
        self._warned: set[tuple[str, str]] = set()
        super().__init__(exp_name=exp_name, log_dir=log_dir)  # calls _create_experiment

    # -- bookkeeping ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or :meth:`shutdown`) has been called."""
        return getattr(self, "_service_shutdown", False)

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise ClosedError(f"{what} on {self!r} after close(); create a new logger")

    def _step(self, kind: str, name: str, step: Any) -> int:
        """Resolve ``step``: ``None`` becomes the per-name counter (see :meth:`_advance`)."""
        value = _as_step(step, f"{kind} {name!r}")
        return self._counters.get(kind, {}).get(name, 0) if value is None else value

    def _advance(self, kind: str, name: str, step: int) -> None:
        """Move the per-name counter past ``step`` once the value has been logged."""
        counters = self._counters.setdefault(kind, {})
        counters[name] = max(counters.get(name, 0), step + 1)

    def _writing(self, what: str) -> contextlib.AbstractContextManager[None]:
        """OS errors of the backend's files, as :class:`LoggerWriteError` (:func:`writing_to`)."""
        return writing_to(self, what)

    def _options(self, method: str, kwargs: dict[str, Any], known: frozenset[str]) -> dict:
        """The keyword arguments the backend uses; the others are dropped with a log message."""
        for key in set(kwargs) - known:
            kwargs.pop(key)
            if (method, key) not in self._warned:
                self._warned.add((method, key))
                _log.info("%s.%s ignores the option %r", type(self).__name__, method, key)
        return kwargs

    # -- TorchRL's logging API -----------------------------------------------------------

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Log one scalar value.

        Args:
            name: the series name (``/`` groups series: folders in CSV, sections in
                TensorBoard and W&B).
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
        with self._writing(f"the scalar {name!r}"):
            self._log_scalar(name, v, at)
        self._advance("scalar", name, at)

    def log_video(self, name: str, video: Any, step: int | None = None, **kwargs: Any) -> None:
        """Log a video, streamed frame by frame to the backend's encoder.

        The video is read during the call and not kept: a memory-mapped tensor is
        streamed one frame at a time, never loaded whole.

        Args:
            name: the video's tag; it becomes part of a file name, made safe.
            video: uint8 (or float in [0, 1]) ``(T, C, H, W)`` or ``(N, T, C, H, W)``
                (tiled into a grid), a tensor, ``MemoryMappedTensor``, array, list or
                iterator of frames: see :class:`~trlrec.loggers.video.Video`.
            step: the step the video belongs to; ``None`` uses the per-name counter.
            **kwargs: ``fps`` (defaults to ``video_fps``) and the backend's options
                (CSV: ``options={"crf": ..., "preset": ...}``; W&B: ``format``,
                ``commit``); other keys are ignored with a log message.

        Raises:
            VideoError: for frames that cannot be made into a video; nothing is written.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_video")
        safe_name(name)
        fps = kwargs.pop("fps", None)
        fps = self.video_fps if fps is None else fps
        _check_fps(fps)
        options = self._options("log_video", kwargs, self._VIDEO_OPTIONS)
        v = Video.of(video)
        at = self._step("video", name, step)
        with self._writing(f"the video {name!r}"):
            self._log_video(name, v, at, float(fps), **options)
        self._advance("video", name, at)

    def log_hparams(self, cfg: Any) -> None:
        """Log the experiment's configuration (a dict, Mapping, dataclass, Namespace...).

        Raises:
            UnsupportedDataError: for a config that is not mapping-like.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_hparams")
        with self._writing("the hyperparameters"):
            self._log_hparams(plain_hparams(cfg))

    def log_histogram(self, name: str, data: Any, **kwargs: Any) -> None:
        """Log a histogram of ``data`` (TorchRL's ``log_histogram``).

        Args:
            name: the histogram's tag.
            data: a tensor, array or sequence of numbers.
            **kwargs: ``step`` (``None`` uses the per-name counter), ``bins`` (as
                TensorBoard's and numpy's, or a number of bins for W&B) and the
                backend's options.

        Raises:
            UnsupportedOperationError: for a backend without histograms (CSV), as TorchRL.
            UnsupportedDataError: for data that is not numbers.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_histogram")
        safe_name(name)
        step = kwargs.pop("step", None)
        bins = kwargs.pop("bins", None)
        options = self._options("log_histogram", kwargs, self._HISTOGRAM_OPTIONS)
        values = _histogram_values(data, name)
        at = self._step("histogram", name, step)
        with self._writing(f"the histogram {name!r}"):
            self._log_histogram(name, values, at, bins, **options)
        self._advance("histogram", name, at)

    def log_str(self, name: str, value: str, step: int | None = None, **kwargs: Any) -> None:
        """Log a text (TorchRL's ``log_str``); ``kwargs`` are the backend's options.

        Raises:
            UnsupportedDataError: for a value that is not a str.
            ClosedError: after :meth:`close`.
        """
        self._check_open("log_str")
        safe_name(name)
        if not isinstance(value, str):
            raise UnsupportedDataError(
                f"log_str {name!r} takes a str, got {type(value).__name__}; use str(value)"
            )
        options = self._options("log_str", kwargs, self._TEXT_OPTIONS)
        at = self._step("text", name, step)
        with self._writing(f"the text {name!r}"):
            self._log_text(name, value, at, **options)
        self._advance("text", name, at)

    def log_metrics(
        self, metrics: Mapping[str, Any], step: int | None = None, *, keys_sep: str = "/"
    ) -> dict[str, float]:
        """Log several scalars at one step (TorchRL's ``Logger.log_metrics``).

        A ``TensorDict`` is flattened with ``keys_sep`` between nested keys.

        Returns:
            The logged values as floats.
        """
        self._check_open("log_metrics")
        out = {k: _as_float(v, k) for k, v in flat_metrics(metrics, keys_sep).items()}
        for name, value in out.items():
            self.log_scalar(name, value, step=step)
        return out

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
        with self._writing(f"the trajectory {name!r}"):
            self._log_trajectory(name, p, at)
        self._advance("trajectory", name, at)

    # -- lifecycle (TorchRL's direct-backend service API) --------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Push buffered data to disk; a no-op once closed (``timeout`` is TorchRL's, unused)."""
        del timeout
        if not self.closed:
            with self._writing("buffered data (flush)"):
                self._flush()

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and release the backend; later calls raise :class:`ClosedError`. Idempotent."""
        del timeout
        if self.closed:
            return
        self._service_shutdown = True
        with self._writing("buffered data (close)"):
            self._close()

    def close(self, timeout: float | None = None) -> None:
        """Alias of :meth:`shutdown` (TorchRL's)."""
        self.shutdown(timeout)

    def _checkpoint_state(self) -> dict[str, Any]:
        """The default-step counters: ``{kind: {name: next step}}`` (for ``state_dict``)."""
        return {"counters": {kind: dict(c) for kind, c in self._counters.items()}}

    def _load_checkpoint_state(self, state_dict: Mapping[str, Any]) -> None:
        counters = state_dict.get("counters", {})
        ok = isinstance(counters, Mapping) and all(
            isinstance(c, Mapping)
            and all(isinstance(k, str) and isinstance(n, int) for k, n in c.items())
            for c in counters.values()
        )
        if not ok:
            raise ConfigError(
                f"{type(self).__name__}.load_state_dict: 'local' -> 'counters' must map a kind "
                f"to {{name: int}}, got {counters!r}; pass what state_dict() returned"
            )
        self._counters = {str(kind): dict(c) for kind, c in counters.items()}

    def __repr__(self) -> str:
        where = self.experiment_dir
        return f"{type(self).__name__}(exp_name={self.exp_name!r}, experiment_dir={where})"

    # -- backend hooks -------------------------------------------------------------------

    @abc.abstractmethod
    def _create_experiment(self) -> Any:
        """Create the backend object (TorchRL's hook, called by ``__init__``)."""

    @abc.abstractmethod
    def _log_scalar(self, name: str, value: float, step: int) -> None: ...

    @abc.abstractmethod
    def _log_video(
        self, name: str, video: Video, step: int, fps: float, **options: Any
    ) -> None: ...

    @abc.abstractmethod
    def _log_hparams(self, cfg: dict[str, Any]) -> None: ...

    def _log_histogram(
        self, name: str, values: np.ndarray, step: int, bins: Any, **options: Any
    ) -> None:
        raise UnsupportedOperationError(
            f"{type(self).__name__} cannot log histograms (got {name!r}); use a "
            "TensorBoardLogger or WandbLogger for them"
        )

    @abc.abstractmethod
    def _log_text(self, name: str, text: str, step: int, **options: Any) -> None: ...

    def _log_trajectory(self, name: str, path: Path, step: int) -> None:
        """Default: append a JSON line to ``<experiment_dir>/trajectories.jsonl``."""
        if self.experiment_dir is None:
            _log.info("trajectory %r (step %d) recorded at %s", name, step, path)
            return
        _append_trajectory_record(self.experiment_dir, name, path, step)

    def _flush(self) -> None:
        """Push buffered data out (a no-op where every call is already written)."""

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

    Understands trlrec loggers (``experiment_dir``), TorchRL's CSV, TensorBoard and W&B
    loggers (``logger.experiment.log_dir`` or the W&B run directory), and TorchRL's
    logger service clients (``ProcessLogger.client()``, Ray's), which have no
    experiment here: ``<log_dir>/<exp_name>`` of the logger they talk to.
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
    log_dir, exp_name = getattr(logger, "log_dir", None), getattr(logger, "exp_name", None)
    if isinstance(log_dir, str | os.PathLike) and isinstance(exp_name, str):
        return safe_join(log_dir, exp_name)
    return None


def log_trajectory_to(
    logger: Any, name: str, path: str | os.PathLike[str], step: int | None = None
) -> None:
    """Tell ``logger`` where a recorded dataset is, whatever kind of logger it is.

    A logger with ``log_trajectory`` (trlrec's) is called; for another (TorchRL's),
    a JSON line is appended to ``trajectories.jsonl`` in :func:`experiment_dir_of`,
    or, with no such directory, the path is logged with :mod:`logging`.
    """
    # looked up on the class: a TorchRL service client answers every ``log_*`` name
    if callable(getattr(type(logger), "log_trajectory", None)):
        logger.log_trajectory(name, path, step=step)
        return
    p = Path(path).resolve()
    directory = experiment_dir_of(logger)
    if directory is None:
        _log.info("trajectory %r (step %s) recorded at %s", name, step, p)
        return
    _append_trajectory_record(directory, name, p, _as_step(step, f"trajectory {name!r}"))
