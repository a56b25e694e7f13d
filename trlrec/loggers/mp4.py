"""The shared streaming video encoder: frames piped one at a time to imageio-ffmpeg's ffmpeg.

The encoding itself runs in the ffmpeg subprocess, in parallel with the caller, who
only converts a frame and writes it to the pipe; the pipe is the bounded queue
between them, so memory does not grow with the length of the video. The file is
written under a hidden temporary name in the destination directory and renamed
when ffmpeg has finished, so a half-written video never appears under its name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from trlrec.closing import Closeable
from trlrec.errors import ClosedError, EncoderError, MissingDependencyError, VideoError
from trlrec.loggers.video import Video

__all__ = ["DEFAULT_FPS", "FfmpegWriter", "Mp4Writer", "encode_mp4"]

_log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
"""Frames per second of a video when neither the logger nor the call says otherwise."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg.

    Raises:
        MissingDependencyError: when imageio-ffmpeg (or its binary) is missing.
    """
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as err:
        raise MissingDependencyError(
            f"encoding videos needs imageio-ffmpeg's ffmpeg ({err}); "
            "pip install 'imageio-ffmpeg>=0.5'"
        ) from err


def _check_fps(fps: float) -> Fraction:
    try:
        value = Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError):
        value = Fraction(-1)
    if not value > 0:
        raise VideoError(f"fps must be a positive number, got {fps!r}")
    return value


class FfmpegWriter(Closeable):
    """Stream raw RGB frames to an ffmpeg process writing ``path`` atomically.

    Subclasses choose the output arguments (codec, filters, container). Use as a
    context manager: leaving the block normally finishes the file; leaving it with
    an exception (or calling :meth:`abort`) removes the temporary file.

    Args:
        path: the final file name.
        width: frame width in pixels, as the frames passed to :meth:`write`.
        height: frame height in pixels.
        fps: frames per second.
        output_args: ffmpeg arguments placed between the input and the output file.
        fsync: fsync the file before renaming it to ``path``.
    """

    #: ffmpeg muxer name for the temporary file (which has no telling extension).
    container = "mp4"

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float = DEFAULT_FPS,
        *,
        output_args: Sequence[str] = (),
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.width = int(width)
        self.height = int(height)
        self.fps = _check_fps(fps)
        self.fsync = fsync
        self.num_frames = 0
        self._shape = (self.height, self.width, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(
            f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
        )
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives with ffmpeg
        in_w, in_h = self._input_size(self.width, self.height)
        cmd = [
            ffmpeg_exe(),
            "-nostdin",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{in_w}x{in_h}",
            "-r",
            str(self.fps),
            "-i",
            "pipe:0",
            "-an",
            *output_args,
            "-f",
            self.container,
            str(self._tmp),
        ]
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as err:
            self._stderr.close()
            raise EncoderError(f"could not start ffmpeg for {self.path}: {err}") from err

    def _ffmpeg_output(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text[-2000:] or "(ffmpeg printed nothing)"

    def _input_size(self, width: int, height: int) -> tuple[int, int]:
        """Size of the frames ffmpeg receives (after :meth:`_prepare`)."""
        return width, height

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """Turn one ``(height, width, 3)`` uint8 frame into what ffmpeg receives."""
        return frame

    def write(self, frame: np.ndarray) -> None:
        """Send one RGB ``(height, width, 3)`` uint8 frame to the encoder.

        Raises:
            VideoError: for a frame of another shape or dtype.
            EncoderError: when ffmpeg has failed (its output is in the message).
            ClosedError: after :meth:`close` or :meth:`abort`.
        """
        if self._proc is None:
            raise ClosedError(f"the writer of {self.path} is closed; open a new one")
        if frame.shape != self._shape or frame.dtype != np.uint8:
            raise VideoError(
                f"frame {self.num_frames} for {self.path.name} has shape {frame.shape} and "
                f"dtype {frame.dtype}; this writer takes uint8 {self._shape} frames"
            )
        data = np.ascontiguousarray(self._prepare(frame))
        stdin = self._proc.stdin
        if stdin is None:  # pragma: no cover - Popen was given stdin=PIPE
            raise EncoderError("ffmpeg has no input pipe")
        try:
            stdin.write(memoryview(data).cast("B"))
        except (BrokenPipeError, OSError) as err:
            self._proc.wait()
            out = self._ffmpeg_output()
            self.abort()
            raise EncoderError(f"ffmpeg failed while writing {self.path}: {err}\n{out}") from err
        self.num_frames += 1

    def write_video(self, video: Video) -> None:
        """Stream every frame of ``video`` (it must match this writer's size)."""
        for frame in video.frames():
            self.write(frame)

    def close(self) -> Path:
        """Finish the file: wait for ffmpeg, then rename the temporary file to ``path``.

        Returns:
            The final path.

        Raises:
            VideoError: if no frame was written (nothing is left on disk).
            EncoderError: if ffmpeg failed (nothing is left on disk).
        """
        proc = self._proc
        if proc is None:
            return self.path
        if self.num_frames == 0:
            self.abort()
            raise VideoError(f"no frame was written to {self.path}; a video needs frames")
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            code = proc.wait()
        except BaseException:
            self.abort()
            raise
        if code != 0:
            out = self._ffmpeg_output()
            self.abort()
            raise EncoderError(f"ffmpeg exited with status {code} writing {self.path}:\n{out}")
        self._proc = None
        self._stderr.close()
        try:
            if self.fsync:
                with open(self._tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
        except OSError as err:
            self._tmp.unlink(missing_ok=True)
            raise EncoderError(f"could not move the encoded video to {self.path}: {err}") from err
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete the temporary file; ``path`` is left untouched."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._stderr.close()
        self._tmp.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.abort()


class Mp4Writer(FfmpegWriter):
    """Stream frames into an H.264 / yuv420p ``.mp4`` file, keeping the frame size.

    yuv420p needs even sizes: an odd width or height is padded by one pixel that
    repeats the last column or row; nothing is rescaled.

    Args:
        path: the final file name (conventionally ``*.mp4``).
        width: frame width in pixels.
        height: frame height in pixels.
        fps: frames per second.
        preset: libx264 preset; ``"ultrafast"`` keeps pace with a rollout.
        crf: libx264 constant rate factor (0 lossless .. 51 worst).
        fsync: fsync the file before renaming it to ``path``.
    """

    container = "mp4"

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float = DEFAULT_FPS,
        *,
        preset: str = "ultrafast",
        crf: int = 18,
        fsync: bool = False,
    ) -> None:
        self._pad_w = int(width) % 2
        self._pad_h = int(height) % 2
        self._buf: np.ndarray | None = None
        if self._pad_w or self._pad_h:
            self._buf = np.empty((int(height) + self._pad_h, int(width) + self._pad_w, 3), np.uint8)
        args = ["-c:v", "libx264", "-preset", str(preset), "-crf", str(int(crf))]
        args += ["-pix_fmt", "yuv420p"]
        super().__init__(path, width, height, fps, output_args=args, fsync=fsync)

    def _input_size(self, width: int, height: int) -> tuple[int, int]:
        return width + width % 2, height + height % 2

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        buf = self._buf
        if buf is None:
            return frame
        h, w = frame.shape[:2]
        buf[:h, :w] = frame
        if self._pad_w:
            buf[:h, w] = frame[:, w - 1]
        if self._pad_h:
            buf[h] = buf[h - 1]
        return buf


def encode_mp4(
    video: Any,
    path: str | os.PathLike[str],
    fps: float = DEFAULT_FPS,
    **options: Any,
) -> Path:
    """Encode ``video`` (anything :meth:`Video.of` accepts) to an mp4 file, streaming.

    Args:
        video: the frames; a tensor or memory map is read one frame at a time.
        path: the final file name; it appears only once the file is complete.
        fps: frames per second.
        **options: :class:`Mp4Writer` options (``preset``, ``crf``, ``fsync``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        VideoError: for frames that cannot be made into a video (nothing is written).
        EncoderError: when ffmpeg fails.
    """
    v = Video.of(video)
    with Mp4Writer(path, v.width, v.height, fps, **options) as writer:
        writer.write_video(v)
    _log.debug("wrote %d frames to %s", writer.num_frames, path)
    return Path(path)
