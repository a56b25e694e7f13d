"""VideoRecorder: frames of a rollout spooled to disk as they come, sent to a logger on dump().

A drop-in for ``torchrl.record.VideoRecorder`` (same constructor arguments) that
never holds frames in RAM: each frame is converted to RGB ``uint8`` ``(H, W, 3)``
(:mod:`trlrec.video.frames`) and appended to a *spool file* (:mod:`trlrec.video.spool`,
which documents the format and where the spool directory is); :meth:`VideoRecorder.dump`
hands the logger the video as ``(1, T, 3, H, W)`` ``uint8``: a zero-copy view of the spool
for trlrec's loggers, a tensor of its own (that it may keep, pickle or send to another
process) for any other.
The per-env video state (episodes, triggers) is :mod:`trlrec.video.track`.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import multiprocessing.util
import os
import sys
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from tensordict import MemoryMappedTensor, TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.envs import EnvBase
from torchrl.envs.transforms import Transform

from trlrec.device_copy import DeviceCopies
from trlrec.errors import ClosedError, VideoError
from trlrec.naming import safe_name
from trlrec.transforms.fast_lane import FastLane
from trlrec.video.frames import FrameGrid, FrameLayout, as_frame_tensor, crop_size
from trlrec.video.spool import (
    Spool,
    frames_path,
    read_sidecar,
    remove_orphan_parts,
    spool_dir_for,
)
from trlrec.video.track import Track

__all__ = ["VideoRecorder"]

_log = logging.getLogger(__name__)
_BATCH_BLOCK_BYTES = 8 << 20
Flags: TypeAlias = "list[bool] | torch.Tensor | None"
"""A tick's per-env flags: a list, or the GPU tensor they are read from once copied."""
_UINT8 = torch.uint8


class VideoRecorder(FastLane, Transform):
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
        spool_dir: where the spool files go (default: see :func:`trlrec.video.spool.spool_dir_for`).
        **kwargs: passed to ``logger.log_video``.

    Raises:
        VideoError: for an invalid argument here, or a frame that cannot be made into a
            video while recording (frames spooled before it are kept).

    Videos are named for what they hold and logged at the env frame count (see
    :meth:`dump`): with a :class:`~trlrec.loggers.CSVLogger`, ``videos/<tag>_<frames>.mp4``
    holds every frame since the previous dump, ``videos/<tag>_ep<i>_<frames>.mp4``
    episode ``i`` of a triggered recording.

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> from trlrec import VideoRecorder
        >>> from trlrec.loggers import MemoryLogger
        >>> from trlrec.transforms.triggers import Every
        >>> logger = MemoryLogger("demo", log_dir=tempfile.mkdtemp())
        >>> vr = VideoRecorder(logger, tag="clip", episode_trigger=Every(2))
        >>> frames = torch.randint(0, 256, (9, 8, 8, 3), dtype=torch.uint8)
        >>> done = torch.tensor([t % 3 == 2 for t in range(9)]).unsqueeze(-1)  # 3 episodes
        >>> vr.extend(TensorDict(pixels=frames, next=TensorDict(done=done, batch_size=[9]),
        ...                      batch_size=[9]))
        >>> vr.dump()
        >>> {name: (v[0].step, v[0].frames.shape[0]) for name, v in logger.videos.items()}
        {'clip_ep0': (9, 3), 'clip_ep2': (9, 3)}

        In an env, frames come from ``"pixels"`` (``from_pixels=True`` or a
        :class:`~trlrec.PixelRenderTransform` before it):
        ``GymEnv("CartPole-v1", render_mode="rgb_array").append_transform(
        PixelRenderTransform()).append_transform(VideoRecorder(logger, "rollout"))``.
    """

    # what the step's fast path depends on: changing one sends the next step the slow way
    LANE_SETTINGS = frozenset(
        {"skip", "max_frames", "episode_trigger", "step_trigger", "in_keys", "_key", "_top_key"}
    )

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
        self.center_crop = crop_size(center_crop)
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
        self._spool_request = spool_dir_for(logger, spool_dir)
        self._new_runtime()

    # ------------------------------------------------------------ state

    def _new_runtime(self) -> None:
        self._spool = Spool(self._spool_request, self.tag)
        self._tracks: list[Track] = []
        self._grid: FrameGrid | None = None
        self._layout: FrameLayout | None = None
        self._hot: tuple[torch.Size, torch.dtype, torch.device] | None = None
        self._fast: Track | None = None
        self._fast_shape: torch.Size | None = None
        self._key = self.in_keys[0]
        self._top_key = self._key if isinstance(self._key, str) else None
        self._closed = False
        self._clock = _FrameClock()
        self._copies = DeviceCopies()  # frames on a GPU: copied to the host behind the loop
        self._failed: set[Path] = set()  # videos the logger failed on (the error was raised)
        self._sent = 0  # videos the logger received (for stats)
        self._errors = 0
        self._last_error: str | None = None
        _watch_in_worker(self)

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
        for name in ("_spool", "_tracks", "_grid", "_layout", "_hot", "_fast", "_clock", "_copies"):
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
        fast = self._fast  # None when closed, so the hot path needs no _check_open()
        if fast is not None and type(next_tensordict) is TensorDict:
            # Hot path: one env keeping every frame, frames RGB uint8 (H, W, 3) of the known
            # size (copy_ handles strides and devices). A plain TensorDict's entries are a
            # dict: ~0.05 us a key, not ~0.7 for TensorDict.get.
            entries = next_tensordict._tensordict
            raw = entries.get(self._top_key)
            if type(raw) is torch.Tensor and raw.shape == self._fast_shape and raw.dtype is _UINT8:
                done = entries.get("done")
                # one-element done (an unbatched env's [1]): .item() ~0.2 us, .any() ~1.5 us
                end = done is not None and bool(done.item() if done.numel() == 1 else done.any())
                fast.feed_every(raw, end)
                self._clock.frames += 1
                if end and self.dump_on_done:
                    self._dump(None, None)
                return next_tensordict
        self._check_open()
        self._clock.tick(next_tensordict.batch_size)
        raw = self._fetch(next_tensordict)
        if raw is not None:
            ends = self._tick_flags(next_tensordict.get("done", None), next_tensordict.batch_dims)
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
                [True] * _numel(tensordict_reset.batch_size)
                if mask is None
                else self._tick_flags(mask, dims)
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
        return as_frame_tensor(value, key)

    def _record_callback(self, env: EnvBase, tensordict: TensorDictBase) -> None:
        self._clock.tick(tensordict.batch_size)
        key = self.in_keys[0]
        raw = tensordict.get(key, None)
        if raw is None and isinstance(key, str):
            raw = tensordict.get(("next", key), None)
        if raw is None:
            raw = self._fetch(tensordict)
            if raw is None:
                return
        elif type(raw) is not torch.Tensor:
            raw = as_frame_tensor(raw, key)
        done = tensordict.get(("next", "done"), None)
        if done is None:
            done = tensordict.get("done", None)
        self._record_tick(raw, tensordict.batch_size, _flags(done, tensordict.batch_dims), None)

    def _layout_for(self, raw: torch.Tensor, batch: torch.Size) -> FrameLayout:
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
        layout = FrameLayout(
            self.in_keys[0], raw.shape[lead:], raw.shape, raw.dtype, self.center_crop
        )
        old = self._layout
        if old is not None and (old.height, old.width) != (layout.height, layout.width):
            if any(s.segment is not None and s.segment.frames for s in self._tracks):
                raise VideoError(
                    f"frames under {self.in_keys[0]!r} changed size mid-video from "
                    f"{old.height}x{old.width} to {layout.height}x{layout.width} (shape "
                    f"{tuple(raw.shape)}, dtype {raw.dtype}); call dump() before changing size"
                )
            self._reset_tracks()
        self._layout, self._hot = layout, hot
        return layout

    def _keeps_every_frame(self) -> bool:
        """No trigger, ``skip=1``, no ``max_frames``, a top-level key: the step's fast path."""
        return (
            self.skip == 1
            and self.max_frames is None
            and self.episode_trigger is None
            and self.step_trigger is None
            and self._top_key is not None
        )

    def _ensure_tracks(self, n_env: int, layout: FrameLayout) -> None:
        grid = n_env > 1 and self.make_grid is not False
        wanted = 1 if (grid or n_env == 1) else n_env
        if self._tracks and len(self._tracks) == wanted and (self._grid is not None) == grid:
            return
        if any(s.segment is not None for s in self._tracks):
            raise VideoError(
                f"the batch of frames under {self.in_keys[0]!r} changed to {n_env} env(s) "
                "mid-video; call dump() before changing the batch size"
            )
        self._fast = None
        self._grid = FrameGrid(n_env, layout.height, layout.width) if grid else None
        envs: list[int | None] = [None] if wanted == 1 else list(range(n_env))
        self._tracks = [Track(self, env, self._spool) for env in envs]

    def _reset_tracks(self) -> None:
        for stream in self._tracks:
            stream.finish()
        self._tracks, self._grid, self._fast = [], None, None

    def _record_tick(
        self,
        raw: torch.Tensor,
        batch: torch.Size,
        ends: Flags,
        resets: Flags,
    ) -> None:
        """Records one step of ``E`` envs: ``raw`` is ``(*batch, <frame>)``.

        A frame without the batch dims (one render of a whole vectorized env) is one frame.
        ``ends`` and ``resets`` may be still on the GPU (see :meth:`_tick_flags`).
        """
        if batch and raw.shape[: len(batch)] != batch and raw.ndim in (2, 3):
            ends, resets = _host_flags(ends, len(batch)), _host_flags(resets, len(batch))
            batch = torch.Size([])
            ends = None if ends is None else [all(ends)]
            resets = None if resets is None else [all(resets)]
        layout = self._layout_for(raw, batch)
        if self._copies.wanted(raw):
            self._push_frames(layout.convert_on_device(raw), layout, batch, ends, resets)
            return
        fast = raw.device.type == "cpu"  # the step's fast path may take the next ones
        lead = len(batch)
        ends, resets = _host_flags(ends, lead), _host_flags(resets, lead)
        self._feed_tick(layout.convert(raw), fast, layout, batch, ends, resets)

    def _tick_flags(self, value: Any, lead: int) -> Flags:
        """:func:`_flags`, or ``value`` itself when on the GPU: read a step later, no sync."""
        if isinstance(value, torch.Tensor) and self._copies.wanted(value):
            return value
        return _flags(value, lead)

    def _push_frames(
        self,
        frames: torch.Tensor,
        layout: FrameLayout,
        batch: torch.Size,
        ends: Flags,
        resets: Flags,
    ) -> None:
        """A GPU tick's frames (and flags): copied to the host behind the step loop, fed later."""
        parts: dict[str, Any] = {"frames": frames}
        for name, flags in (("ends", ends), ("resets", resets)):
            if isinstance(flags, torch.Tensor):
                parts[name] = flags
        lead = len(batch)

        def consume(host: dict[str, Any]) -> None:
            got_ends = _host_flags(host.get("ends", ends), lead)
            got_resets = _host_flags(host.get("resets", resets), lead)
            self._feed_tick(host["frames"], False, layout, batch, got_ends, got_resets)

        self._copies.push(parts, consume)

    def _feed_tick(
        self,
        frames: torch.Tensor,
        fast: bool,
        layout: FrameLayout,
        batch: torch.Size,
        ends: list[bool] | None,
        resets: list[bool] | None,
    ) -> None:
        """Feeds one tick's converted CPU frames to the tracks (``fast``: from the CPU)."""
        lead = len(batch)
        if lead == 0:
            self._ensure_tracks(1, layout)
            if fast and layout.identity and self._keeps_every_frame():
                self._fast, self._fast_shape = self._tracks[0], frames.shape  # raw's: identity
            self._tracks[0].feed(frames, bool(ends and ends[0]), resets is not None)
        else:
            n_env = _numel(batch)
            self._ensure_tracks(n_env, layout)
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
            self._tracks[0].feed(
                self._grid.tile(frames), bool(ends and all(ends)), resets is not None
            )
        elif n_env == 1:
            self._tracks[0].feed(frames[0], bool(ends and ends[0]), resets is not None)
        else:
            for i, stream in enumerate(self._tracks):
                if resets is None or resets[i]:
                    stream.feed(frames[i], bool(ends and ends[i]), resets is not None)

    def _record_batch(self, tensordict: TensorDictBase) -> None:
        self._clock.tick(tensordict.batch_size)
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
        self._ensure_tracks(n_env, layout)
        frame_bytes = max(1, n_env * layout.height * layout.width * 3)
        block = max(1, _BATCH_BLOCK_BYTES // frame_bytes)
        on_device = self._copies.wanted(raw)
        for start in range(0, steps, block):
            chunk = raw[:, start : start + block]
            if on_device:  # block k is copied while block k - 1 is fed
                self._copies.push(
                    {"frames": layout.convert_on_device(chunk)},
                    functools.partial(self._feed_copied_block, start=start, ends=ends),
                )
            else:
                self._feed_block(layout.convert(chunk), start, ends)
        self._copies.drain()
        if ends is not None and any(any(row) for row in ends):
            # A batch's ended episodes are in the files when extend() returns (a kill after
            # it keeps them); the step loop does not wait (the writer thread catches up).
            self._spool.writer.sync()

    def _feed_copied_block(
        self, host: dict[str, Any], start: int, ends: list[list[bool]] | None
    ) -> None:
        self._feed_block(host["frames"], start, ends)

    def _feed_block(self, frames: torch.Tensor, start: int, ends: list[list[bool]] | None) -> None:
        """Feeds a batch's steps ``start...`` (frames ``(n_env, steps, h, w, 3)``) to the tracks."""
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

        Videos are named for what they hold: ``<tag>`` (every frame since the previous
        dump), ``<tag>_ep<i>`` (episode ``i``, with ``episode_trigger`` / ``step_trigger``),
        with ``_env<j>`` for sub-env ``j`` (``make_grid=False``) before ``_ep``, and
        ``_<suffix>`` after the tag. A :class:`~trlrec.loggers.CSVLogger` writes
        ``videos/<name>_<step>.mp4``.

        Args:
            suffix: appended to the video names as ``<tag>_<suffix>``.
            step: the step passed to ``log_video``. Default: the env frames this recorder
                has seen (steps times sub-envs; reset frames not counted), as TorchRL's
                trainers count and as :meth:`TensorDictRecorder.dump
                <trlrec.TensorDictRecorder.dump>` logs; later if a video of the same
                name was already logged at that step from this spool directory (a second
                recorder with the same tag), so videos never share a name and step.

        After :meth:`close` it does nothing, as TorchRL's.
        """
        if self._closed:
            return
        if suffix is not None and not isinstance(suffix, str):
            raise VideoError(f"suffix must be a str or None, got {suffix!r}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise VideoError(f"step must be an int or None, got {step!r}")
        self._copies.drain()  # GPU frames still being copied
        self._dump(suffix, step)

    def _dump(self, suffix: str | None, step: int | None, closing: bool = False) -> None:
        for stream in self._tracks:
            stream.finish()
        self._clean_partials()
        if not self._spool.exists():
            return
        pending, claimed = self._spool.pending()
        try:
            for sidecar, meta in pending:
                self._send_once(sidecar, meta, suffix, step, closing)
        finally:
            self._spool.release(claimed)

    def _send_once(
        self,
        sidecar: Path,
        meta: dict[str, Any],
        suffix: str | None,
        step: int | None,
        closing: bool,
    ) -> None:
        """:meth:`_send`, raising a logger error once: where it happened, not again at close."""
        try:
            self._send(sidecar, meta, suffix, step)
        except Exception as err:
            self._errors += 1
            self._last_error = f"{type(err).__name__}: {err}"
            if closing and sidecar in self._failed:
                _log.info("VideoRecorder(tag=%r): %s stays in the spool", self.tag, sidecar)
                return
            self._failed.add(sidecar)
            raise
        self._failed.discard(sidecar)

    def _clean_partials(self) -> None:
        """Remove the partial mp4s of this tag left in the logger's directory by kills."""
        directory = getattr(self.logger, "videos_dir", None)
        if directory is None and getattr(self.logger, "experiment_dir", None) is not None:
            directory = Path(self.logger.experiment_dir) / "videos"
        if isinstance(directory, str | os.PathLike):
            remove_orphan_parts(Path(directory), self.tag)

    def _send(
        self, sidecar: Path, meta: dict[str, Any], suffix: str | None, step: int | None
    ) -> None:
        from trlrec.loggers.base import writing_to  # the loggers import TorchRL's logging

        path = frames_path(sidecar)
        height, width = int(meta["height"]), int(meta["width"])
        size = path.stat().st_size if path.exists() else 0
        count = size // (height * width * 3)
        if count and self.logger is not None:
            sending = meta.get("sending")
            if sending is not None:  # a kill interrupted its delivery: same name and step
                name, at = sending
            else:
                name = self._video_name(meta, suffix)
                at = self._spool.next_step(name, self._clock.frames) if step is None else step
                self._spool.mark(sidecar, meta, sending=[name, at])
            video = _frames_for(self.logger, path, torch.Size([count, height, width, 3]))
            kwargs = dict(self.video_kwargs)
            if meta.get("fps") is not None:
                kwargs.setdefault("fps", meta["fps"])
            frames = video.permute(0, 3, 1, 2).unsqueeze(0)
            with writing_to(self.logger, f"the video {name!r}"):
                self.logger.log_video(name=name, video=frames, step=at, **kwargs)  # TorchRL's
            self._sent += 1
            del video
            self._spool.mark(sidecar, meta, delivered=True)  # a kill from here: not re-sent
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)

    def _video_name(self, meta: dict[str, Any], suffix: str | None) -> str:
        """``<tag>[_<suffix>][_env<j>][_ep<i>]``: the name of a spooled video (see :meth:`dump`)."""
        name = self.tag if suffix is None else f"{self.tag}_{suffix}"
        if meta.get("env") is not None:
            name = f"{name}_env{meta['env']}"
        if meta.get("episode") is not None:
            name = f"{name}_ep{meta['episode']}"
        return name

    def close(self) -> None:
        """Sends what is left (as :meth:`dump`) and releases the spool. Idempotent.

        A video the logger already failed on (its error was raised by :meth:`dump`) is
        tried again, but a second failure is not raised: the frames stay in the spool for
        the next recorder with the same tag and spool directory.

        During interpreter shutdown nothing is sent: the frames stay in the spool for the
        next recorder with the same tag and spool directory.
        """
        if self._closed:
            return
        try:
            self._copies.drain()  # GPU frames still being copied
            if sys.is_finalizing():
                for stream in self._tracks:
                    stream.finish()
            else:
                self._dump(None, None, closing=True)
        finally:
            self._closed = True
            self._fast = None
            self._spool.close()
            _IN_WORKER.discard(self)

    def stats(self) -> dict[str, float | int | str | None]:
        """Health of the recorder, a cheap snapshot in the shape TorchRL's ``LoggerMonitor`` polls.

        Returns:
            A flat dict: ``frames`` (env frames seen), ``frames_spooled`` and
            ``videos_pending`` (this recorder's frames and videos on disk that the logger
            has not received yet: they survive a crash and go with the next
            :meth:`dump`, or a later recorder's of the same tag), ``videos_sent``,
            ``errors`` (logger failures, each also raised) and ``last_error`` (its text,
            or None; a monitor drops it, a str).

        Examples:
            >>> import tempfile, torch
            >>> from tensordict import TensorDict
            >>> from trlrec import VideoRecorder
            >>> from trlrec.loggers import MemoryLogger
            >>> vr = VideoRecorder(MemoryLogger("demo", log_dir=tempfile.mkdtemp()), tag="clip")
            >>> vr.extend(TensorDict(pixels=torch.zeros(4, 8, 8, 3, dtype=torch.uint8),
            ...     next=TensorDict(done=torch.zeros(4, 1, dtype=torch.bool), batch_size=[4]),
            ...     batch_size=[4]))
            >>> s = vr.stats()
            >>> s["frames_spooled"], s["videos_pending"], s["videos_sent"]
            (4, 1, 0)
            >>> vr.dump()
            >>> s = vr.stats()
            >>> s["frames_spooled"], s["videos_pending"], s["videos_sent"]
            (0, 0, 1)
            >>> vr.close()
        """
        open_ = [t.segment for t in self._tracks if t.segment is not None]
        frames = sum(s.frames for s in open_)
        videos = len(open_)
        open_files = {s.frames_file for s in open_}
        if self._spool.exists():
            for sidecar in self._spool.directory.glob(f"*.{self._spool.recorder}.*.video.json"):
                if str(frames_path(sidecar)) in open_files:
                    continue
                try:
                    meta = read_sidecar(sidecar)
                    size = frames_path(sidecar).stat().st_size
                except (OSError, ValueError):  # sent and removed meanwhile, or damaged
                    continue
                if meta is None or meta.get("delivered"):
                    continue
                videos += 1
                frames += size // max(1, int(meta["height"]) * int(meta["width"]) * 3)
        return {
            "frames": self._clock.frames,
            "frames_spooled": frames,
            "videos_pending": videos,
            "videos_sent": self._sent,
            "errors": self._errors,
            "last_error": self._last_error,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"VideoRecorder(tag={self.tag!r}) was used after close()")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tag={self.tag!r}, in_keys={self.in_keys}, skip={self.skip}, "
            f"make_grid={self.make_grid}, max_frames={self.max_frames})"
        )


# ----------------------------------------------------------------------------- helpers

_IN_WORKER: weakref.WeakSet[VideoRecorder] = weakref.WeakSet()
_WORKER_EXIT_PID = [0]  # the process whose exit closes the recorders of _IN_WORKER


def _watch_in_worker(recorder: VideoRecorder) -> None:
    """In a ``multiprocessing`` worker, close ``recorder`` when the worker ends normally.

    A worker's recorder is out of reach (TorchRL's collectors and ``ParallelEnv`` build
    the env in the worker, and do not close a plain ``EnvBase``'s transforms): at the
    worker's normal end its videos are finished and sent to its logger, once, as a
    :meth:`VideoRecorder.close` does. In the main process nothing changes: at exit the
    frames stay in the spool for the next recorder with the same tag.
    """
    if multiprocessing.parent_process() is None:
        return
    _IN_WORKER.add(recorder)
    if _WORKER_EXIT_PID[0] != os.getpid():
        _WORKER_EXIT_PID[0] = os.getpid()
        multiprocessing.util.Finalize(None, _close_in_worker, exitpriority=100)


def _close_in_worker() -> None:
    for recorder in list(_IN_WORKER):
        try:
            recorder.close()
        except Exception:  # at the worker's exit there is no caller left to raise to: log it
            _log.exception("closing %r at the worker's exit failed", recorder)


def _frames_for(logger: Any, path: Path, shape: torch.Size) -> torch.Tensor:
    """The ``(T, H, W, 3)`` frames of a spool file, as the logger may have them.

    trlrec's loggers stream a video during ``log_video`` and keep nothing: they get a
    zero-copy memory map. Any other logger (TorchRL's, a ``ProcessLogger`` or Ray
    client) may keep, pickle or send it to another process, which a memory map of a file
    does not survive: it gets a tensor of its own, in RAM.
    """
    from trlrec.loggers.base import Logger

    # not isinstance(): TorchRL's metaclass counts a service owner as the class it runs
    if Logger in type(logger).__mro__:
        return MemoryMappedTensor.from_filename(path, dtype=torch.uint8, shape=shape)
    frames = np.fromfile(path, dtype=np.uint8, count=math.prod(shape))
    return torch.from_numpy(frames.reshape(tuple(shape)))


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _host_flags(flags: Any, lead: int) -> list[bool] | None:
    """Flags as a list (a tensor's read with :func:`_flags`)."""
    return _flags(flags, lead) if isinstance(flags, torch.Tensor) else flags


def _flags(value: Any, lead: int) -> list[bool] | None:
    """Per-env booleans from a ``done``/``_reset`` entry of shape ``(*env_batch, ...)``."""
    if value is None:
        return None
    if lead == 0:
        return [bool(value.any())] if value.numel() != 1 else [bool(value.item())]
    return value.reshape(_numel(value.shape[:lead]), -1).any(-1).tolist()


class _FrameClock:
    """The env frames a recorder has seen: its default logging step (see ``dump``)."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    def tick(self, batch_size: Sequence[int]) -> None:
        """Count one step of an env (or a batch of steps) of this batch size."""
        self.frames += _numel(batch_size)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VideoError(f"{name} must be an int >= 1, got {value!r}")
    return value
