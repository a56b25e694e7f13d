"""``WandbLogger``: Weights & Biases runs, online or offline, with mp4 videos and dataset artifacts.

wandb is an optional dependency (``pip install 'trlrec[wandb]'``), imported only when a
logger is created. Values are logged with TorchRL 0.14's per-group step axes: a value
named ``<group>/<name>`` is logged with a ``<group>/step`` key that W&B uses as its x
axis (``step`` for names without a group). Videos are encoded by trlrec (no moviepy)
into ``<run dir>/trlrec/videos/<name>_<step>.<mp4|gif>`` and logged as ``wandb.Video``
from that file; recorded datasets are logged as ``wandb.Artifact`` of type
``"dataset"``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from trlrec.errors import ConfigError, MissingDependencyError, UnsupportedDataError, VideoError
from trlrec.loggers.base import Logger, _as_float, _as_step, flat_metrics
from trlrec.loggers.mp4 import DEFAULT_FPS, encode_mp4
from trlrec.loggers.tensorboard import GifWriter
from trlrec.loggers.video import Video
from trlrec.naming import safe_name, safe_path

__all__ = ["WandbLogger", "is_step_key", "step_key"]

_INSTALL = "pip install 'trlrec[wandb]'"
_STEP = "step"
_FORMATS = ("mp4", "gif")


def is_step_key(name: str) -> bool:
    """Whether ``name`` is a step axis (``step`` or ``<group>/step``), as in TorchRL."""
    return name == _STEP or name.endswith(f"/{_STEP}")


def step_key(name: str) -> str:
    """The step axis of the value ``name``: ``<group>/step``, or ``step`` without a group.

    Examples:
        >>> step_key("train/reward"), step_key("loss")
        ('train/step', 'step')
    """
    group, sep, _ = name.rpartition("/")
    return f"{group}{sep}{_STEP}"


def _commit(commit: bool | None) -> dict[str, bool]:
    """``wandb.Run.log``'s ``commit=``, only when the caller gave one (as TorchRL)."""
    return {} if commit is None else {"commit": commit}


def _collect_env_metadata() -> dict[str, Any]:
    """Python and package versions, as TorchRL's ``WandbLogger`` logs them under ``env``."""
    from torchrl.record.loggers.wandb import _collect_env_metadata as collect

    return collect()


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise MissingDependencyError(
            f"WandbLogger needs wandb, which could not be imported ({err}); {_INSTALL}"
        ) from err
    return wandb


class WandbLogger(Logger):
    """Log scalars, videos, histograms, texts, hparams and datasets to a W&B run.

    The constructor is ``torchrl.record.loggers.WandbLogger``'s (``base_url``,
    ``log_env_packages``, ``log_dir`` as an alias of ``save_dir``, ``resume="allow"``
    by default), and so are ``log_scalar(..., commit=False)`` and
    ``log_metrics(..., override_global_step=True)``. Unlike TorchRL's,
    ``offline=True`` is passed to ``wandb.init(mode="offline")`` and does not change
    ``WANDB_MODE`` for the whole process; ``WANDB_MODE=offline`` works too. Videos
    need no moviepy.

    Args:
        exp_name: the run's name.
        offline: keep everything local (``wandb sync`` uploads it later).
        save_dir: the directory holding ``wandb/`` (``wandb.init(dir=...)``);
            TorchRL's ``log_dir`` keyword is accepted as an alias.
        id: the run id, to resume a run.
        project: the W&B project.
        base_url: the W&B server (``wandb.Settings(base_url=...)``).
        video_fps: frames per second of videos when ``log_video`` gets no ``fps``.
        log_env_packages: log the Python runtime and package versions under the run
            config's ``env`` key, as TorchRL.
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

    _VIDEO_OPTIONS = frozenset({"format", "commit", "override_global_step"})
    _HISTOGRAM_OPTIONS = frozenset({"commit", "override_global_step"})
    _TEXT_OPTIONS = frozenset({"as_value", "override_global_step"})

    def __init__(
        self,
        exp_name: str,
        offline: bool = False,
        save_dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        project: str | None = None,
        base_url: str | None = None,
        *,
        video_fps: float = DEFAULT_FPS,
        log_env_packages: bool = True,
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
        self.offline = offline
        self.save_dir = None if save_dir is None else Path(save_dir).expanduser()
        self.id = id
        self.project = project
        self.base_url = base_url
        self.log_env_packages = log_env_packages
        self.trajectories = trajectories
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs: dict[str, Any] = {
            "name": exp_name,
            "id": id,
            "project": project,
            "resume": "allow",
        }
        if self.save_dir is not None:
            init_kwargs["dir"] = str(self.save_dir)
        if offline:
            init_kwargs["mode"] = "offline"
        if base_url is not None:
            init_kwargs["settings"] = wandb.Settings(base_url=base_url)
        init_kwargs.update(kwargs)
        self._wandb = wandb
        self._init_kwargs = init_kwargs
        self._defined: set[str] = set()
        super().__init__(exp_name, save_dir, video_fps=video_fps)
        self.experiment_dir = Path(self.experiment.dir).parent / "trlrec"
        if log_env_packages:
            self.experiment.config.update({"env": _collect_env_metadata()}, allow_val_change=True)

    def _create_experiment(self) -> Any:
        return self._wandb.init(**self._init_kwargs)

    # -- W&B's variants of TorchRL's methods ---------------------------------------------

    def log_scalar(
        self,
        name: str,
        value: float,
        step: int | None = None,
        commit: bool = True,
        *,
        override_global_step: bool = False,
    ) -> None:
        """Log one scalar (see :meth:`Logger.log_scalar`).

        Args:
            name: the series name; ``<group>/<name>`` is drawn against ``<group>/step``.
            value: a real number or a one-element tensor/array.
            step: the x coordinate; ``None`` uses the per-name counter.
            commit: ``False`` adds to the current W&B history row without closing it.
            override_global_step: pass ``step`` as W&B's global ``step`` (which must
                increase) instead of the per-group step axis.
        """
        self._check_open("log_scalar")
        self._log_values({name: value}, step, commit, override_global_step)

    def log_metrics(
        self,
        metrics: Any,
        step: int | None = None,
        *,
        keys_sep: str = "/",
        override_global_step: bool = False,
    ) -> dict[str, Any]:
        """Log several scalars in one W&B history row (see :meth:`Logger.log_metrics`).

        A step key among the metrics (``<group>/step``, or ``step``) is the step of its
        group's values, as in TorchRL.

        Returns:
            The logged values as floats, and the step keys as ints.
        """
        self._check_open("log_metrics")
        return self._log_values(flat_metrics(metrics, keys_sep), step, None, override_global_step)

    def _log_values(
        self,
        values: dict[str, Any],
        step: Any,
        commit: bool | None,
        override_global_step: bool,
    ) -> dict[str, Any]:
        for name in values:
            safe_name(name)
        axes = {n: _as_step(v, f"step key {n!r}") for n, v in values.items() if is_step_key(n)}
        floats = {n: _as_float(v, n) for n, v in values.items() if n not in axes}
        if override_global_step:
            at = _as_step(step, f"scalars {sorted(floats)}")
            self.experiment.log(floats, step=at, **_commit(commit))
            if at is not None:
                for name in floats:
                    self._advance("scalar", name, at)
            return {**floats, **axes}
        if not floats:  # only step keys: log them as they are
            for key in axes:
                self._define(key)
            self.experiment.log(dict(axes), **_commit(commit))
            return dict(axes)
        steps = {}
        for name in floats:
            axis = axes.get(step_key(name))
            steps[name] = self._step("scalar", name, step if axis is None else axis)
        self._emit([(name, v, steps[name]) for name, v in floats.items()], commit=commit)
        for name, at in steps.items():
            self._advance("scalar", name, at)
        return {**floats, **axes}

    def _emit(
        self,
        items: list[tuple[str, Any, int]],
        *,
        commit: bool | None = None,
        override_global_step: bool = False,
    ) -> None:
        """Log ``(name, value, step)`` items, each with its ``<group>/step`` key.

        Items whose group already has another step in the row go to a new row;
        ``commit`` is passed to ``wandb.Run.log`` when given, as TorchRL.
        """
        if override_global_step:
            for name, value, step in items:
                self.experiment.log({name: value}, step=step, **_commit(commit))
            return
        for name, _, _ in items:  # the axes first, then the values on them (as TorchRL)
            self._define(step_key(name))
        for name, _, _ in items:
            self._define(name, step_key(name))
        row: dict[str, Any] = {}
        for name, value, step in items:
            key = step_key(name)
            if key in row and row[key] != step:
                self.experiment.log(row, **_commit(commit))
                row = {}
            row[name] = value
            row[key] = step
        if row:
            self.experiment.log(row, **_commit(commit))

    def _define(self, name: str, axis: str | None = None) -> None:
        """``define_metric`` once per name: an axis (``axis=None``), or a value on ``axis``."""
        if name in self._defined:
            return
        self._defined.add(name)
        if axis is None:
            self.experiment.define_metric(name)
        else:
            self.experiment.define_metric(name, step_metric=axis)

    # -- backend hooks -------------------------------------------------------------------

    def _log_scalar(self, name: str, value: float, step: int) -> None:
        self._emit([(name, value, step)])

    def _log_video(
        self,
        name: str,
        video: Video,
        step: int,
        fps: float,
        *,
        format: str = "mp4",
        commit: bool | None = None,
        override_global_step: bool = False,
    ) -> None:
        if format not in _FORMATS:
            raise VideoError(
                f"WandbLogger writes videos as {_FORMATS}, got format={format!r}; use 'mp4'"
            )
        path = safe_path(self.experiment_dir / "videos", f"{name}_{step}", f".{format}")
        if format == "mp4":
            encode_mp4(video, path, fps)
        else:
            with GifWriter(path, video.width, video.height, fps) as writer:
                writer.write_video(video)
        media = self._wandb.Video(str(path), format=format)
        self._emit([(name, media, step)], commit=commit, override_global_step=override_global_step)

    def _log_histogram(
        self,
        name: str,
        values: Any,
        step: int,
        bins: Any,
        *,
        commit: bool | None = None,
        override_global_step: bool = False,
    ) -> None:
        bins = 64 if bins is None else bins
        histogram = self._wandb.Histogram(values, num_bins=bins)
        self._emit(
            [(name, histogram, step)], commit=commit, override_global_step=override_global_step
        )

    def log_str(
        self,
        name: str,
        value: str,
        step: int | None = None,
        *,
        override_global_step: bool = False,
    ) -> None:
        """Log a text: the string itself at an explicit ``step``, else a one-cell table.

        As TorchRL's; ``override_global_step`` as in :meth:`log_scalar`.
        """
        as_value = step is not None
        options = {"as_value": as_value, "override_global_step": override_global_step}
        super().log_str(name, value, step, **options)

    def _log_text(
        self,
        name: str,
        text: str,
        step: int,
        *,
        as_value: bool = False,
        override_global_step: bool = False,
    ) -> None:
        media = text if as_value else self._wandb.Table(columns=["text"], data=[[text]])
        self._emit([(name, media, step)], override_global_step=override_global_step)

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

    def _checkpoint_state(self) -> dict[str, Any]:
        return {**super()._checkpoint_state(), "id": getattr(self.experiment, "id", self.id)}

    def _load_checkpoint_state(self, state_dict: Any) -> None:
        saved = state_dict.get("id")
        live = getattr(self.experiment, "id", self.id)
        if saved and live and saved != live:
            raise ConfigError(
                f"this WandbLogger logs to run {live!r} but the checkpoint was written by run "
                f"{saved!r}; create the logger with id={saved!r} (resume='must') to restore it"
            )
        super()._load_checkpoint_state(state_dict)

    def _close(self) -> None:
        self.experiment.finish()
