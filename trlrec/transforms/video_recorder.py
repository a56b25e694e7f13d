"""VideoRecorder: frames of a rollout spooled to disk as they come, sent to a logger on dump().

A drop-in for ``torchrl.record.VideoRecorder`` (same constructor arguments) that
never holds frames in RAM: each frame is converted to RGB ``uint8`` ``(H, W, 3)``
and appended to a *spool file*; :meth:`VideoRecorder.dump` opens the spool
zero-copy and hands the logger a ``(1, T, 3, H, W)`` ``uint8`` view of it.

Spool format (version 1), in the spool directory (``<logger.experiment_dir>/video_spool``,
else ``<log_dir>/<exp_name>/video_spool`` for TorchRL loggers, else ``spool_dir=``,
else a temporary directory), one pair of files per video:

- ``<name>.<recorder>.<seq>.frames``: raw ``uint8`` frames, ``T x H x W x 3``, appended
  with buffered writes (flushed at every episode end). ``T`` is the file size divided by
  ``H * W * 3``, so a killed process leaves every whole frame readable.
- ``<name>.<recorder>.<seq>.video.json``: ``{"format": "trlrec.video_spool", "version": 1,
  "tag", "env", "height", "width", "channels": 3, "dtype": "uint8", "fps", "recorder",
  "seq", "created"}``.
- ``.<recorder>.lock``: held (``flock``) by the live recorder; videos whose recorder
  holds no lock are orphans, sent by the next ``dump()``/``close()`` with the same tag.
- ``<name>.step``: the next default ``step`` for that video name, so a new recorder
  with the same tag continues the numbering instead of overwriting older videos.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import MemoryMappedTensor, NonTensorData, NonTensorStack, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.envs import EnvBase
from torchrl.envs.transforms import Transform

from trlrec.errors import ClosedError, VideoError
from trlrec.naming import safe_name

__all__ = ["VideoRecorder"]

SPOOL_FORMAT = "trlrec.video_spool"
SPOOL_VERSION = 1
_CHANNELS = (1, 3, 4)
_WRITE_BUFFER = 1 << 18
_BATCH_CHUNK_BYTES = 8 << 20
_LAYOUT_HELP = (
    "frames must be (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4, as uint8 in [0, 255] "
    "or float in [0, 1]"
)


# ----------------------------------------------------------------------------- frames


def _as_tensor(value: Any, key: NestedKey) -> torch.Tensor:
    """A tensor view of a frame entry: tensor, numpy array or non-tensor data holding one."""
    if isinstance(value, torch.Tensor) and not isinstance(value, NonTensorData):
        return value
    if isinstance(value, NonTensorStack):
        value = value.tolist()
    elif isinstance(value, NonTensorData):
        value = value.data
    if isinstance(value, list | tuple):
        try:
            value = np.asarray(
                [v.numpy(force=True) if isinstance(v, torch.Tensor) else v for v in value]
            )
        except ValueError as err:
            raise VideoError(
                f"frames under {key!r} are a list of arrays of different shapes ({err}); "
                "every frame of a video must have the same size"
            ) from err
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "uif":
            raise VideoError(
                f"frames under {key!r} have non-numeric dtype {value.dtype} "
                f"(shape {value.shape}); {_LAYOUT_HELP}"
            )
        if not value.flags.writeable or any(s < 0 for s in value.strides):
            value = np.array(value)
        return torch.from_numpy(value)
    raise VideoError(
        f"frames under {key!r} must be tensors, numpy arrays or non-tensor data holding "
        f"them, got {type(value).__name__}"
    )


class _FrameLayout:
    """How frames of one shape/dtype become contiguous RGB ``uint8`` ``(..., h, w, 3)``."""

    __slots__ = (
        "channels",
        "chw",
        "crop",
        "frame_shape",
        "height",
        "identity",
        "kind",
        "rank",
        "width",
    )

    def __init__(
        self,
        key: NestedKey,
        frame_shape: torch.Size,
        full_shape: torch.Size,
        dtype: torch.dtype,
        center_crop: tuple[int, int] | None,
    ) -> None:
        got = f"got shape {tuple(full_shape)}, dtype {dtype}"
        if dtype == torch.bool or dtype.is_complex:
            raise VideoError(f"frames under {key!r} have non-numeric dtype; {got}. {_LAYOUT_HELP}")
        self.kind = (
            "float" if dtype.is_floating_point else ("u8" if dtype == torch.uint8 else "int")
        )
        self.frame_shape = frame_shape
        self.rank = len(frame_shape)
        if self.rank == 2:
            self.chw, self.channels = False, 1
            height, width = frame_shape
        elif self.rank == 3:
            first, last = frame_shape[0], frame_shape[-1]
            hwc_ok, chw_ok = last in _CHANNELS, first in _CHANNELS
            if not (hwc_ok or chw_ok):
                raise VideoError(
                    f"frames under {key!r} have no channel dim of size 1, 3 or 4 ({got}); "
                    f"{_LAYOUT_HELP}. Convert 2-channel or multi-frame stacks to RGB first."
                )
            self.chw = chw_ok and (not hwc_ok or first < last)
            if self.chw:
                self.channels, height, width = frame_shape
            else:
                height, width, self.channels = frame_shape
        else:
            raise VideoError(
                f"frames under {key!r} have rank {self.rank} after the batch dims ({got}); "
                f"{_LAYOUT_HELP}. Pass in_keys pointing at the image entry."
            )
        self.crop = None
        if center_crop is not None:
            ch, cw = min(center_crop[0], height), min(center_crop[1], width)
            self.crop = (round((height - ch) / 2), round((width - cw) / 2), ch, cw)
            height, width = ch, cw
        self.height, self.width = height, width
        self.identity = (
            self.kind == "u8"
            and self.rank == 3
            and not self.chw
            and self.channels == 3
            and self.crop is None
        )

    def convert(self, raw: torch.Tensor) -> torch.Tensor:
        """Frames ``(..., <frame_shape>)`` to contiguous CPU ``uint8`` ``(..., h, w, 3)``."""
        x = raw
        if self.rank == 2:
            x = x.unsqueeze(-1)
        elif self.chw:
            x = x.movedim(-3, -1)
        if self.channels == 4:
            x = x[..., :3]
        elif self.channels == 1:
            x = x.expand(*x.shape[:-1], 3)
        if self.crop is not None:
            top, left, h, w = self.crop
            x = x[..., top : top + h, left : left + w, :]
        if self.kind == "float":
            x = x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        elif self.kind == "int":
            x = x.clamp(0, 255).to(torch.uint8)
        if x.device.type != "cpu":
            x = x.cpu()
        return x.contiguous()


class _Grid:
    """Tiles ``E`` frames ``(h, w, 3)`` into one ``(rows*h, cols*w, 3)`` frame."""

    __slots__ = ("buffer", "cols", "view")

    def __init__(self, n: int, height: int, width: int) -> None:
        self.cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / self.cols)
        self.buffer = torch.zeros(rows * height, self.cols * width, 3, dtype=torch.uint8)
        self.view = self.buffer.view(rows, height, self.cols, width, 3)

    def tile(self, frames: torch.Tensor) -> torch.Tensor:
        for i in range(frames.shape[0]):
            row, col = divmod(i, self.cols)
            self.view[row, :, col].copy_(frames[i])
        return self.buffer


# ----------------------------------------------------------------------------- spool


class _Segment:
    """One video being written: ``<stem>.frames`` plus its ``<stem>.video.json`` sidecar."""

    __slots__ = ("_file", "frames", "height", "width")

    def __init__(self, stem: Path, meta: dict[str, Any]) -> None:
        sidecar = stem.with_name(stem.name + ".video.json")
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, sidecar)
        self._file = open(stem.with_name(stem.name + ".frames"), "ab", buffering=_WRITE_BUFFER)  # noqa: SIM115
        self.frames = 0
        self.height, self.width = meta["height"], meta["width"]

    def write(self, frame: torch.Tensor) -> None:
        self._file.write(frame.numpy())
        self.frames += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _Spool:
    """The directory of spool files of one recorder, its lock and the step counters."""

    def __init__(self, directory: Path | None, tag: str) -> None:
        self._requested = directory
        self._dir: Path | None = None
        self._owns_dir = False
        self.tag = tag
        self.recorder = uuid.uuid4().hex[:12]
        self._lock_fd: int | None = None
        self._seq = 0

    @property
    def directory(self) -> Path:
        if self._dir is None:
            if self._requested is None:
                self._dir = Path(tempfile.mkdtemp(prefix="trlrec-video-spool-"))
                self._owns_dir = True
            else:
                self._requested.mkdir(parents=True, exist_ok=True)
                self._dir = self._requested
        return self._dir

    def _lock_path(self, recorder: str) -> Path:
        return self.directory / f".{recorder}.lock"

    def open_segment(self, env: int | None, height: int, width: int, fps: float | None) -> _Segment:
        directory = self.directory
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path(self.recorder), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        name = self.tag if env is None else f"{self.tag}_env{env}"
        meta = {
            "format": SPOOL_FORMAT,
            "version": SPOOL_VERSION,
            "tag": self.tag,
            "env": env,
            "height": height,
            "width": width,
            "channels": 3,
            "dtype": "uint8",
            "fps": fps,
            "recorder": self.recorder,
            "seq": self._seq,
            "created": time.time(),
        }
        stem = directory / f"{safe_name(name)}.{self.recorder}.{self._seq:06d}"
        self._seq += 1
        return _Segment(stem, meta)

    def pending(self) -> tuple[list[tuple[Path, dict[str, Any]]], dict[str, int]]:
        """Finished videos of this tag: this recorder's and orphans'; plus the claimed locks."""
        found: list[tuple[Path, dict[str, Any]]] = []
        claimed: dict[str, int | None] = {self.recorder: None}
        for sidecar in self.directory.glob("*.video.json"):
            try:
                meta = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("format") != SPOOL_FORMAT or meta.get("tag") != self.tag:
                continue
            owner = str(meta.get("recorder"))
            if owner not in claimed:
                claimed[owner] = self._claim(owner)
            if owner == self.recorder or claimed[owner] is not None:
                found.append((sidecar, meta))
        found.sort(key=lambda item: (item[1].get("created", 0), item[1].get("seq", 0)))
        return found, {owner: fd for owner, fd in claimed.items() if fd is not None}

    def _claim(self, owner: str) -> int | None:
        """Lock a dead recorder's lock file; None when that recorder is alive."""
        fd = os.open(self._lock_path(owner), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def release(self, claimed: dict[str, int]) -> None:
        """Unlock claimed orphans, deleting the lock of those with no video left."""
        for owner, fd in claimed.items():
            if not any(self.directory.glob(f"*.{owner}.*.video.json")):
                self._lock_path(owner).unlink(missing_ok=True)
            os.close(fd)

    def exists(self) -> bool:
        """Whether the spool directory exists (nothing to send otherwise)."""
        if self._dir is not None:
            return True
        return self._requested is not None and self._requested.is_dir()

    def next_step(self, name: str) -> int:
        path = self.directory / f"{safe_name(name)}.step"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            step = int(text) if text.isdigit() else 0
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(step + 1).encode("ascii"))
        finally:
            os.close(fd)
        return step

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                self._lock_path(self.recorder).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._owns_dir and self._dir is not None:
            leftovers = [p for p in self._dir.iterdir() if not p.name.endswith(".step")]
            if not leftovers:
                shutil.rmtree(self._dir, ignore_errors=True)


def _frames_path(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name[: -len(".video.json")] + ".frames")


def _spool_dir(logger: Any, spool_dir: str | os.PathLike | None) -> Path | None:
    if spool_dir is not None:
        return Path(spool_dir)
    experiment_dir = getattr(logger, "experiment_dir", None)
    if isinstance(experiment_dir, str | os.PathLike):
        return Path(experiment_dir) / "video_spool"
    log_dir, exp_name = getattr(logger, "log_dir", None), getattr(logger, "exp_name", None)
    if isinstance(log_dir, str | os.PathLike) and isinstance(exp_name, str):
        return Path(log_dir) / safe_name(exp_name) / "video_spool"
    return None


# ----------------------------------------------------------------------------- streams


class _Stream:
    """The video state of one sub-env (or of the grid): episodes, triggers, the open segment."""

    __slots__ = ("count", "env", "episode", "new_episode", "owner", "recording", "segment")

    def __init__(self, owner: VideoRecorder, env: int | None) -> None:
        self.owner = owner
        self.env = env
        self.count = 0
        self.episode = -1
        self.new_episode = True
        self.recording = owner.episode_trigger is None and owner.step_trigger is None
        self.segment: _Segment | None = None

    def feed(self, frame: torch.Tensor, end: bool, reset: bool) -> None:
        owner = self.owner
        if reset or self.new_episode:
            self.episode += 1
            if owner.episode_trigger is not None:
                self.finish()
                self.recording = bool(owner.episode_trigger(self.episode))
        if not self.recording and owner.step_trigger is not None:
            self.recording = bool(owner.step_trigger(self.count))
        if self.recording and self.count % owner.skip == 0:
            segment = self.segment
            if segment is None:
                segment = self.segment = owner._open_segment(self.env, frame)
            if owner.max_frames is None or segment.frames < owner.max_frames:
                segment.write(frame)
            elif owner._triggered:
                self.finish()
                self.recording = False
        self.count += 1
        self.new_episode = end
        if end and self.segment is not None:
            if owner._triggered:
                self.finish()
                self.recording = False
            else:
                self.segment.flush()

    def finish(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None


# ----------------------------------------------------------------------------- recorder


class VideoRecorder(Transform):
    """Records frames to disk as they come and sends them to a logger as videos on :meth:`dump`.

    Same arguments as ``torchrl.record.VideoRecorder``, so switching is an import change;
    unlike it, frames never pile up in RAM (they are appended to a spool file), ``skip``
    defaults to 1, float frames are scaled, batched envs give a grid or one video per
    sub-env, and frames survive a logger error or a missing ``dump()``.

    Use it in a transform stack (``env.append_transform(vr)``), as a rollout callback
    (``env.rollout(n, callback=vr)``: records the root frame of each call; TorchRL does not
    call the callback on the reset nor on the last step), or on batches
    (``vr.extend(td)`` / ``vr(td)`` with ``td`` of shape ``[T]`` or ``[B, T]``: root frames,
    episode ends read from ``("next", "done")``).

    Frame layouts (detected from the first frame; the batch dims are the tensordict's):
    ``(H, W)`` grey, ``(H, W, C)`` or ``(C, H, W)`` with ``C`` = 1 (grey, expanded to RGB),
    3 (RGB) or 4 (RGBA, alpha dropped); ``uint8`` in [0, 255], other integers (clamped),
    floats in [0, 1] (scaled by 255); torch tensors, numpy arrays, ``NonTensorData``.

    Args:
        logger: anything with ``log_video(name, video, step=None, **kwargs)`` (trlrec or
            TorchRL loggers), or None to drop the frames on ``dump()``.
        tag: the video name in the logger (default ``"video"``).
        in_keys: the one frame key to read (default ``"pixels"``).
        skip: keep one frame out of ``skip`` (default 1: every frame).
        center_crop: square size (int) or ``(h, w)`` of a centred crop, clipped to the frame.
        make_grid: for a batched env, tile the sub-envs into one video (True, the default)
            or write one video per sub-env named ``<tag>_env<i>`` (False).
        out_keys: accepted for compatibility; frames are never modified.
        fps: frames per second passed to ``log_video`` (default: the logger's).
        max_frames: cap on the frames of one video; later frames are dropped until the
            next ``dump()`` (or, with a trigger, the video ends there).
        dump_on_done: call :meth:`dump` whenever every stream ends an episode at the same step.
        episode_trigger: ``f(episode_index) -> bool`` called when an episode starts; only
            episodes it accepts are recorded, each as its own video (see
            :mod:`trlrec.transforms.triggers`).
        step_trigger: ``f(frame_index) -> bool``: a True starts a video that runs to the end
            of the episode or ``max_frames``.
        spool_dir: where the spool files go (default: see the module docstring).
        **kwargs: passed to ``logger.log_video``.

    Raises:
        VideoError: for an invalid argument here, or a frame that cannot be made into a
            video while recording (frames spooled before it are kept).
    """

    def __init__(
        self,
        logger: Any,
        tag: str | None,
        in_keys: Sequence[NestedKey] | NestedKey | None = None,
        skip: int | None = None,
        center_crop: int | tuple[int, int] | None = None,
        make_grid: bool | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        dump_on_done: bool = False,
        *,
        episode_trigger: Callable[[int], bool] | None = None,
        step_trigger: Callable[[int], bool] | None = None,
        spool_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        client = getattr(logger, "client", None)
        if callable(client):
            logger = client()
        in_keys = ["pixels"] if in_keys is None else in_keys
        if isinstance(in_keys, str | tuple):
            in_keys = [in_keys]
        in_keys = list(in_keys)
        if len(in_keys) != 1:
            raise VideoError(
                f"VideoRecorder reads one frame key, got in_keys={in_keys}; "
                "use one recorder per key"
            )
        super().__init__(in_keys=in_keys, out_keys=list(out_keys) if out_keys else in_keys)
        if tag is not None and not isinstance(tag, str):
            raise VideoError(f"tag must be a str, got {tag!r}")
        self.tag = tag or "video"
        safe_name(self.tag)
        self.skip = _positive_int("skip", 1 if skip is None else skip)
        self.max_frames = None if max_frames is None else _positive_int("max_frames", max_frames)
        self.center_crop = _crop_size(center_crop)
        if make_grid is not None and not isinstance(make_grid, bool):
            raise VideoError(f"make_grid must be a bool or None, got {make_grid!r}")
        self.make_grid = make_grid
        for name, trigger in (("episode_trigger", episode_trigger), ("step_trigger", step_trigger)):
            if trigger is not None and not callable(trigger):
                raise VideoError(f"{name} must be a callable int -> bool, got {trigger!r}")
        self.episode_trigger = episode_trigger
        self.step_trigger = step_trigger
        if fps is not None and (
            isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0
        ):
            raise VideoError(f"fps must be a positive number, got {fps!r}")
        self.fps = fps
        self.dump_on_done = bool(dump_on_done)
        self.video_kwargs = dict(kwargs)
        if fps is not None:
            self.video_kwargs["fps"] = fps
        self.logger = logger
        self._spool_request = _spool_dir(logger, spool_dir)
        self._new_runtime()

    # ------------------------------------------------------------ state

    @property
    def _triggered(self) -> bool:
        return self.episode_trigger is not None or self.step_trigger is not None

    def _new_runtime(self) -> None:
        self._spool = _Spool(self._spool_request, self.tag)
        self._streams: list[_Stream] = []
        self._grid: _Grid | None = None
        self._layout: _FrameLayout | None = None
        self._hot: tuple[torch.Size, torch.dtype, torch.device] | None = None
        self._fast: _Stream | None = None
        self._fast_shape: torch.Size | None = None
        self._key = self.in_keys[0]
        self._closed = False

    @property
    def spool_dir(self) -> Path:
        """The directory holding this recorder's spool files (created on first use)."""
        return self._spool.directory

    def clone(self) -> VideoRecorder:
        """A recorder with the same settings and no parent, recording to its own spool files."""
        out = super().clone()
        out._new_runtime()
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_spool", "_streams", "_grid", "_layout", "_hot", "_fast"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_runtime()

    # ------------------------------------------------------------ call forms

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``vr(env, td)`` (rollout callback) or ``vr(td)`` (a batch, as :meth:`forward`)."""
        if len(args) == 2 and not kwargs and isinstance(args[0], EnvBase):
            self._check_open()
            self._record_callback(args[0], args[1])
            return None
        return super().__call__(*args, **kwargs)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Records the frames of a batch ``[T]`` or ``[B, T]`` (or one step) and returns it."""
        self._check_open()
        self._record_batch(tensordict)
        return tensordict

    def extend(self, tensordict: TensorDictBase) -> None:
        """Records the frames of a batch ``[T]`` or ``[B, T]``, e.g. from a collector."""
        if not isinstance(tensordict, TensorDictBase):
            raise VideoError(f"extend() takes a TensorDict, got {type(tensordict).__name__}")
        self._check_open()
        self._record_batch(tensordict)

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        self._check_open()
        raw = next_tensordict.get(self._key, None)
        fast = self._fast
        # Hot path: one env, frames already contiguous RGB uint8 (H, W, 3) of the known size.
        if (
            fast is not None
            and type(raw) is torch.Tensor
            and raw.shape == self._fast_shape
            and raw.dtype is torch.uint8
            and raw.device.type == "cpu"
            and raw.is_contiguous()
        ):
            done = next_tensordict.get("done", None)
            end = done is not None and bool(done.any())
            fast.feed(raw, end, False)
            if end and self.dump_on_done:
                self._dump(None, None)
            return next_tensordict
        raw = self._fetch(next_tensordict)
        if raw is not None:
            ends = _flags(next_tensordict.get("done", None), next_tensordict.batch_dims)
            self._record_tick(raw, next_tensordict.batch_size, ends, None)
        return next_tensordict

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        self._check_open()
        raw = self._fetch(tensordict_reset)
        if raw is not None:
            dims = tensordict_reset.batch_dims
            mask = None if tensordict is None else tensordict.get("_reset", None)
            resets = (
                [True] * _numel(tensordict_reset.batch_size) if mask is None else _flags(mask, dims)
            )
            self._record_tick(raw, tensordict_reset.batch_size, None, resets)
        return tensordict_reset

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return next_tensordict

    # ------------------------------------------------------------ recording

    def _fetch(
        self, tensordict: TensorDictBase, key: NestedKey | None = None
    ) -> torch.Tensor | None:
        key = self.in_keys[0] if key is None else key
        value = tensordict.get(key, None)
        if value is None:
            if self.missing_tolerance:
                return None
            raise VideoError(
                f"no frame under {key!r}; the tensordict has keys "
                f"{sorted(map(str, tensordict.keys(True, True)))}. Pass in_keys=[...] with the "
                "image key, create the env with pixels (from_pixels=True or "
                "PixelRenderTransform), or call set_missing_tolerance(True) to skip such steps"
            )
        if type(value) is torch.Tensor:
            return value
        return _as_tensor(value, key)

    def _record_callback(self, env: EnvBase, tensordict: TensorDictBase) -> None:
        key = self.in_keys[0]
        raw = tensordict.get(key, None)
        if raw is None and isinstance(key, str):
            raw = tensordict.get(("next", key), None)
        if raw is None:
            raw = self._fetch(tensordict)
            if raw is None:
                return
        elif type(raw) is not torch.Tensor:
            raw = _as_tensor(raw, key)
        done = tensordict.get(("next", "done"), None)
        if done is None:
            done = tensordict.get("done", None)
        self._record_tick(raw, tensordict.batch_size, _flags(done, tensordict.batch_dims), None)

    def _layout_for(self, raw: torch.Tensor, batch: torch.Size) -> _FrameLayout:
        hot = (raw.shape, raw.dtype, raw.device)
        if hot == self._hot and self._layout is not None:
            return self._layout
        lead = len(batch)
        if raw.shape[:lead] != batch:
            raise VideoError(
                f"frames under {self.in_keys[0]!r} have shape {tuple(raw.shape)} (dtype "
                f"{raw.dtype}), which does not start with the batch shape {tuple(batch)}; "
                "store one frame per env (or per step of a batch)"
            )
        layout = _FrameLayout(
            self.in_keys[0], raw.shape[lead:], raw.shape, raw.dtype, self.center_crop
        )
        old = self._layout
        if old is not None and (old.height, old.width) != (layout.height, layout.width):
            if any(s.segment is not None and s.segment.frames for s in self._streams):
                raise VideoError(
                    f"frames under {self.in_keys[0]!r} changed size mid-video from "
                    f"{old.height}x{old.width} to {layout.height}x{layout.width} (shape "
                    f"{tuple(raw.shape)}, dtype {raw.dtype}); call dump() before changing size"
                )
            self._reset_streams()
        self._layout, self._hot = layout, hot
        return layout

    def _ensure_streams(self, n_env: int, layout: _FrameLayout) -> None:
        grid = n_env > 1 and self.make_grid is not False
        wanted = 1 if (grid or n_env == 1) else n_env
        if self._streams and len(self._streams) == wanted and (self._grid is not None) == grid:
            return
        if any(s.segment is not None for s in self._streams):
            raise VideoError(
                f"the batch of frames under {self.in_keys[0]!r} changed to {n_env} env(s) "
                "mid-video; call dump() before changing the batch size"
            )
        self._fast = None
        self._grid = _Grid(n_env, layout.height, layout.width) if grid else None
        envs: list[int | None] = [None] if wanted == 1 else list(range(n_env))
        self._streams = [_Stream(self, env) for env in envs]

    def _reset_streams(self) -> None:
        for stream in self._streams:
            stream.finish()
        self._streams, self._grid, self._fast = [], None, None

    def _open_segment(self, env: int | None, frame: torch.Tensor) -> _Segment:
        return self._spool.open_segment(env, int(frame.shape[0]), int(frame.shape[1]), self.fps)

    def _record_tick(
        self,
        raw: torch.Tensor,
        batch: torch.Size,
        ends: list[bool] | None,
        resets: list[bool] | None,
    ) -> None:
        """Records one step of ``E`` envs: ``raw`` is ``(*batch, <frame>)``.

        A frame without the batch dims (one render of a whole vectorized env) is one frame.
        """
        if batch and raw.shape[: len(batch)] != batch and raw.ndim in (2, 3):
            batch = torch.Size([])
            ends = None if ends is None else [all(ends)]
            resets = None if resets is None else [all(resets)]
        layout = self._layout_for(raw, batch)
        lead = len(batch)
        frames = layout.convert(raw)
        if lead == 0:
            self._ensure_streams(1, layout)
            if layout.identity and raw.device.type == "cpu":
                self._fast, self._fast_shape = self._streams[0], raw.shape
            self._streams[0].feed(frames, bool(ends and ends[0]), resets is not None)
        else:
            n_env = _numel(raw.shape[:lead])
            self._ensure_streams(n_env, layout)
            self._feed(frames.reshape(n_env, layout.height, layout.width, 3), ends, resets)
        if self.dump_on_done and ends and all(ends):
            self._dump(None, None)

    def _feed(
        self, frames: torch.Tensor, ends: list[bool] | None, resets: list[bool] | None
    ) -> None:
        n_env = frames.shape[0]
        if self._grid is not None:
            if resets is not None and not all(resets):
                return
            self._streams[0].feed(
                self._grid.tile(frames), bool(ends and all(ends)), resets is not None
            )
        elif n_env == 1:
            self._streams[0].feed(frames[0], bool(ends and ends[0]), resets is not None)
        else:
            for i, stream in enumerate(self._streams):
                if resets is None or resets[i]:
                    stream.feed(frames[i], bool(ends and ends[i]), resets is not None)

    def _record_batch(self, tensordict: TensorDictBase) -> None:
        raw = self._fetch(tensordict)
        if raw is None:
            return
        lead = tensordict.batch_dims
        done = tensordict.get(("next", "done"), None)
        if done is None:
            done = tensordict.get("done", None)
        if lead == 0:
            self._record_tick(raw, tensordict.batch_size, _flags(done, 0), None)
            return
        if raw.shape[:lead] != tensordict.batch_size:
            if raw.ndim not in (2, 3):
                self._layout_for(raw, tensordict.batch_size)  # raises
            self._record_tick(raw, tensordict.batch_size, None, None)
            return
        steps = tensordict.shape[-1]
        n_env = _numel(tensordict.shape[:-1])
        raw = raw.reshape(n_env, steps, *raw.shape[lead:])
        ends = None if done is None else done.reshape(n_env, steps, -1).any(-1).tolist()
        layout = self._layout_for(raw, raw.shape[:2])
        self._ensure_streams(n_env, layout)
        frame_bytes = max(1, n_env * layout.height * layout.width * 3)
        chunk = max(1, _BATCH_CHUNK_BYTES // frame_bytes)
        for start in range(0, steps, chunk):
            frames = layout.convert(raw[:, start : start + chunk])
            for t in range(frames.shape[1]):
                tick_ends = None if ends is None else [row[start + t] for row in ends]
                self._feed(frames[:, t], tick_ends, None)
                if self.dump_on_done and tick_ends and all(tick_ends):
                    self._dump(None, None)

    # ------------------------------------------------------------ dump / close

    def dump(self, suffix: str | None = None, step: int | None = None) -> None:
        """Sends every recorded video to the logger, deletes its spool files and starts afresh.

        Includes videos left in the spool directory by earlier recorders with the same tag
        that are no longer running. A video the logger fails on stays on disk for the next
        ``dump()``. Without a logger the frames are dropped (as in TorchRL).

        Args:
            suffix: appended to the video names as ``<tag>_<suffix>``.
            step: the step passed to ``log_video``; default: a per-name counter kept in the
                spool directory, so videos of successive recorders never share a step.
        """
        self._check_open()
        if suffix is not None and not isinstance(suffix, str):
            raise VideoError(f"suffix must be a str or None, got {suffix!r}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise VideoError(f"step must be an int or None, got {step!r}")
        self._dump(suffix, step)

    def _dump(self, suffix: str | None, step: int | None) -> None:
        for stream in self._streams:
            stream.finish()
        if not self._spool.exists():
            return
        pending, claimed = self._spool.pending()
        try:
            for sidecar, meta in pending:
                self._send(sidecar, meta, suffix, step)
        finally:
            self._spool.release(claimed)

    def _send(
        self, sidecar: Path, meta: dict[str, Any], suffix: str | None, step: int | None
    ) -> None:
        frames_path = _frames_path(sidecar)
        height, width = int(meta["height"]), int(meta["width"])
        size = frames_path.stat().st_size if frames_path.exists() else 0
        count = size // (height * width * 3)
        if count and self.logger is not None:
            name = self.tag if suffix is None else f"{self.tag}_{suffix}"
            if meta.get("env") is not None:
                name = f"{name}_env{meta['env']}"
            video = MemoryMappedTensor.from_filename(
                frames_path, dtype=torch.uint8, shape=torch.Size([count, height, width, 3])
            )
            kwargs = dict(self.video_kwargs)
            if meta.get("fps") is not None:
                kwargs.setdefault("fps", meta["fps"])
            at = self._spool.next_step(name) if step is None else step
            self.logger.log_video(name, video.permute(0, 3, 1, 2).unsqueeze(0), step=at, **kwargs)
            del video
        frames_path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)

    def close(self) -> None:
        """Sends what is left (as :meth:`dump`) and releases the spool. Idempotent.

        During interpreter shutdown nothing is sent: the frames stay in the spool for the
        next recorder with the same tag and spool directory.
        """
        if self._closed:
            return
        try:
            if sys.is_finalizing():
                for stream in self._streams:
                    stream.finish()
            else:
                self._dump(None, None)
        finally:
            self._closed = True
            self._spool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"VideoRecorder(tag={self.tag!r}) was used after close()")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tag={self.tag!r}, in_keys={self.in_keys}, skip={self.skip}, "
            f"make_grid={self.make_grid}, max_frames={self.max_frames})"
        )


# ----------------------------------------------------------------------------- helpers


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _flags(value: Any, lead: int) -> list[bool] | None:
    """Per-env booleans from a ``done``/``_reset`` entry of shape ``(*env_batch, ...)``."""
    if value is None:
        return None
    if lead == 0:
        return [bool(value.any())] if value.numel() != 1 else [bool(value.item())]
    return value.reshape(_numel(value.shape[:lead]), -1).any(-1).tolist()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VideoError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _crop_size(value: Any) -> tuple[int, int] | None:
    if value is None or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise VideoError(f"center_crop must be a positive int or (height, width), got {value!r}")
