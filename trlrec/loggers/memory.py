"""``MemoryLogger``: keeps everything logged in Python objects, for tests and notebooks."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from trlrec.loggers.base import Logger
from trlrec.loggers.mp4 import DEFAULT_FPS
from trlrec.loggers.video import Video
from trlrec.naming import safe_join

__all__ = ["MemoryLogger", "LoggedVideo"]


class LoggedVideo(NamedTuple):
    """A video kept by :class:`MemoryLogger`."""

    step: int
    frames: torch.Tensor
    """RGB uint8 ``(T, 3, H, W)``, the ``N`` videos of a 5-D input tiled into a grid."""
    fps: float


class MemoryLogger(Logger):
    """A logger that keeps scalars, videos, hparams and trajectory paths in memory.

    Videos are decoded into tensors, so this is for small videos (tests, notebooks).

    Args:
        exp_name: the experiment's name.
        log_dir: if given, ``experiment_dir`` is ``<log_dir>/<exp_name>`` (where a
            recorder given this logger and no path puts its data); otherwise ``None``.
        video_fps: frames per second recorded with videos that get no ``fps``.

    Attributes:
        scalars: ``name -> [(step, value), ...]``.
        videos: ``name -> [LoggedVideo, ...]``.
        histograms: ``name -> [(step, values), ...]``, ``values`` a float64 array.
        texts: ``name -> [(step, text), ...]``.
        hparams: the merged configuration.
        trajectories: ``name -> [(step, path), ...]``.

    Examples:
        >>> logger = MemoryLogger()
        >>> logger.log_scalar("reward", 1.0)
        >>> logger.log_scalar("reward", 2.0)
        >>> logger.scalars["reward"]
        [(0, 1.0), (1, 2.0)]
    """

    def __init__(
        self,
        exp_name: str = "memory",
        log_dir: str | os.PathLike[str] | None = None,
        *,
        video_fps: float = DEFAULT_FPS,
    ) -> None:
        if log_dir is not None:
            self.experiment_dir = safe_join(log_dir, exp_name)
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.videos: dict[str, list[LoggedVideo]] = defaultdict(list)
        self.histograms: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
        self.texts: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.hparams: dict[str, Any] = {}
        self.trajectories: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        super().__init__(exp_name, log_dir, video_fps=video_fps)

    def _create_experiment(self) -> None:
        return None

    def _log_scalar(self, name: str, value: float, step: int) -> None:
        self.scalars[name].append((step, value))

    def _log_video(self, name: str, video: Video, step: int, fps: float) -> None:
        self.videos[name].append(LoggedVideo(step, video.to_tensor(), fps))

    def _log_histogram(self, name: str, values: np.ndarray, step: int, bins: Any) -> None:
        self.histograms[name].append((step, values))

    def _log_text(self, name: str, text: str, step: int, **options: Any) -> None:
        self.texts[name].append((step, text))

    def _log_hparams(self, cfg: dict[str, Any]) -> None:
        self.hparams.update(cfg)

    def _log_trajectory(self, name: str, path: Path, step: int) -> None:
        self.trajectories[name].append((step, path))
