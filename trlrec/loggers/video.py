"""The ``Video`` value: what ``log_video`` accepts, checked once and streamed frame by frame.

The layout is TorchRL's: uint8 ``(T, C, H, W)`` or ``(N, T, C, H, W)`` (``N`` videos
tiled into one grid video, as TorchRL's ``VideoRecorder(make_grid=True)`` does), with
``C`` in 1 (grey), 3 (RGB) or 4 (RGBA, alpha dropped). The frames may come as a torch
tensor (a ``MemoryMappedTensor`` too: it is read one frame at a time, never loaded
whole), a numpy array, a list of frames, or an iterator of frames, each frame being
``(C, H, W)`` (or ``(N, C, H, W)`` to tile). Float frames must lie in ``[0, 1]`` and are
scaled to uint8.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trlrec.errors import VideoError

__all__ = ["Video"]

_CHANNELS = (1, 3, 4)
_LAYOUT = "uint8 (T, C, H, W) or (N, T, C, H, W) with C in (1, 3, 4)"


def _dtype_name(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else type(x).__name__


def _is_float(x: Any) -> bool:
    dtype = x.dtype
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return np.issubdtype(dtype, np.floating)


def _is_uint8(x: Any) -> bool:
    return x.dtype in (torch.uint8, np.uint8)


def _check_dtype(x: Any, what: str) -> None:
    if not (_is_uint8(x) or _is_float(x)):
        raise VideoError(
            f"{what} has dtype {_dtype_name(x)}; expected uint8 (0-255) or float in [0, 1]. "
            "Convert it, e.g. video.to(torch.uint8) or video.astype(np.uint8)"
        )


def _check_layout(shape: tuple[int, ...], what: str) -> None:
    """Check that the trailing dims of ``shape`` are (C, H, W) and nothing is empty."""
    if len(shape) < 3:
        raise VideoError(f"{what} has shape {shape}; expected {_LAYOUT}")
    c = shape[-3]
    if c not in _CHANNELS:
        hint = ""
        if shape[-1] in _CHANNELS:
            order = ", ".join(str(i) for i in (*range(len(shape) - 3), len(shape) - 1))
            hint = (
                f"; it looks channels-last (..., H, W, C): permute it, "
                f"e.g. video.permute({order}, {len(shape) - 3}, {len(shape) - 2})"
            )
        raise VideoError(
            f"{what} has shape {shape}: {c} channels at dim -3; expected {_LAYOUT}{hint}"
        )
    if 0 in shape:
        raise VideoError(f"{what} has shape {shape} with an empty dimension; nothing to encode")


def _to_numpy(frame: Any) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        frame = frame.detach()
        if frame.device.type != "cpu":
            frame = frame.cpu()
        if frame.is_floating_point() and frame.dtype not in (torch.float32, torch.float64):
            frame = frame.float()
        return frame.numpy()
    return np.asarray(frame)


def _frame_to_uint8(frame: np.ndarray, index: int) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    if not np.issubdtype(frame.dtype, np.floating):
        raise VideoError(
            f"frame {index} has dtype {frame.dtype}; expected uint8 or float in [0, 1]. "
            "Convert the frames to uint8"
        )
    lo, hi = float(np.min(frame)), float(np.max(frame))
    if not (lo >= 0.0 and hi <= 1.0):  # written so that NaN fails too
        raise VideoError(
            f"float frame {index} has values in [{lo}, {hi}]; float frames must lie in [0, 1]. "
            "Divide by 255, or pass uint8 frames"
        )
    return (frame * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Video:
    """A validated video: frames that ``log_video`` can stream to an encoder.

    Build one with :meth:`Video.of`, which checks the layout and dtype once (without
    reading a tensor's data); :meth:`frames` then yields RGB ``(H, W, 3)`` uint8 numpy
    frames one at a time, the ``N`` videos of a 5-D input tiled into a grid.

    Attributes:
        source: the caller's object (tensor, array, sequence or iterator of frames).
        num_frames: ``T``, or ``None`` for an iterator (its length is unknown).
        num_videos: ``N``, the number of videos tiled per frame (1 for 4-D input).
        channels: ``C`` of the input (1, 3 or 4); the output is always RGB.
        tile_height: ``H`` of one input video.
        tile_width: ``W`` of one input video.

    Examples:
        >>> import torch
        >>> v = Video.of(torch.zeros(2, 5, 3, 8, 6, dtype=torch.uint8))
        >>> v.num_frames, v.grid, (v.height, v.width)
        (5, (1, 2), (8, 12))
        >>> next(v.frames()).shape
        (8, 12, 3)
    """

    source: Any = field(repr=False)
    num_frames: int | None
    num_videos: int
    channels: int
    tile_height: int
    tile_width: int
    frame_shape: tuple[int, ...] = field(default=(), repr=False)
    _iterator: bool = field(default=False, repr=False)

    @classmethod
    def of(cls, video: Any) -> Video:
        """Check ``video`` and wrap it; a ``Video`` is returned unchanged.

        Args:
            video: uint8 or float ``(T, C, H, W)`` / ``(N, T, C, H, W)`` tensor or
                array, or a list or iterator of ``(C, H, W)`` / ``(N, C, H, W)`` frames.

        Returns:
            The checked video.

        Raises:
            VideoError: for a wrong number of dimensions, channels, an empty video,
                an unsupported dtype or an empty iterator; the message names what
                was received and how to fix it.
        """
        if isinstance(video, Video):
            return video
        if isinstance(video, torch.Tensor | np.ndarray):
            return cls._of_array(video)
        if isinstance(video, str | bytes) or not isinstance(video, Iterable):
            raise VideoError(
                f"cannot make a video from {type(video).__name__}; expected a tensor or array "
                f"({_LAYOUT}) or an iterable of (C, H, W) frames"
            )
        if isinstance(video, Sequence):
            if len(video) == 0:
                raise VideoError("the sequence of frames is empty; nothing to encode")
            first = video[0]
            return cls._of_frames(video, first, num_frames=len(video), iterator=False)
        it = iter(video)
        try:
            first = next(it)
        except StopIteration:
            raise VideoError("the iterator of frames is empty; nothing to encode") from None
        return cls._of_frames(itertools.chain([first], it), first, num_frames=None, iterator=True)

    @classmethod
    def _of_array(cls, video: torch.Tensor | np.ndarray) -> Video:
        shape = tuple(video.shape)
        what = f"video of shape {shape} and dtype {_dtype_name(video)}"
        if len(shape) not in (4, 5):
            hint = ""
            if len(shape) == 3:
                hint = "; for a single frame add a time dimension, e.g. video[None]"
            raise VideoError(f"{what} has {len(shape)} dimensions; expected {_LAYOUT}{hint}")
        _check_layout(shape, what)
        _check_dtype(video, what)
        n = shape[0] if len(shape) == 5 else 1
        c, h, w = shape[-3:]
        frame_shape = (n, c, h, w) if len(shape) == 5 else (c, h, w)
        return cls(video, shape[-4], n, c, h, w, frame_shape)

    @classmethod
    def _of_frames(
        cls, source: Any, first: Any, *, num_frames: int | None, iterator: bool
    ) -> Video:
        if not isinstance(first, torch.Tensor | np.ndarray):
            first = np.asarray(first)
        shape = tuple(first.shape)
        what = f"frame 0 of shape {shape} and dtype {_dtype_name(first)}"
        if len(shape) not in (3, 4):
            raise VideoError(
                f"{what}: each frame must be (C, H, W) or (N, C, H, W), C in (1, 3, 4)"
            )
        _check_layout(shape, what)
        _check_dtype(first, what)
        # Check the values of the first frame now, so that the common mistake (floats
        # in [0, 255]) is reported before anything is written.
        _frame_to_uint8(_to_numpy(first), 0)
        n = shape[0] if len(shape) == 4 else 1
        c, h, w = shape[-3:]
        return cls(source, num_frames, n, c, h, w, shape, iterator)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the tiling, as TorchRL's ``_make_video_grid``."""
        cols = math.ceil(math.sqrt(self.num_videos))
        return math.ceil(self.num_videos / cols), cols

    @property
    def height(self) -> int:
        """Height of the output frames (the whole grid)."""
        return self.grid[0] * self.tile_height

    @property
    def width(self) -> int:
        """Width of the output frames (the whole grid)."""
        return self.grid[1] * self.tile_width

    def _raw_frames(self) -> Iterator[Any]:
        src = self.source
        if isinstance(src, torch.Tensor | np.ndarray):
            if src.ndim == 5:
                for t in range(src.shape[1]):
                    yield src[:, t]
            else:
                yield from src
            return
        if self._iterator:
            try:
                first = next(src)
            except StopIteration:
                raise VideoError(
                    "this Video was made from an iterator that has already been streamed; "
                    "build a new Video (or pass a tensor or list to stream it twice)"
                ) from None
            yield first
        yield from src

    def frames(self) -> Iterator[np.ndarray]:
        """Yield the frames one at a time as C-contiguous RGB ``(H, W, 3)`` uint8 arrays.

        Raises:
            VideoError: when a frame differs in shape from the first, has another
                dtype, or (float) lies outside ``[0, 1]``.
        """
        cols = self.grid[1]
        for index, raw in enumerate(self._raw_frames()):
            frame = _to_numpy(raw)
            if frame.shape != self.frame_shape:
                raise VideoError(
                    f"frame {index} has shape {frame.shape}, but the video's frames are "
                    f"{self.frame_shape}; all frames must have one shape"
                )
            frame = _frame_to_uint8(frame, index)
            if frame.ndim == 3:
                frame = frame[None]
            if self.channels == 1:
                frame = np.repeat(frame, 3, axis=1)
            elif self.channels == 4:
                frame = frame[:, :3]
            hwc = frame.transpose(0, 2, 3, 1)  # (N, H, W, 3)
            if self.num_videos == 1:
                yield np.ascontiguousarray(hwc[0])
                continue
            out: np.ndarray = np.zeros((self.height, self.width, 3), dtype=np.uint8)
            th, tw = self.tile_height, self.tile_width
            for i in range(self.num_videos):
                r, c = divmod(i, cols)
                out[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = hwc[i]
            yield out

    def to_tensor(self) -> torch.Tensor:
        """All frames as one RGB uint8 tensor ``(T, 3, H, W)`` (loads the video in RAM)."""
        frames = [torch.from_numpy(f).permute(2, 0, 1) for f in self.frames()]
        return torch.stack(frames)
