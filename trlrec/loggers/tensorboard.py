"""``TensorBoardLogger``: real TensorBoard event files, with videos TensorBoard displays.

Videos are written as TensorBoard does with moviepy, but without it: an animated GIF
(streamed through ffmpeg, one palette per frame) inside an image summary, which the
"Images" dashboard plays. tensorboard is an optional dependency
(``pip install 'trlrec[tensorboard]'``), imported only when a logger is created.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from trlrec.errors import MissingDependencyError
from trlrec.loggers.base import Logger, flat_hparams
from trlrec.loggers.mp4 import DEFAULT_FPS, FfmpegWriter
from trlrec.loggers.video import Video
from trlrec.naming import safe_join

__all__ = ["TensorBoardLogger", "TensorboardLogger", "GifWriter"]

_INSTALL = "pip install 'trlrec[tensorboard]'"


class GifWriter(FfmpegWriter):
    """Stream frames into an animated, looping GIF (a palette computed per frame).

    Args:
        path: the final file name.
        width: frame width in pixels (any size; no padding).
        height: frame height in pixels.
        fps: frames per second (GIF stores delays in 1/100 s).
    """

    container = "gif"

    def __init__(
        self, path: str | os.PathLike[str], width: int, height: int, fps: float = DEFAULT_FPS
    ) -> None:
        graph = (
            "split[a][b];[a]palettegen=stats_mode=single:reserve_transparent=0[p];"
            "[b][p]paletteuse=new=1"
        )
        # gifflags 0: ffmpeg's inter-frame transparency breaks when the palette changes
        args = ["-vf", graph, "-gifflags", "0", "-loop", "0"]
        super().__init__(path, width, height, fps, output_args=args)


def _import_tensorboard() -> Any:
    try:
        from torch.utils import tensorboard
    except ImportError as err:
        raise MissingDependencyError(
            f"TensorBoardLogger needs tensorboard, which could not be imported ({err}); {_INSTALL}"
        ) from err
    return tensorboard


class TensorBoardLogger(Logger):
    """Log scalars, videos, histograms, texts, hparams and trajectory paths to TensorBoard.

    The constructor is ``torchrl.record.loggers.TensorboardLogger``'s (also importable
    here under that name); videos need no moviepy.

    Args:
        exp_name: the experiment's name: the run directory under ``log_dir``.
        log_dir: the TensorBoard log directory; defaults to ``tb_logs``, as TorchRL.
        video_fps: frames per second of videos when ``log_video`` gets no ``fps``.

    Attributes:
        experiment: the ``torch.utils.tensorboard.SummaryWriter``.
        log_dir: as given (TorchRL's logger rewrites it to the run directory, which is
            ``experiment_dir`` here).

    Raises:
        MissingDependencyError: when tensorboard is not installed.
    """

    def __init__(
        self,
        exp_name: str,
        log_dir: str | os.PathLike[str] = "tb_logs",
        *,
        video_fps: float = DEFAULT_FPS,
    ) -> None:
        self._tensorboard = _import_tensorboard()
        self.experiment_dir = safe_join(log_dir, exp_name)
        super().__init__(exp_name, log_dir, video_fps=video_fps)

    def _create_experiment(self) -> Any:
        return self._tensorboard.SummaryWriter(log_dir=str(self.experiment_dir))

    def _add_summary(self, summary: Any, step: int) -> None:
        self.experiment._get_file_writer().add_summary(summary, step, time.time())

    def _log_scalar(self, name: str, value: float, step: int) -> None:
        self.experiment.add_scalar(name, value, global_step=step)

    def _log_video(self, name: str, video: Video, step: int, fps: float) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        with tempfile.TemporaryDirectory(prefix="trlrec-gif-") as tmp:
            path = Path(tmp) / "video.gif"
            with GifWriter(path, video.width, video.height, fps) as writer:
                writer.write_video(video)
            data = path.read_bytes()
        image = Summary.Image(
            height=video.height, width=video.width, colorspace=3, encoded_image_string=data
        )
        self._add_summary(Summary(value=[Summary.Value(tag=name, image=image)]), step)

    def _log_histogram(self, name: str, values: Any, step: int, bins: Any) -> None:
        bins = "tensorflow" if bins is None else bins
        self.experiment.add_histogram(name, values, global_step=step, bins=bins)

    def _log_text(self, name: str, text: str, step: int, **options: Any) -> None:
        self.experiment.add_text(name, text, global_step=step)

    def _log_hparams(self, cfg: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        flat = flat_hparams(cfg)
        for summary in hparams(flat, {}):
            self._add_summary(summary, 0)
        text = json.dumps(cfg, indent=2, default=str)
        self.experiment.add_text("hparams", f"```\n{text}\n```", global_step=0)

    def _log_trajectory(self, name: str, path: Path, step: int) -> None:
        self.experiment.add_text(f"trajectories/{name}", str(path), global_step=step)
        super()._log_trajectory(name, path, step)

    def _flush(self) -> None:
        self.experiment.flush()

    def _close(self) -> None:
        self.experiment.close()


TensorboardLogger = TensorBoardLogger
"""TorchRL's spelling, so that switching from ``torchrl.record.loggers`` is an import change."""
