"""Frames of any supported layout made into contiguous RGB ``uint8`` ``(H, W, 3)``.

Supported layouts (detected from the first frame's shape and dtype, after the batch
dims): ``(H, W)`` grey, ``(H, W, C)`` or ``(C, H, W)`` with ``C`` = 1 (grey, expanded to
RGB), 3 (RGB) or 4 (RGBA, alpha dropped); ``uint8`` in [0, 255], other integers
(clamped), floats in [0, 1] (scaled by 255); torch tensors, numpy arrays and
``NonTensorData`` / ``NonTensorStack`` holding them (:func:`as_frame_tensor`).

:class:`FrameLayout` converts (and center-crops, without torchvision) a batch of frames
of one layout; :class:`FrameGrid` tiles the frames of ``E`` sub-envs into one frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tensordict import NonTensorData, NonTensorStack
from tensordict.utils import NestedKey

from trlrec.errors import VideoError

__all__ = ["LAYOUT_HELP", "as_frame_tensor", "crop_size", "FrameLayout", "FrameGrid"]

_CHANNELS = (1, 3, 4)
LAYOUT_HELP = (
    "frames must be (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4, as uint8 in [0, 255] "
    "or float in [0, 1]"
)
"""The supported layouts, in words, for error messages."""


def as_frame_tensor(value: Any, key: NestedKey) -> torch.Tensor:
    """A tensor view of a frame entry: a tensor, numpy array or non-tensor data holding one.

    Args:
        value: what the tensordict holds under ``key``.
        key: the entry's key, named in error messages.

    Returns:
        ``value`` itself when it is a tensor, else a tensor sharing or copying its data
        (lists of arrays are stacked; read-only or negatively strided arrays are copied).

    Raises:
        VideoError: for non-numeric data, lists of arrays of different shapes, or
            objects that hold no array.
    """
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
                f"(shape {value.shape}); {LAYOUT_HELP}"
            )
        if not value.flags.writeable or any(s < 0 for s in value.strides):
            value = np.array(value)
        return torch.from_numpy(value)
    raise VideoError(
        f"frames under {key!r} must be tensors, numpy arrays or non-tensor data holding "
        f"them, got {type(value).__name__}"
    )


def crop_size(value: Any) -> tuple[int, int] | None:
    """A ``center_crop`` argument as ``(height, width)``, or None for no crop.

    Args:
        value: None or 0 (no crop), a positive int (a square) or ``(height, width)``.

    Raises:
        VideoError: for anything else.
    """
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


class FrameLayout:
    """How frames of one shape and dtype become contiguous RGB ``uint8`` ``(..., h, w, 3)``.

    Args:
        key: the frame key, named in error messages.
        frame_shape: the shape of one frame (after the batch dims).
        full_shape: the shape of the whole entry, for error messages.
        dtype: the frames' dtype.
        center_crop: ``(height, width)`` of a centred crop (clipped to the frame), or None.

    Attributes:
        height: the output frame height (after the crop).
        width: the output frame width (after the crop).
        identity: True when frames are already RGB ``uint8`` ``(H, W, 3)`` and uncropped.

    Raises:
        VideoError: for a shape or dtype that is not a supported layout.
    """

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
            raise VideoError(f"frames under {key!r} have non-numeric dtype; {got}. {LAYOUT_HELP}")
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
                    f"{LAYOUT_HELP}. Convert 2-channel or multi-frame stacks to RGB first."
                )
            self.chw = chw_ok and (not hwc_ok or first < last)
            if self.chw:
                self.channels, height, width = frame_shape
            else:
                height, width, self.channels = frame_shape
        else:
            raise VideoError(
                f"frames under {key!r} have rank {self.rank} after the batch dims ({got}); "
                f"{LAYOUT_HELP}. Pass in_keys pointing at the image entry."
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
        """Frames ``(..., <frame_shape>)`` to contiguous CPU ``uint8`` ``(..., h, w, 3)``.

        Already contiguous RGB ``uint8`` CPU frames are returned as they are (not copied).
        """
        x = self.convert_on_device(raw)
        if x.device.type != "cpu":
            x = x.cpu()
        return x.contiguous()

    def convert_on_device(self, raw: torch.Tensor) -> torch.Tensor:
        """:meth:`convert` where the frames are (a GPU's frames stay on it), maybe strided."""
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
        return x


class FrameGrid:
    """Tiles ``n`` frames ``(h, w, 3)`` into one ``(rows * h, cols * w, 3)`` frame.

    The grid is as square as possible (``cols = ceil(sqrt(n))``); unused cells stay black.
    One buffer is reused: the frame :meth:`tile` returns is overwritten by the next call.
    """

    __slots__ = ("buffer", "cols", "view")

    def __init__(self, n: int, height: int, width: int) -> None:
        self.cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / self.cols)
        self.buffer = torch.zeros(rows * height, self.cols * width, 3, dtype=torch.uint8)
        self.view = self.buffer.view(rows, height, self.cols, width, 3)

    def tile(self, frames: torch.Tensor) -> torch.Tensor:
        """Copies ``frames`` ``(n, h, w, 3)`` into the grid buffer and returns the buffer."""
        for i in range(frames.shape[0]):
            row, col = divmod(i, self.cols)
            self.view[row, :, col].copy_(frames[i])
        return self.buffer
