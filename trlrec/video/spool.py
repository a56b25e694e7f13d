"""The on-disk spool of a VideoRecorder: raw frames appended as they come, one file per video.

Spool format (version 1), in the spool directory (:func:`spool_dir_for`:
``<logger.experiment_dir>/video_spool``, else ``<log_dir>/<exp_name>/video_spool`` for
TorchRL loggers, else ``spool_dir=``, else a temporary directory), one pair of files per
video:

- ``<name>.<recorder>.<seq>.frames``: raw ``uint8`` frames, ``T x H x W x 3``, appended
  in blocks of whole frames (~2 MB) by a writer thread (:mod:`trlrec.video.frame_writes`):
  a block is handed over when full and at every episode end, and written soon after
  without the step waiting for it; ``flush()``/``dump()``/``close()`` (and ``extend()``
  of a batch, for its ended episodes) wait for the writes. ``T`` is the file size
  divided by ``H * W * 3``, so a killed process leaves every whole frame readable (a
  torn write only leaves a partial frame past the last whole one, ignored).
- ``<name>.<recorder>.<seq>.video.json``: ``{"format": "trlrec.video_spool", "version": 1,
  "tag", "env", "episode", "height", "width", "channels": 3, "dtype": "uint8", "fps",
  "recorder", "seq", "created"}``; ``episode`` is the index of the one episode a
  triggered video holds (None for a video of every episode since the last dump; absent
  in sidecars written before it was added). Delivery adds ``"sending": [name, step]``
  before the logger is called and ``"delivered": true`` once it returned (so a kill
  never makes a video be sent twice after its ``log_video`` returned, nor under another
  name or step). Sidecars are checked before use (:func:`read_sidecar`); bad ones are
  skipped with a warning.
- ``.<recorder>.lock``: held (``flock``) by the live recorder; videos whose recorder
  holds no lock are orphans, sent by the next ``dump()``/``close()`` with the same tag.
- ``<name>.step``: one past the last default ``step`` used for that video name (20
  digits, rewritten in place: never empty), so a new recorder with the same tag never
  logs a video at a step already used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from trlrec.errors import ClosedError, StoreWriteError
from trlrec.naming import safe_name
from trlrec.video.frame_writes import FrameBlock, FramesFile, FrameWriter

__all__ = [
    "SPOOL_FORMAT",
    "SPOOL_VERSION",
    "Segment",
    "Spool",
    "frames_path",
    "read_sidecar",
    "remove_orphan_parts",
    "spool_dir_for",
]

SPOOL_FORMAT = "trlrec.video_spool"
"""The ``format`` field of every spool sidecar."""
SPOOL_VERSION = 1
"""The ``version`` field of the sidecars this code writes."""


_NOTHING: dict[str, Any] = {}  # the native capture's empty "next" side
_log = logging.getLogger(__name__)
_RECORDER = re.compile(r"^[0-9a-f]{12}$")  # a recorder id: uuid4().hex[:12]
_SIDECAR_BYTES = 1 << 16  # a sidecar is ~300 bytes; anything far bigger is not one
_MAX_SIDE = 1 << 15  # pixels: a frame side beyond this is not a frame
_STEP_WIDTH = 20  # digits of a step counter, written in place (never truncated)


class Segment:
    """One video being written: ``<stem>.frames`` plus its ``<stem>.video.json`` sidecar.

    The sidecar is written (atomically) when the segment opens. Each :meth:`write`
    copies the frame into a block of the spool's :class:`~trlrec.video.frame_writes.FrameWriter`
    (so the caller may reuse its tensor at once); full blocks, and the partial one at
    :meth:`end_episode`, are appended to the file by the writer's thread.

    Args:
        stem: the path of both files without their suffixes.
        meta: the sidecar's content (with at least ``height`` and ``width``).
        writer: the thread that appends the blocks.

    Attributes:
        frames: how many frames were written.
        height: the frame height.
        width: the frame width.
    """

    __slots__ = (
        "_block",
        "_capture",
        "_file",
        "_slot",
        "_views",
        "_writer",
        "frames",
        "height",
        "width",
    )

    def __init__(self, stem: Path, meta: dict[str, Any], writer: FrameWriter) -> None:
        _write_sidecar(stem.with_name(stem.name + ".video.json"), meta)
        self._file: FramesFile | None = writer.open(stem.with_name(stem.name + ".frames"))
        self._writer = writer
        self.frames = 0
        self.height, self.width = meta["height"], meta["width"]
        shape = (self.height, self.width, 3)
        self._block: FrameBlock | None = writer.block(self.height * self.width * 3)
        self._views = self._block.views(shape)
        self._capture = self._block.capture(shape)
        self._slot = 0

    @property
    def frames_file(self) -> str | None:
        """The path of the segment's ``.frames`` file, or None once it is closed."""
        return None if self._file is None else str(self._file.path)

    def write(self, frame: torch.Tensor) -> None:
        """Copies one CPU ``uint8`` frame ``(height, width, 3)`` into the spool.

        Raises:
            StoreWriteError: an earlier write of this segment's file failed (the whole
                frames already in the file stay; this segment takes no more frames).
        """
        file = self._file
        if file is None or file.error is not None:
            self._fail()
        slot = self._slot
        capture = self._capture  # native: ~2 us less than copy_ in a step loop
        if capture is None or capture({"frame": frame}, _NOTHING, slot, False) < 0:
            self._views[slot].copy_(frame)
        self.frames += 1
        slot += 1
        if slot == len(self._views):
            self._hand_over(slot)
        else:
            self._slot = slot

    def end_episode(self) -> None:
        """Hands the frames copied so far to the writer thread (it writes them soon)."""
        if self._slot:
            self._hand_over(self._slot)

    def flush(self) -> None:
        """Waits until every frame written so far is in the file (it survives a kill).

        Raises:
            StoreWriteError: writing the file failed.
        """
        self.end_episode()
        self._writer.sync()
        if self._file is None or self._file.error is not None:
            self._fail()

    def close(self) -> None:
        """Writes out the frames, closes the file and gives its block back. Idempotent.

        Raises:
            StoreWriteError: writing the file failed (the whole frames in it are kept).
        """
        file = self._file
        if file is None:
            return
        try:
            self.flush()
        finally:
            self._release()

    def _hand_over(self, slot: int) -> None:
        file, block = self._file, self._block
        if file is None or block is None:
            self._fail()
            return
        frame_bytes = self.height * self.width * 3
        self._block = None  # not reused if acquiring the next one fails
        self._slot = 0
        self._writer.submit(file, block, slot * frame_bytes)
        if file.error is not None:  # written already (inline) and failed
            self._fail()
        block = self._block = self._writer.block(frame_bytes)
        self._views = block.views((self.height, self.width, 3))
        self._capture = block.capture((self.height, self.width, 3))

    def _release(self) -> None:
        """Closes the file (after the writer is done with it); the block returns to the pool."""
        file, self._file = self._file, None
        block, self._block = self._block, None
        if block is not None:
            self._writer.recycle(block)
        if file is not None:
            self._writer.release(file)  # after its queued blocks are written

    def _fail(self) -> None:
        """Stops this segment and raises its write error as a trlrec error."""
        file = self._file
        if file is None or file.error is None:
            raise ClosedError("this video segment is closed; a new one takes the next frames")
        error = file.error
        errno = getattr(error, "errno", None)
        reason = os.strerror(errno) if errno else str(error)
        late: Exception | None = None
        try:
            self._release()  # waits for the writer: no queued block reaches a closed fd
        except Exception as exc:  # reported with the write error, which comes first
            late = exc
        written = file.size // (self.height * self.width * 3)
        failure = StoreWriteError(
            errno,
            f"writing video frames to {file.path!r} failed: {reason}; its first {written} "
            "frame(s) are kept and sent by the next dump(), the frames after them are lost",
        )
        if late is not None:
            failure.add_note(f"closing {file.path!r} then failed too: {late!r}")
        raise failure from error


class Spool:
    """The directory of spool files of one recorder, its lock and the step counters.

    The directory is created (or, without one, a temporary directory made) on first
    use; the recorder's lock is taken when its first segment opens.

    Args:
        directory: the spool directory, or None for a temporary one.
        tag: the recorder's tag: the videos this spool sends are those of this tag.

    Attributes:
        tag: the recorder's tag.
        recorder: this recorder's random id, in its file names and sidecars.
        writer: the thread appending its segments' frames to their files.
    """

    def __init__(self, directory: Path | None, tag: str) -> None:
        self._requested = directory
        self._dir: Path | None = None
        self._owns_dir = False
        self.tag = tag
        self.recorder = uuid.uuid4().hex[:12]
        self._lock_fd: int | None = None
        self._seq = 0
        self.writer = FrameWriter()

    @property
    def directory(self) -> Path:
        """The spool directory (created on first use)."""
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

    def open_segment(
        self,
        env: int | None,
        height: int,
        width: int,
        fps: float | None,
        episode: int | None = None,
    ) -> Segment:
        """Starts a new video of sub-env ``env`` (None: the only or the grid video).

        Args:
            env: the sub-env index, named in the video name as ``<tag>_env<i>``.
            height: the frame height.
            width: the frame width.
            fps: the frame rate to log the video with, or None for the logger's default.
            episode: the index of the one episode the video holds (a triggered video),
                named in the video name as ``..._ep<i>``; None for a video of every episode.
        """
        try:
            return self._open_segment(env, height, width, fps, episode)
        except OSError as err:
            if isinstance(err, StoreWriteError):
                raise
            name = err.filename if err.filename is not None else self._dir
            raise StoreWriteError(
                err.errno,
                f"cannot start a video in the spool: {name!r}: {err.strerror}; {_hint(err)}",
            ) from err

    def _open_segment(
        self, env: int | None, height: int, width: int, fps: float | None, episode: int | None
    ) -> Segment:
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
            "episode": episode,
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
        return Segment(stem, meta, self.writer)

    def pending(self) -> tuple[list[tuple[Path, dict[str, Any]]], dict[str, int]]:
        """Finished videos of this tag: this recorder's and orphans'; plus the claimed locks.

        Sidecars are checked (:func:`read_sidecar`): a damaged or hostile one is skipped
        and reported (a warning of this module's logger), and the others are delivered.
        An orphan already delivered (its sidecar says so: its recorder was killed
        before removing it) is removed, not sent again.

        Returns:
            ``(sidecar, meta)`` pairs, oldest first, and the lock file descriptors of the
            dead recorders whose videos are included (give them back to :meth:`release`).
        """
        found: list[tuple[Path, dict[str, Any]]] = []
        claimed: dict[str, int | None] = {self.recorder: None}
        for sidecar in sorted(self.directory.glob("*.video.json")):
            try:
                meta = read_sidecar(sidecar)
            except ValueError as err:
                _log.warning("skipping video spool file %r: %s", str(sidecar), err)
                continue
            if meta is None or meta["tag"] != self.tag:
                continue
            owner = meta["recorder"]
            if owner not in claimed:
                claimed[owner] = self._claim(owner)
            if owner != self.recorder and claimed[owner] is None:
                continue
            if meta.get("delivered"):
                frames_path(sidecar).unlink(missing_ok=True)
                sidecar.unlink(missing_ok=True)
                continue
            found.append((sidecar, meta))
        found.sort(key=lambda item: (item[1].get("created", 0), item[1].get("seq", 0)))
        return found, {owner: fd for owner, fd in claimed.items() if fd is not None}

    def mark(self, sidecar: Path, meta: dict[str, Any], **fields: Any) -> None:
        """Record delivery progress in a video's sidecar (replaced atomically, fsync'ed).

        ``sending=[name, step]`` before the logger is called (a re-send after a kill uses
        the same name and step: a file logger rewrites that one video, never an earlier
        one), ``delivered=True`` once it returned (the video is not sent again).
        """
        meta.update(fields)
        _write_sidecar(sidecar, meta, durable=True)

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

    def next_step(self, name: str, at_least: int = 0) -> int:
        """The default ``step`` of video ``name``: ``at_least``, or later if that was used.

        One past the last step returned for ``name`` is kept (under a lock) on disk, so
        recorders sharing the spool directory never log two videos of a name at one step.
        """
        path = self.directory / f"{safe_name(name)}.step"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise StoreWriteError(
                err.errno, f"cannot open the video step counter {str(path)!r}: {err.strerror}"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            step = max(int(text) if text.isdigit() else 0, at_least)
            # written in place at a fixed width, never truncated first: a kill leaves the
            # old value or the new one, never an empty counter that restarts at 0
            line = f"{step + 1:0{_STEP_WIDTH}d}\n".encode("ascii")
            if os.pwrite(fd, line, 0) != len(line):
                raise StoreWriteError(0, f"short write to the video step counter {str(path)!r}")
        except StoreWriteError:
            raise
        except OSError as err:
            raise StoreWriteError(
                err.errno, f"cannot update the video step counter {str(path)!r}: {err.strerror}"
            ) from err
        finally:
            os.close(fd)
        return step

    def close(self) -> None:
        """Stops the writer thread, releases the lock, removes an empty temporary directory."""
        self.writer.stop()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                self._lock_path(self.recorder).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._owns_dir and self._dir is not None:
            leftovers = [p for p in self._dir.iterdir() if not p.name.endswith(".step")]
            if not leftovers:
                shutil.rmtree(self._dir, ignore_errors=True)


def _write_sidecar(sidecar: Path, meta: dict[str, Any], durable: bool = False) -> None:
    """Write a sidecar atomically (a temp file renamed over it)."""
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, sidecar)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreWriteError(
            err.errno,
            f"cannot write the video spool sidecar {str(sidecar)!r}: {err.strerror}; {_hint(err)}",
        ) from err


def _hint(err: OSError) -> str:
    """What to do about an OS error of the spool's files."""
    if err.errno in (errno.EMFILE, errno.ENFILE):
        return (
            "raise the open files limit (ulimit -n), or record fewer videos at once "
            "(make_grid=True tiles the sub-envs into one video)"
        )
    if err.errno == errno.EFBIG:
        return "the file size limit (ulimit -f) is reached; raise it"
    return "check the disk's space and permissions"


def _check_int(meta: dict[str, Any], field: str, high: int, low: int = 0) -> None:
    value = meta.get(field)
    if value is None and field not in ("height", "width"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field!r} is {value!r}, not an int in [{low}, {high}]")


def read_sidecar(sidecar: Path) -> dict[str, Any] | None:
    """Read and check a spool sidecar, and that its ``.frames`` file is a plain file.

    Returns:
        The sidecar's fields, or None for a file that is not a spool sidecar (another
        ``format``).

    Raises:
        ValueError: the sidecar or its frames file is damaged or hostile (a link, not a
            regular file, too big, deep JSON, a field of the wrong type or range, a
            recorder id that is not one); the message says which.
    """
    try:
        fd = os.open(sidecar, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise ValueError(f"cannot open it ({err.strerror}; links are not followed)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("it is not a regular file")
        if st.st_size > _SIDECAR_BYTES:
            raise ValueError(f"it is {st.st_size} bytes, more than a sidecar's {_SIDECAR_BYTES}")
        raw = os.read(fd, _SIDECAR_BYTES + 1)
    finally:
        os.close(fd)
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"it is not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != SPOOL_FORMAT:
        return None
    if not isinstance(meta.get("tag"), str):
        raise ValueError(f"'tag' is {meta.get('tag')!r}, not a str")
    recorder = meta.get("recorder")
    if not isinstance(recorder, str) or not _RECORDER.match(recorder):
        raise ValueError(f"'recorder' is {recorder!r}, not a recorder id")
    _check_int(meta, "height", _MAX_SIDE, 1)
    _check_int(meta, "width", _MAX_SIDE, 1)
    _check_int(meta, "env", 1 << 20)
    _check_int(meta, "episode", 1 << 62)
    _check_int(meta, "seq", 1 << 62)
    fps = meta.get("fps")
    if fps is not None and (
        isinstance(fps, bool)
        or not isinstance(fps, int | float)
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise ValueError(f"'fps' is {fps!r}, not a positive number")
    created = meta.get("created", 0)
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise ValueError(f"'created' is {created!r}, not a number")
    sending = meta.get("sending")
    if sending is not None and not (
        isinstance(sending, list)
        and len(sending) == 2
        and isinstance(sending[0], str)
        and isinstance(sending[1], int)
        and not isinstance(sending[1], bool)
    ):
        raise ValueError(f"'sending' is {sending!r}, not [name, step]")
    frames = frames_path(sidecar)
    try:
        st = os.lstat(frames)
    except FileNotFoundError:
        return meta
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{str(frames)!r} is a link or not a regular file")
    return meta


_PART = re.compile(r"^\.(?P<video>.+\.mp4)\.(?P<pid>[0-9]+)-[0-9a-f]+\.part$")


def remove_orphan_parts(videos_dir: Path, tag: str) -> list[Path]:
    """Delete the partial mp4s of ``tag`` left in ``videos_dir`` by killed processes.

    An mp4 writer encodes into a hidden ``.<video>.mp4.<pid>-<hex>.part`` and renames it
    when done; a process killed mid-encode leaves it behind (its ffmpeg may even finish
    it). Those of videos named for ``tag`` whose process is gone are removed.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    prefix = safe_name(tag)
    try:
        entries = list(os.scandir(videos_dir))
    except OSError:
        return removed
    for entry in entries:
        match = _PART.match(entry.name)
        if match is None or not match["video"].startswith(prefix):
            continue
        if not entry.is_file(follow_symlinks=False) or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    if removed:
        _log.info("removed %d partial video(s) of killed recorders: %s", len(removed), removed)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def frames_path(sidecar: Path) -> Path:
    """The ``.frames`` file that goes with a ``.video.json`` sidecar."""
    return sidecar.with_name(sidecar.name[: -len(".video.json")] + ".frames")


def spool_dir_for(logger: Any, spool_dir: str | os.PathLike | None) -> Path | None:
    """Where a recorder with this logger spools: ``spool_dir``, else the logger's directory.

    Returns:
        ``spool_dir``; else ``<logger.experiment_dir>/video_spool`` (trlrec loggers); else
        ``<log_dir>/<exp_name>/video_spool`` (TorchRL loggers); else None (a temporary
        directory, made on first use).
    """
    if spool_dir is not None:
        return Path(spool_dir)
    experiment_dir = getattr(logger, "experiment_dir", None)
    if isinstance(experiment_dir, str | os.PathLike):
        return Path(experiment_dir) / "video_spool"
    log_dir, exp_name = getattr(logger, "log_dir", None), getattr(logger, "exp_name", None)
    if isinstance(log_dir, str | os.PathLike) and isinstance(exp_name, str):
        return Path(log_dir) / safe_name(exp_name) / "video_spool"
    return None
