"""``CSVLogger``: scalars in CSV files, videos and texts, in TorchRL's layout.

Layout of ``<log_dir>/<exp_name>/`` (TorchRL's; each ``/`` of a name is a folder, each
part made safe with :func:`trlrec.naming.safe_name`):

- ``scalars/<name>.csv``: one ``step,value`` line per call, no header (as TorchRL);
- ``videos/<name>_<step>.<mp4|pt|memmap>``: one file per ``log_video`` call. ``mp4``
  (the default) is H.264, encoded without torchcodec; ``pt`` is the tensor as given,
  saved with ``torch.save`` (it loads with ``torch.load(path, weights_only=True)``);
  ``memmap`` is its raw bytes, with a ``.memmap.json`` sidecar giving shape and dtype;
- ``texts/<name><step>.txt``: ``log_str`` texts, and ``texts/hparams<n>.txt`` for the
  ``n``-th ``log_hparams`` call (``key: value`` lines, sorted, as TorchRL);
- ``hparams.json``: the configuration as JSON, merged over ``log_hparams`` calls (trlrec);
- ``trajectories.jsonl``: one JSON line per ``log_trajectory`` call (name, step, path).

Every file appears whole: it is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trlrec.errors import StoreWriteError, VideoError
from trlrec.loggers.base import Logger
from trlrec.loggers.mp4 import DEFAULT_FPS, encode_mp4
from trlrec.loggers.video import Video
from trlrec.naming import safe_join, safe_path

__all__ = ["CSVLogger", "CSVExperiment"]

VIDEO_FORMATS = ("mp4", "pt", "memmap")
"""The ``video_format`` values: trlrec's default first, then TorchRL's other two."""


class CSVExperiment:
    """What ``CSVLogger.experiment`` is: the experiment directory, as TorchRL's.

    Attributes:
        log_dir: the experiment directory (a str, as TorchRL's ``CSVExperiment``).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = str(log_dir)

    def __repr__(self) -> str:
        return f"CSVExperiment(log_dir={self.log_dir})"


def _write_file(path: Path, data: bytes, *, append: bool = False) -> None:
    """Append ``data`` to ``path``, or replace ``path`` by it (through a temporary file).

    An OS error names the file (a failed ``write`` alone would not), so the logger's
    error says which file the disk refused.
    """
    target = path if append else path.with_name(f".{path.name}.part")
    try:
        with open(target, "ab" if append else "wb") as fh:
            fh.write(data)
        if not append:
            os.replace(target, path)
    except OSError as err:
        if not append:
            target.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err


def _as_tensor(video: Video) -> torch.Tensor:
    """The video as given, as one plain CPU tensor (frames of a list or iterator stacked)."""
    src = video.source
    if isinstance(src, torch.Tensor):
        t = src.detach().cpu()
        if type(t) is not torch.Tensor:  # a MemoryMappedTensor: weights_only loads plain ones
            t = t.as_subclass(torch.Tensor)
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view of a larger tensor: save only the video
        return t
    if isinstance(src, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(src))
    frames = [f if isinstance(f, torch.Tensor) else torch.from_numpy(np.asarray(f)) for f in src]
    return torch.stack(frames)


class CSVLogger(Logger):
    """A dependency-free logger writing CSV, video, text and JSON files, in TorchRL's layout.

    The constructor is ``torchrl.record.loggers.CSVLogger``'s, so switching is an import
    change. The difference: ``video_format`` defaults to ``"mp4"`` (TorchRL: ``"pt"``),
    and mp4 needs no torchcodec.

    Args:
        exp_name: the experiment's name: the directory under ``log_dir``.
        log_dir: where experiments go; defaults to ``csv_logs`` (relative to the
            working directory), as TorchRL.
        video_format: ``"mp4"`` (H.264), ``"pt"`` (``torch.save`` of the tensor as
            given) or ``"memmap"`` (its raw bytes).
        video_fps: frames per second of mp4 videos when ``log_video`` gets no ``fps``.
        preset: libx264 preset of the videos (``log_video(..., options={"preset": ...})``
            overrides it for one video, as TorchRL's).
        crf: libx264 quality (lower is better; ``options={"crf": ...}`` per video).

    Examples:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d, CSVLogger("demo", log_dir=d) as logger:
        ...     logger.log_scalar("eval/reward", 1.5)
        ...     logger.log_video("episode", torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
        ...     sorted(p.relative_to(logger.experiment_dir).as_posix()
        ...            for p in logger.experiment_dir.rglob("*.*"))
        ['scalars/eval/reward.csv', 'videos/episode_0.mp4']
    """

    experiment_dir: Path  # set before the base __init__ creates the experiment
    _VIDEO_OPTIONS = frozenset({"options"})

    def __init__(
        self,
        exp_name: str,
        log_dir: str | os.PathLike[str] | None = None,
        video_format: Literal["mp4", "pt", "memmap"] = "mp4",
        video_fps: float = DEFAULT_FPS,
        *,
        preset: str = "ultrafast",
        crf: int = 18,
    ) -> None:
        if video_format not in VIDEO_FORMATS:
            raise VideoError(
                f"video_format must be one of {VIDEO_FORMATS}, got {video_format!r}; "
                "mp4 is the one players open"
            )
        self.video_format = video_format
        self.preset = preset
        self.crf = crf
        root = Path("csv_logs" if log_dir is None else log_dir)
        self.experiment_dir = safe_join(root, exp_name)
        self.scalars_dir = self.experiment_dir / "scalars"
        self.videos_dir = self.experiment_dir / "videos"
        self.texts_dir = self.experiment_dir / "texts"
        self._hparams: dict[str, Any] = {}
        super().__init__(exp_name, "csv_logs" if log_dir is None else log_dir, video_fps=video_fps)

    def _create_experiment(self) -> CSVExperiment:
        try:
            for directory in (self.scalars_dir, self.videos_dir, self.texts_dir):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreWriteError(
                f"cannot create the experiment directory {self.experiment_dir}: {err}"
            ) from err
        return CSVExperiment(self.experiment_dir)

    # -- paths ---------------------------------------------------------------------------

    def scalar_path(self, name: str) -> Path:
        """Where the scalar ``name`` goes: ``scalars/<name>.csv`` (``/`` as folders)."""
        return safe_path(self.scalars_dir, name, ".csv")

    def video_path(self, name: str, step: int, video_format: str | None = None) -> Path:
        """Where the video ``name`` at ``step`` goes: ``videos/<name>_<step>.<format>``."""
        suffix = f".{video_format or self.video_format}"
        return safe_path(self.videos_dir, f"{name}_{step}", suffix)

    def text_path(self, name: str, step: int) -> Path:
        """Where the text ``name`` at ``step`` goes: ``texts/<name><step>.txt`` (TorchRL's)."""
        return safe_path(self.texts_dir, f"{name}{step}", ".txt")

    # -- backend hooks -------------------------------------------------------------------

    def _log_scalar(self, name: str, value: float, step: int) -> None:
        path = self.scalar_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(path, f"{step},{value!r}\n".encode(), append=True)

    def _log_video(self, name: str, video: Video, step: int, fps: float, **options: Any) -> None:
        path = self.video_path(name, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.video_format == "mp4":
            encoder = dict(options.get("options") or {})
            preset = encoder.pop("preset", self.preset)
            crf = encoder.pop("crf", self.crf)
            self._options("log_video(options=...)", encoder, frozenset())
            encode_mp4(video, path, fps, preset=preset, crf=int(float(crf)))
            return
        tensor = _as_tensor(video)
        tmp = path.with_name(f".{path.name}.part")
        if self.video_format == "pt":
            torch.save(tensor, tmp)
            os.replace(tmp, path)
            return
        meta = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        _write_file(path, tensor.contiguous().numpy().tobytes())
        _write_file(path.with_name(path.name + ".json"), json.dumps(meta).encode())

    def _log_text(self, name: str, text: str, step: int, **options: Any) -> None:
        path = self.text_path(name, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(path, text.encode())

    def _log_hparams(self, cfg: dict[str, Any]) -> None:
        text = "\n".join(f"{k}: {v}" for k, v in sorted(cfg.items()))
        at = self._step("text", "hparams", None)  # texts/hparams<n>.txt, as TorchRL
        self._log_text("hparams", text, at)
        self._advance("text", "hparams", at)
        self._hparams.update(cfg)
        text = json.dumps(self._hparams, indent=2, default=str)
        _write_file(self.experiment_dir / "hparams.json", text.encode())
