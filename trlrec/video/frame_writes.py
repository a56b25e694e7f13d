"""The spool's writes: whole blocks of frames appended to the frames files.

A step loop cannot afford the disk write of each frame: appending 21 KB of new data to
the page cache costs 3-30 us on a VM (first touch of guest memory), a third of a
trivial env's step. So a :class:`~trlrec.video.spool.Segment` copies each frame into
a preallocated *block* (a few MB, a whole number of frames) in the step's thread, and
hands full blocks (and the partial block at an episode end) to a :class:`FrameWriter`,
which queues them as writes of the I/O layer (:mod:`trlrec.io`: the native thread
where built, else a Python thread; inline once stopped). At most ``queued`` blocks
wait for the disk: the next hand-over then blocks until one is written.

Every write is of whole frames appended at the end of the file, in order, so the
spool's property holds at every instant: the file's size divided by the frame size
gives the frames written, and a torn write (a killed process, a full disk) only
leaves a partial frame past the last whole one. A failed write is kept and reported
by the segment's next call as :class:`~trlrec.errors.StoreWriteError`; nothing more
is written to that file (each file is a group of the backend: its later writes are
skipped). A forked child gets a backend of its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import Any

import torch

from trlrec.io import IOBackend, open_backend
from trlrec.native import extension
from trlrec.prealloc import Reservation

__all__ = ["BLOCK_BYTES", "FrameWriter", "FrameBlock", "FramesFile"]

BLOCK_BYTES = 2 << 20
"""The default size of a block: one system call per ~2 MB of frames."""
# blocks that may wait for the disk: 32 MiB, ~1500 frames of 84x84x3 (~0.15 s of a fast
# step loop) before a slow disk blocks the step; taken only while the disk lags behind
_QUEUED = 16
_RESERVE = 8 << 20  # bytes of disk reserved ahead of the writes of one file
_WRITERS: weakref.WeakSet[FrameWriter] = weakref.WeakSet()
_log = logging.getLogger(__name__)


class FramesFile:
    """One ``.frames`` file a :class:`FrameWriter` appends to: its size, error and group.

    Opened (created if needed) here; the descriptor is kept for the disk reservation
    and to read what landed after a failure. The writes go through the I/O backend.

    Args:
        path: the file.
        group: its group in the writer's I/O backend.

    Attributes:
        path: the file.
        fd: its descriptor (-1 once closed).
        size: the bytes handed to the backend (after a failure: what landed).
        error: the first write error, or None.
        group: the file's group in the backend.
    """

    __slots__ = ("error", "fd", "group", "path", "reservation", "size")

    def __init__(self, path: os.PathLike | str, group: int = 0) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.reservation = Reservation(_RESERVE)
        self.reservation.reserved = self.size
        self.error: Exception | None = None
        self.group = group

    def close(self) -> None:
        """Gives back the disk reserved past the data and closes the file."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            self.reservation.release(fd)
        finally:
            os.close(fd)


class FrameBlock:
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
        """The block as consecutive tensors of ``shape`` (as many as fit), made once."""
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
        torch then): the writer's step capture (:mod:`trlrec.storage.staging`) with one
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


class FrameWriter:
    """Appends handed-over blocks to their files, in order, through an I/O backend.

    Each segment fills a block of its own; at most ``queued`` blocks wait for the
    backend, so the memory is bounded by ``block_bytes * (segments + queued)``. Written
    blocks are kept for reuse: their pages are touched once.

    Args:
        block_bytes: the size of each block (frames larger than that get one block each).
        queued: how many blocks may wait for the disk.
    """

    def __init__(self, block_bytes: int = BLOCK_BYTES, queued: int = _QUEUED) -> None:
        self.block_bytes = block_bytes
        self._queued = max(1, queued)
        self._stopped = False
        self._fresh()
        _WRITERS.add(self)

    def _fresh(self) -> None:
        self._io: IOBackend = open_backend(
            "inline" if self._stopped else "auto", max_pending=self._queued
        )
        self._free: list[FrameBlock] = []
        self._inflight: dict[int, tuple[FramesFile, FrameBlock]] = {}  # by the write's token

    def _backend(self) -> IOBackend:
        """The backend (a forked child's own: the parent's thread is not there)."""
        if self._io.pid != os.getpid():
            self._fresh()
        return self._io

    def open(self, path: os.PathLike | str) -> FramesFile:
        """Open a frames file to append blocks to."""
        return FramesFile(path, self._backend().new_group())

    def block(self, min_bytes: int) -> FrameBlock:
        """A block of at least ``min_bytes``: a written one if any is free, else a new one."""
        if min_bytes > self.block_bytes:
            return FrameBlock(min_bytes)  # an oversized frame: a block of its own, not pooled
        self._reclaim()
        return self._free.pop() if self._free else FrameBlock(self.block_bytes)

    def recycle(self, block: FrameBlock) -> None:
        """Gives back a block taken with :meth:`block` (and not queued)."""
        if len(block.memory) == self.block_bytes:
            self._free.append(block)

    def submit(self, target: FramesFile, block: FrameBlock, nbytes: int) -> None:
        """Queues the first ``nbytes`` of ``block`` for appending to ``target``.

        The block goes back to the pool once written; a write error is kept in
        ``target.error`` (and nothing more is written to that file).
        """
        io = self._backend()
        self._reclaim()
        if target.error is not None or target.fd < 0:
            self.recycle(block)
            return
        offset, end = target.size, target.size + nbytes
        try:
            target.reservation.ensure(target.fd, end)
        except OSError as err:
            # Go on unreserved: the write, in its turn, reports what is wrong with the file.
            _log.debug("no disk reservation for %r: %s", target.path, err)
            target.reservation.enabled = False
        token = io.write(target.path, block.memory[:nbytes], offset, target.group)
        self._inflight[token] = (target, block)
        target.size = end
        self._reclaim()

    def _reclaim(self) -> None:
        """Takes back the written blocks; keeps each file's first error."""
        if not self._inflight:
            return
        done = self._io.done()
        for token in [t for t in self._inflight if t <= done]:
            target, block = self._inflight.pop(token)
            err = self._io.error(target.group)
            if err is not None and target.error is None:
                target.error = err
                if target.fd >= 0:
                    target.size = os.fstat(target.fd).st_size  # what did land: whole frames
            self.recycle(block)

    def sync(self) -> None:
        """Waits until every block handed over so far is written (or has failed)."""
        self._backend().barrier()
        self._reclaim()

    def release(self, target: FramesFile) -> None:
        """Waits for ``target``'s writes, then closes it (and the backend's descriptors)."""
        io = self._backend()
        io.close_files()  # waits for every write: no queued block reaches a closed file
        self._reclaim()
        target.close()

    def stop(self) -> None:
        """Writes out what is queued and stops the thread (later blocks: written inline)."""
        if self._stopped or self._io.pid != os.getpid():
            self._stopped = True
            return
        self._stopped = True
        self._io.close()
        self._reclaim()
        self._io = open_backend("inline")


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: write out every queued block before daemon threads die."""
    for writer in list(_WRITERS):
        writer.stop()
