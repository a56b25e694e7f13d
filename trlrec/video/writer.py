"""The spool's background writer: whole chunks of frames appended to the frames files.

A step loop cannot afford the disk write of each frame: appending 21 KB of new data to
the page cache costs 3-30 µs on a VM (first touch of guest memory), a third of a
trivial env's step. So a :class:`~trlrec.video.spool.Segment` copies each frame into
a preallocated *chunk* (a few MB, a whole number of frames) in the step's thread, and
hands full chunks (and the partial chunk at an episode end) to a :class:`ChunkWriter`,
whose thread does nothing but ``fallocate``/``write`` system calls (both release the
GIL), one per chunk. The queue is bounded: when a few chunks already wait to be
written, the next hand-over blocks until one is.

Every write is of whole frames appended at the end of the file, in order, so the
spool's property holds at every instant: the file's size divided by the frame size
gives the frames written, and a torn write (a killed process, a full disk) only
leaves a partial frame past the last whole one. A failed write is kept and reported
by the segment's next call as :class:`~trlrec.errors.StoreWriteError`; nothing more
is written to that file (a later write would land after the torn frame).

Where the native extension is built, the thread is ``_pwrite.Writer``'s pthread: it
never takes the GIL, so the step loop is not made to hand it over (a Python thread
takes the GIL back after each write, which forces a switch in the step loop; measured
at 84x84x3: VideoRecorder 1.11x its baseline with the Python thread, see
BENCHMARKS.md for the native one). The step's thread submits each chunk and, at the
next hand-over, reaps the written ones (they return to the pool) and their errors.
Otherwise the thread is a Python daemon thread, started with the first hand-over. An
``atexit`` hook writes out what is queued at interpreter exit, after which (and in a
forked child, where the thread does not exist) chunks are written in the calling
thread.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import logging
import os
import queue
import threading
import weakref
from typing import Any

import torch

from trlrec.prealloc import Reservation
from trlrec.storage.chunks import drop_from, write_at
from trlrec.storage.native import extension

__all__ = ["CHUNK_BYTES", "ChunkWriter", "Chunk", "FramesFile"]

CHUNK_BYTES = 2 << 20
"""The default size of a chunk: one system call per ~2 MB of frames."""
# chunks that may wait for the thread: 32 MiB, ~1500 frames of 84x84x3 (~0.15 s of a fast
# step loop) before a slow disk blocks the step; taken only while the disk lags behind
_QUEUED = 16
_RESERVE = 8 << 20  # bytes of disk reserved ahead of the writes of one file
_WRITERS: weakref.WeakSet[ChunkWriter] = weakref.WeakSet()
_log = logging.getLogger(__name__)
_GROUPS = itertools.count()  # FramesFile ids: the native writer skips a failed file's writes


class FramesFile:
    """One ``.frames`` file written by a :class:`ChunkWriter`: its fd, size and error.

    Opened for appending (created if needed). Only the writer's thread writes it once
    chunks are handed over; the owner reads :attr:`error` and closes it after a
    :meth:`ChunkWriter.sync`.

    Args:
        path: the file.

    Attributes:
        path: the file.
        fd: its descriptor (-1 once closed).
        size: the bytes written through this object (with the native writer: handed
            to it; after a failure, what landed).
        error: the first write error, or None.
        group: this file's id for the native writer.
    """

    __slots__ = ("error", "fd", "group", "path", "reservation", "size")

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.reservation = Reservation(_RESERVE)
        self.reservation.reserved = self.size
        self.error: Exception | None = None
        self.group = next(_GROUPS)

    def append(self, data: memoryview) -> None:
        """Appends ``data`` (whole frames), then drops older pages from the page cache.

        Dropping the pages written a few chunks ago (as the store does, see
        :mod:`trlrec.storage.chunks`) lets the next writes reuse them instead of taking
        fresh ones (measured: a 84x84x3 step loop 1.26x -> 1.18x). With the native
        ``pwrite_all`` the write and the drop take the GIL once.
        """
        end = self.size + len(data)
        self.reservation.ensure(self.fd, end)
        try:
            # O_APPEND: the write lands at the end of the file, which is self.size
            write_at(self.fd, data, self.size)
        except OSError:
            self.size = os.fstat(self.fd).st_size  # what did land, for the whole frames
            raise
        self.size = end

    def close(self) -> None:
        """Gives back the disk reserved past the data and closes the file."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            self.reservation.release(fd)
        finally:
            os.close(fd)


class Chunk:
    """A preallocated buffer of frames, with per-frame-shape views cached.

    Args:
        nbytes: its size.
    """

    __slots__ = ("_captures", "_views", "data", "memory")

    def __init__(self, nbytes: int) -> None:
        self.data = torch.empty(nbytes, dtype=torch.uint8)
        self.memory = memoryview(self.data.numpy())
        self._views: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self._captures: dict[tuple[int, ...], Any] = {}

    def views(self, shape: tuple[int, ...]) -> list[torch.Tensor]:
        """The chunk as consecutive tensors of ``shape`` (as many as fit), made once."""
        views = self._views.get(shape)
        if views is None:
            size = 1
            for dim in shape:
                size *= dim
            count = max(1, len(self.memory) // max(1, size))
            block = self.data[: count * size].view(count, *shape)
            views = self._views[shape] = list(block.unbind(0))
        return views

    def capture(self, shape: tuple[int, ...]) -> Any:
        """The native copy of a uint8 frame of ``shape`` into view ``i``, or None.

        ``capture({"frame": frame}, {}, i, False)`` copies a contiguous CPU uint8 frame
        of ``shape`` into ``views(shape)[i]`` and returns 0, or returns -1 (copy with
        torch then): the writer's step capture (:mod:`trlrec.storage.capture`) with one
        leaf. None when the extension is not built or turned off.
        """
        if shape in self._captures:
            return self._captures[shape]
        native = extension("capture")
        step = None
        if native is not None:
            views = self.views(shape)
            size = torch.Size(shape)
            plan = native.Plan(
                torch.Tensor, ["frame"], [0], [torch.uint8], [size], [size.numel()],
                [[v.data_ptr()] for v in views], [], [], [bytearray(len(views))], self.data,
            )  # fmt: skip
            step = plan.step
        self._captures[shape] = step
        return step


class ChunkWriter:
    """A thread appending handed-over chunks to their files, in order: only system calls.

    Each segment fills a chunk of its own; at most ``queued`` chunks wait for the thread
    (a hand-over beyond that blocks until one is written), so the memory is bounded by
    ``chunk_bytes * (segments + queued)``. Written chunks are kept for reuse: their
    pages are touched once.

    Args:
        chunk_bytes: the size of each chunk (frames larger than that get one chunk each).
        queued: how many chunks may wait for the thread.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, queued: int = _QUEUED) -> None:
        self.chunk_bytes = chunk_bytes
        self._queued = max(1, queued)
        self._pid = os.getpid()
        self._stopped = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._native: Any = None
        self._fresh()
        _WRITERS.add(self)

    def _fresh(self) -> None:
        self._free: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(self._queued)
        native = extension("pwrite")
        self._native = native.Writer() if native is not None else None
        self._inflight: dict[int, tuple[FramesFile, Chunk]] = {}  # native jobs, by token
        self._tokens = itertools.count()

    def chunk(self, min_bytes: int) -> Chunk:
        """A chunk of at least ``min_bytes``: a written one if any is free, else a new one."""
        if min_bytes > self.chunk_bytes:
            return Chunk(min_bytes)  # an oversized frame: a chunk of its own, not pooled
        if self._inflight and self._native_writer() is not None:
            self._reap()  # the written chunks come back to the pool
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return Chunk(self.chunk_bytes)

    def recycle(self, chunk: Chunk) -> None:
        """Gives back a chunk taken with :meth:`chunk` (and not queued)."""
        if len(chunk.memory) == self.chunk_bytes:
            self._free.put(chunk)

    def submit(self, target: FramesFile, chunk: Chunk, nbytes: int) -> None:
        """Queues the first ``nbytes`` of ``chunk`` for appending to ``target``.

        The chunk goes back to the pool once written; a write error is kept in
        ``target.error`` (and nothing more is written to that file).
        """
        native = self._native_writer()
        if native is not None:
            self._submit_native(native, target, chunk, nbytes)
        elif self._running():
            self._slots.acquire()
            self._jobs.put((target, chunk, nbytes))
        else:
            _write(target, chunk, nbytes)
            self.recycle(chunk)

    def _submit_native(self, native: Any, target: FramesFile, chunk: Chunk, nbytes: int) -> None:
        native.wait(self._queued - 1)  # (GIL released) at most `queued` chunks unwritten
        self._reap()
        if target.error is not None or target.fd < 0:
            self.recycle(chunk)
            return
        offset, end = target.size, target.size + nbytes
        try:
            target.reservation.ensure(target.fd, end)
        except OSError as err:
            # Go on unreserved: the write, in its turn, reports what is wrong with the file
            # (as the Python thread's would), or succeeds without the reservation.
            _log.debug("no disk reservation for %r: %s", target.path, err)
            target.reservation.enabled = False
        token = next(self._tokens)
        native.submit(
            target.fd, chunk.memory[:nbytes], offset, drop_from(offset, nbytes), target.group, token
        )
        self._inflight[token] = (target, chunk)
        target.size = end

    def _reap(self) -> None:
        """Takes back the chunks the native thread wrote; keeps each file's first error."""
        for token, code in self._native.reap():
            target, chunk = self._inflight.pop(token)
            if code and code != errno.ECANCELED and target.error is None:
                target.error = OSError(code, os.strerror(code))
                target.size = os.fstat(target.fd).st_size  # what did land: the whole frames
            self.recycle(chunk)

    def _native_writer(self) -> Any:
        """The native thread, if chunks go to it (not stopped, not in a forked child)."""
        if self._native is None or self._stopped:
            return None
        self._after_fork()
        return self._native

    def _after_fork(self) -> None:
        """In a forked child: a fresh queue and writer (the parent's thread is not here)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pid, self._thread = os.getpid(), None
                    self._fresh()

    def sync(self) -> None:
        """Waits until every chunk handed over so far is written (or has failed)."""
        native = self._native_writer()
        if native is not None:
            native.wait(0)
            self._reap()
            return
        if not self._running():
            return
        done = threading.Event()
        self._jobs.put((None, done, 0))
        thread = self._thread
        while not done.wait(0.5):
            if thread is None or not thread.is_alive():
                return  # the thread ended (interpreter exit): nothing more gets written

    def stop(self) -> None:
        """Writes out what is queued and ends the thread (later chunks: written inline)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopped = True
        if self._native is not None and self._pid == os.getpid():
            self._native.stop()
            self._reap()
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._jobs.put(None)
            thread.join()

    def __del__(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None and self._pid == os.getpid():
            self._jobs.put(None)  # the thread holds no reference to this object: end it

    def _running(self) -> bool:
        """Whether chunks go to the thread (started here if needed), not written inline."""
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            return True
        self._after_fork()
        with self._lock:
            if self._stopped:
                return False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=_run,
                    args=(self._jobs, self._free, self._slots, self.chunk_bytes),
                    name="trlrec-video-spool",
                    daemon=True,
                )
                self._thread.start()
        return True


def _write(target: FramesFile, chunk: Chunk, nbytes: int) -> None:
    """Appends a chunk's first ``nbytes`` unless the file already failed; keeps the error."""
    if target.error is None and target.fd >= 0:
        try:
            target.append(chunk.memory[:nbytes])
        except Exception as err:  # kept for the owner's next call, never dropped
            target.error = err


def _run(
    jobs: queue.SimpleQueue[Any],
    free: queue.SimpleQueue[Chunk],
    slots: threading.BoundedSemaphore,
    chunk_bytes: int,
) -> None:
    """The writer thread: ``(file, chunk, nbytes)`` jobs, ``(None, event, 0)`` barriers."""
    while True:
        job = jobs.get()
        if job is None:
            return
        target, chunk, nbytes = job
        if target is None:
            chunk.set()
            continue
        try:
            _write(target, chunk, nbytes)
        finally:
            if len(chunk.memory) == chunk_bytes:
                free.put(chunk)
            slots.release()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: write out every queued chunk before daemon threads die."""
    for writer in list(_WRITERS):
        writer.stop()
