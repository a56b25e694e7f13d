"""The video state of one sub-env (or of a grid of them): episodes, triggers, the open segment.

A :class:`Track` receives one RGB ``uint8`` ``(H, W, 3)`` frame per step with the
step's episode-end and reset flags, decides (``skip``, ``max_frames``, episode and step
triggers) whether the frame is kept, and appends kept frames to its open spool
:class:`~trlrec.video.spool.Segment`, opening one when needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from trlrec.errors import TrlrecError
from trlrec.video.spool import Segment, Spool

__all__ = ["TrackSettings", "Track"]


class TrackSettings(Protocol):
    """What a :class:`Track` reads from its recorder (read at every step: may change)."""

    episode_trigger: Callable[[int], bool] | None
    step_trigger: Callable[[int], bool] | None
    skip: int
    max_frames: int | None
    fps: float | None


class Track:
    """The video state of one sub-env (``env``), or of the only / grid video (``env=None``).

    Without triggers every episode goes into one video until :meth:`finish` (the
    recorder's ``dump()``); with a trigger, each triggered episode (or run of frames from
    a triggering step to its episode end or ``max_frames``) is a video of its own.

    Args:
        settings: the recorder whose ``skip``, ``max_frames``, ``fps`` and triggers apply.
        env: the sub-env index (None for the only or the grid video).
        spool: where segments are opened.

    Attributes:
        count: frames seen (kept or not): the step trigger's index.
        episode: index of the current episode (-1 before the first frame).
        segment: the open segment, or None.
    """

    __slots__ = (
        "count",
        "env",
        "episode",
        "new_episode",
        "recording",
        "segment",
        "settings",
        "spool",
    )

    def __init__(self, settings: TrackSettings, env: int | None, spool: Spool) -> None:
        self.settings = settings
        self.env = env
        self.spool = spool
        self.count = 0
        self.episode = -1
        self.new_episode = True
        self.recording = settings.episode_trigger is None and settings.step_trigger is None
        self.segment: Segment | None = None

    def feed(self, frame: torch.Tensor, end: bool, reset: bool) -> None:
        """Takes one frame (written at once if kept) and the step's flags.

        Args:
            frame: contiguous CPU ``uint8`` ``(H, W, 3)``; copied before this returns.
            end: the episode ends with this frame (the frames copied so far are handed
                to the writer thread).
            reset: the frame is the first of a new episode (a reset).
        """
        settings = self.settings
        triggered = settings.episode_trigger is not None or settings.step_trigger is not None
        if reset or self.new_episode:
            self.episode += 1
            if settings.episode_trigger is not None:
                self.finish()
                self.recording = bool(settings.episode_trigger(self.episode))
        if not self.recording and settings.step_trigger is not None:
            self.recording = bool(settings.step_trigger(self.count))
        if self.recording and self.count % settings.skip == 0:
            segment = self.segment
            if segment is None:
                segment = self.segment = self.spool.open_segment(
                    self.env,
                    int(frame.shape[0]),
                    int(frame.shape[1]),
                    settings.fps,
                    self.episode if triggered else None,
                )
            if settings.max_frames is None or segment.frames < settings.max_frames:
                self._write(segment, frame)
            elif triggered:
                self.finish()
                self.recording = False
        self.count += 1
        self.new_episode = end
        if end and self.segment is not None:
            if triggered:
                self.finish()
                self.recording = False
            else:
                self.segment.end_episode()

    def feed_every(self, frame: torch.Tensor, end: bool) -> None:
        """:meth:`feed` of a step (not a reset) when the recorder keeps every frame.

        Only valid without triggers, with ``skip=1`` and no ``max_frames`` (the recorder
        checks): the step loop's path, with the fewest checks.
        """
        segment = self.segment
        if segment is None or self.new_episode or not self.recording:
            self.feed(frame, end, False)
            return
        self._write(segment, frame)
        self.count += 1
        if end:
            self.new_episode = True
            segment.end_episode()

    def _write(self, segment: Segment, frame: torch.Tensor) -> None:
        try:
            segment.write(frame)
        except TrlrecError:
            self.segment = None  # failed and closed: the next frame opens a new file
            raise

    def finish(self) -> None:
        """Closes the open segment (its video is complete on disk), if any.

        Raises:
            StoreWriteError: writing the segment's frames failed (its whole frames stay).
        """
        segment, self.segment = self.segment, None
        if segment is not None:
            segment.close()
