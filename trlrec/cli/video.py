"""Frames stored in a store to an mp4 or GIF file, streamed one frame at a time."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from trlrec.cli import DEFAULT_KEY
from trlrec.cli.columns import episode_column, find_entry, key_name, parse_key, require_entries
from trlrec.errors import ConfigError, SchemaError, VideoError
from trlrec.loggers.mp4 import DEFAULT_FPS, FfmpegWriter, Mp4Writer
from trlrec.loggers.video import Video
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry

__all__ = ["FORMATS", "GifWriter", "export_video", "frame_key"]

_CHANNELS = (1, 3, 4)


class GifWriter(FfmpegWriter):
    """Stream frames into an animated GIF with a palette computed from the whole video.

    ffmpeg holds the frames until the end to compute the palette (``palettegen``), so a
    GIF costs memory in the ffmpeg process that an mp4 does not; GIFs are for short clips.
    """

    container = "gif"

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float = DEFAULT_FPS,
        *,
        fsync: bool = False,
    ) -> None:
        graph = "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse"
        super().__init__(path, width, height, fps, output_args=["-vf", graph], fsync=fsync)


FORMATS: dict[str, type[FfmpegWriter]] = {".mp4": Mp4Writer, ".gif": GifWriter}
"""The file extensions ``trlrec video`` writes, and the writer of each."""


def _writer_for(out: Path) -> type[FfmpegWriter]:
    writer = FORMATS.get(out.suffix.lower())
    if writer is None:
        raise ConfigError(
            f"cannot write a video named {str(out)!r}: the extension {out.suffix or '(none)'!r} "
            f"is not one trlrec writes; name the file with one of {sorted(FORMATS)}"
        )
    return writer


def frame_key(reader: TrajectoryReader, key: str) -> tuple[Entry, bool]:
    """The schema entry of a frame key, and whether it names a state key's ``next`` side.

    A state key is stored once for the root and ``next`` (an episode's ``T + 1``
    observations), so ``next/pixels`` names the same column as ``pixels``, shifted by one:
    the episode's ``T`` next observations.

    Raises:
        SchemaError: the store has no such key (the message lists the keys it has).
    """
    try:
        return find_entry(reader, key), False
    except SchemaError:
        wanted = parse_key(key)
        if len(wanted) > 1 and wanted[0] == "next":
            for entry in require_entries(reader):
                if entry.role == "state" and entry.key == wanted[1:]:
                    return entry, True
        raise


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


def _frames(
    reader: TrajectoryReader, episode: int, entry: Entry, skip_first: bool
) -> Iterator[torch.Tensor]:
    layout = _layout(entry)
    first = skip_first
    for piece in episode_column(reader, episode, entry, with_last=True):
        for frame in piece:
            if first:
                first = False
                continue
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
    key: str = DEFAULT_KEY,
    episode: int = 0,
    fps: float = DEFAULT_FPS,
) -> tuple[Path, int]:
    """Encode the frames of one episode to a video file, streaming from the memory maps.

    The extension of ``out`` chooses the format (:data:`FORMATS`): ``.mp4`` (H.264) or
    ``.gif``. A state key gives the episode's ``T + 1`` observations (``next/<key>``: the
    ``T`` next ones); a root- or next-only key its ``T`` values. Frames may be uint8 or
    floats in ``[0, 1]``, ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``.

    Args:
        reader_or_path: a reader or a store directory.
        out: the file to write (it appears only once complete).
        key: the frame key (``"pixels"``, ``"next/pixels"``...).
        episode: the episode index (negative counts from the end).
        fps: frames per second.

    Returns:
        The path written and the number of frames.

    Raises:
        ConfigError: an extension trlrec does not write, or no such episode.
        SchemaError: the store has no such key.
        VideoError: the key does not hold frames.
        EncoderError: ffmpeg failed.
    """
    out = Path(out)
    writer_cls = _writer_for(out)
    reader = (
        reader_or_path
        if isinstance(reader_or_path, TrajectoryReader)
        else TrajectoryReader(reader_or_path)
    )
    entry, shifted = frame_key(reader, key)
    n = reader.num_episodes
    if isinstance(episode, bool) or not isinstance(episode, int) or not -n <= episode < n:
        raise ConfigError(
            f"episode {episode!r} is out of range: the store has {n} episodes "
            f"(0 to {n - 1}, or -{n} to -1 from the end)"
        )
    episode %= n
    video = Video.of(_frames(reader, episode, entry, shifted))
    with writer_cls(out, video.width, video.height, fps) as writer:
        writer.write_video(video)
    return out, writer.num_frames
