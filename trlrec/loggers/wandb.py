"""``WandbLogger``: Weights & Biases runs, online or offline, with mp4 videos and dataset artifacts.

wandb is an optional dependency (``pip install 'trlrec[wandb]'``), imported only when a
logger is created. Videos are encoded by trlrec (no moviepy) into
``<run dir>/trlrec/videos/<name>_<step>.mp4`` and logged as ``wandb.Video`` from that
file; recorded datasets are logged as ``wandb.Artifact`` of type ``"dataset"``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from trlrec.errors import MissingDependencyError, UnsupportedDataError
from trlrec.loggers.base import Logger
from trlrec.loggers.mp4 import DEFAULT_FPS, encode_mp4
from trlrec.loggers.video import Video
from trlrec.naming import safe_join, safe_name

__all__ = ["WandbLogger"]

_INSTALL = "pip install 'trlrec[wandb]'"
_STEP = "step"


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise MissingDependencyError(
            f"WandbLogger needs wandb, which could not be imported ({err}); {_INSTALL}"
        ) from err
    return wandb


class WandbLogger(Logger):
    """Log scalars, videos, hparams and datasets to a W&B run.

    The constructor has the shape of ``torchrl.record.loggers.WandbLogger``. Unlike
    TorchRL's, ``offline=True`` is passed to ``wandb.init(mode="offline")`` and does
    not change ``WANDB_MODE`` for the whole process; ``WANDB_MODE=offline`` works too.

    Every value is logged with a ``"step"`` key that W&B uses as its x axis
    (``define_metric``), so steps need not increase across names.

    Args:
        exp_name: the run's name.
        offline: keep everything local (``wandb sync`` uploads it later).
        save_dir: the directory holding ``wandb/`` (``wandb.init(dir=...)``);
            TorchRL's ``log_dir`` keyword is accepted as an alias.
        id: the run id, to resume a run.
        project: the W&B project.
        video_fps: frames per second of videos when ``log_video`` gets no ``fps``.
        trajectories: ``"reference"`` logs a dataset as a ``file://`` reference (no copy,
            nothing uploaded); ``"upload"`` adds the directory's files to the artifact.
        **kwargs: passed to ``wandb.init``.

    Attributes:
        experiment: the ``wandb.Run``.
        experiment_dir: ``<run dir>/trlrec``, beside the run's ``files/`` (which W&B
            uploads); videos are encoded there.

    Raises:
        MissingDependencyError: when wandb is not installed.
    """

    def __init__(
        self,
        exp_name: str,
        offline: bool = False,
        save_dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        project: str | None = None,
        *,
        video_fps: float = DEFAULT_FPS,
        trajectories: Literal["reference", "upload"] = "reference",
        **kwargs: Any,
    ) -> None:
        wandb = _import_wandb()
        log_dir = kwargs.pop("log_dir", None)
        if save_dir is not None and log_dir is not None:
            raise UnsupportedDataError(
                "WandbLogger got both save_dir and log_dir, which mean the same; pass one"
            )
        save_dir = save_dir if save_dir is not None else log_dir
        if trajectories not in ("reference", "upload"):
            raise UnsupportedDataError(
                f"trajectories must be 'reference' or 'upload', got {trajectories!r}"
            )
        super().__init__(exp_name, save_dir, video_fps=video_fps)
        self.offline = offline
        self.save_dir = None if save_dir is None else Path(save_dir).expanduser()
        self.trajectories = trajectories
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs: dict[str, Any] = {"name": exp_name, "id": id, "project": project}
        if self.save_dir is not None:
            init_kwargs["dir"] = str(self.save_dir)
        if offline:
            init_kwargs["mode"] = "offline"
        init_kwargs.update(kwargs)
        self._wandb = wandb
        self.experiment = wandb.init(**init_kwargs)
        self.experiment_dir = Path(self.experiment.dir).parent / "trlrec"
        self._defined: set[str] = set()

    def _log(self, name: str, value: Any, step: int) -> None:
        if not self._defined:
            self.experiment.define_metric(_STEP)
        if name not in self._defined:
            self._defined.add(name)
            if name != _STEP:
                self.experiment.define_metric(name, step_metric=_STEP)
        self.experiment.log({name: value, _STEP: step})

    def _log_scalar(self, name: str, value: float, step: int) -> None:
        self._log(name, value, step)

    def _log_video(self, name: str, video: Video, step: int, fps: float) -> None:
        path = safe_join(self.experiment_dir / "videos", f"{name}_{step}", ".mp4")
        encode_mp4(video, path, fps)
        self._log(name, self._wandb.Video(str(path), format="mp4"), step)

    def _log_hparams(self, cfg: dict[str, Any]) -> None:
        self.experiment.config.update(cfg, allow_val_change=True)

    def _log_trajectory(self, name: str, path: Path, step: int) -> None:
        artifact_name = re.sub(r"[^A-Za-z0-9_.-]", "_", safe_name(name))
        artifact = self._wandb.Artifact(
            artifact_name, type="dataset", metadata={"path": str(path), "step": step}
        )
        if self.trajectories == "upload":
            artifact.add_dir(str(path), policy="immutable")
        else:
            artifact.add_reference(path.as_uri(), checksum=False)
        self.experiment.log_artifact(artifact, aliases=["latest", f"step-{step}"])
        super()._log_trajectory(name, path, step)

    def _close(self) -> None:
        self.experiment.finish()
