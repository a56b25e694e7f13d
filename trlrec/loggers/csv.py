"""``CSVLogger``: scalars in CSV files and videos as mp4 files, under one experiment directory.

Layout of ``<log_dir>/<exp_name>/`` (names made safe with :func:`trlrec.naming.safe_name`):

- ``scalars/<name>.csv``: a ``step,value`` header, then one ``step,value`` line per call;
- ``videos/<name>_<step>.mp4``: one H.264 file per ``log_video`` call (TorchRL's naming);
- ``hparams.json``: the configuration, merged over successive ``log_hparams`` calls;
- ``trajectories.jsonl``: one JSON line per ``log_trajectory`` call (name, step, path).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trlrec.errors import StoreWriteError, VideoError
from trlrec.loggers.base import Logger
from trlrec.loggers.mp4 import DEFAULT_FPS, encode_mp4
from trlrec.loggers.video import Video
from trlrec.naming import safe_join

__all__ = ["CSVLogger"]


class CSVLogger(Logger):
    """A dependency-free logger writing CSV, mp4 and JSON files.

    The constructor has the shape of ``torchrl.record.loggers.CSVLogger``, so switching is
    an import change; videos are always mp4 (TorchRL's ``video_format`` is accepted for
    compatibility, but only ``"mp4"``).

    Args:
        exp_name: the experiment's name: the directory under ``log_dir``.
        log_dir: where experiments go; defaults to ``csv_logs`` (relative to the
            working directory), as TorchRL.
        video_format: only ``"mp4"``.
        video_fps: frames per second of videos when ``log_video`` gets no ``fps``.
        preset: libx264 preset of the videos.
        crf: libx264 quality (lower is better).

    Examples:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d, CSVLogger("demo", log_dir=d) as logger:
        ...     logger.log_scalar("reward", 1.5)
        ...     logger.log_video("episode", torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
        ...     sorted(p.name for p in logger.experiment_dir.rglob("*.*"))
        ['episode_0.mp4', 'reward.csv']
    """

    def __init__(
        self,
        exp_name: str,
        log_dir: str | os.PathLike[str] | None = None,
        video_format: str = "mp4",
        video_fps: float = DEFAULT_FPS,
        *,
        preset: str = "ultrafast",
        crf: int = 18,
    ) -> None:
        if video_format != "mp4":
            raise VideoError(
                f"CSVLogger writes videos as mp4 only, got video_format={video_format!r}; "
                "drop the argument"
            )
        super().__init__(exp_name, log_dir, video_fps=video_fps)
        self.video_format = video_format
        self.preset = preset
        self.crf = crf
        root = Path("csv_logs" if log_dir is None else log_dir)
        self.experiment_dir = safe_join(root, exp_name)
        self.scalars_dir = self.experiment_dir / "scalars"
        self.videos_dir = self.experiment_dir / "videos"
        self._hparams: dict[str, Any] = {}
        try:
            self.scalars_dir.mkdir(parents=True, exist_ok=True)
            self.videos_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreWriteError(
                f"cannot create the experiment directory {self.experiment_dir}: {err}"
            ) from err

    def _log_scalar(self, name: str, value: float, step: int) -> None:
        path = safe_join(self.scalars_dir, name, ".csv")
        new = not path.exists()
        with open(path, "a", encoding="utf-8") as fh:
            if new:
                fh.write("step,value\n")
            fh.write(f"{step},{value!r}\n")

    def video_path(self, name: str, step: int) -> Path:
        """Where the video ``name`` at ``step`` is written: ``videos/<name>_<step>.mp4``."""
        return safe_join(self.videos_dir, f"{name}_{step}", ".mp4")

    def _log_video(self, name: str, video: Video, step: int, fps: float) -> None:
        encode_mp4(video, self.video_path(name, step), fps, preset=self.preset, crf=self.crf)

    def _log_hparams(self, cfg: dict[str, Any]) -> None:
        self._hparams.update(cfg)
        path = self.experiment_dir / "hparams.json"
        tmp = path.with_name(".hparams.json.part")
        tmp.write_text(json.dumps(self._hparams, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, path)
