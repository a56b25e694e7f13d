"""Frames stored in a store to an mp4 file, streamed one frame at a time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from trlrec.cli.columns import episode_column, find_entry, key_name
from trlrec.errors import VideoError
from trlrec.loggers.mp4 import DEFAULT_FPS, encode_mp4
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry

__all__ = ["export_video"]

_CHANNELS = (1, 3, 4)


def _layout(entry: Entry) -> str:
    """``"hw"``, ``"hwc"`` or ``"chw"`` for the feature shape of a frame key."""
    shape = entry.shape
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        hwc, chw = shape[-1] in _CHANNELS, shape[0] in _CHANNELS
        if hwc or chw:
            return "chw" if chw and (not hwc or shape[0] < shape[-1]) else "hwc"
    raise VideoError(
        f"key {key_name(entry.stored_key)!r} has frames of shape {entry.shape}; expected "
        "(H, W), (H, W, C) or (C, H, W) with C in (1, 3, 4)"
    )


def _frames(reader: TrajectoryReader, episode: int, entry: Entry) -> Iterator[torch.Tensor]:
    layout = _layout(entry)
    for piece in episode_column(reader, episode, entry, with_last=True):
        for frame in piece:
            if layout == "hw":
                yield frame.unsqueeze(0)
            elif layout == "hwc":
                yield frame.permute(2, 0, 1)
            else:
                yield frame


def export_video(
    reader_or_path: TrajectoryReader | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key: str = "pixels",
    episode: int = 0,
    fps: float = DEFAULT_FPS,
) -> tuple[Path, int]:
    """Encode the frames of one episode to an H.264 mp4, streaming from the memory maps.

    A state key gives the episode's ``T + 1`` observations; a root- or next-only key
    its ``T`` values. Frames may be uint8 or floats in ``[0, 1]``, ``(H, W)``,
    ``(H, W, C)`` or ``(C, H, W)``.

    Args:
        reader_or_path: a reader or a store directory.
        out: the mp4 file to write (it appears only once complete).
        key: the frame key (``"pixels"``, ``"next/pixels"``...).
        episode: the episode index (negative counts from the end).
        fps: frames per second.

    Returns:
        The path written and the number of frames.

    Raises:
        SchemaError: the store has no such key.
        IndexError: no such episode.
        VideoError: the key does not hold frames.
        EncoderError: ffmpeg failed.
    """
    reader = (
        reader_or_path
        if isinstance(reader_or_path, TrajectoryReader)
        else TrajectoryReader(reader_or_path)
    )
    entry = find_entry(reader, key)
    n = reader.num_episodes
    if not isinstance(episode, int) or not -n <= episode < n:
        raise IndexError(f"episode {episode!r} is out of range: the store has {n} episodes")
    episode %= n
    count = reader.episode_info(episode)["num_steps"] + (1 if entry.role == "state" else 0)
    path = encode_mp4(_frames(reader, episode, entry), out, fps)
    return path, count
