"""A stream's chunk series: fixed-capacity chunk files in one logical row space.

Chunk ``c`` of a stream holds logical rows ``[c * C, (c + 1) * C)``. Each chunk is a
directory created by ``TensorDict.memmap_like``, so plain ``TensorDict.load_memmap``
opens it. Rows are written with ``pwrite`` rather than through a memory map: no page
fault per new page, and a full disk is an ``OSError`` (a ``StoreWriteError``), not a
``SIGBUS``.

Big writes (pixels) are dropped from the page cache behind the write position
(``POSIX_FADV_DONTNEED`` over the last few writes): the kernel writes them back and
hands their pages to the next writes. Without it a long recording keeps taking fresh
pages, which on a VM costs up to ~30 us per 21 KB frame on first touch (measured
here: 4-38 us per frame without, 6 us with); the data is read back from disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from trlrec.errors import StoreWriteError
from trlrec.storage.fdcache import FdCache
from trlrec.storage.format import chunk_dir_name
from trlrec.storage.native import extension
from trlrec.storage.schema import Key, Schema

__all__ = ["ChunkSeries", "PendingWrite", "drop_from", "run_writes", "write_at"]


_DROP_BEHIND = 1 << 16  # writes of at least this many bytes are dropped from the cache
_DROP_LAG = 4  # ... together with the ~4 writes before them (written back meanwhile)


class PendingWrite(NamedTuple):
    """A write handed to the I/O thread: the file, the bytes, where they go."""

    path: str
    data: memoryview
    offset: int


def drop_from(offset: int, size: int) -> int:
    """Where a write's drop from the page cache starts (-1: a small write, kept)."""
    return max(0, offset - _DROP_LAG * size) if size >= _DROP_BEHIND else -1


def _write(fd: int, data: memoryview, offset: int) -> None:
    """``pwrite`` all of ``data``; a big write also drops older pages from the cache."""
    end = offset + len(data)
    behind = drop_from(offset, len(data))
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
    if behind >= 0:
        os.posix_fadvise(fd, behind, end - behind, os.POSIX_FADV_DONTNEED)


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """:func:`_write` with the native ``pwrite_all`` where it is built (the GIL taken once).

    Raises:
        OSError: the write or the drop failed (part of ``data`` may have landed).
    """
    native = extension("pwrite")
    if native is None:
        _write(fd, data, offset)
        return
    failed = native.pwrite_all([(fd, data, offset, drop_from(offset, len(data)))])
    if failed is not None:
        raise OSError(failed[1], os.strerror(failed[1]))


def _write_error(path: str, err: OSError) -> StoreWriteError:
    return StoreWriteError(
        err.errno,
        f"could not write {path!r}: {err.strerror}; what was committed before stays readable",
    )


def run_writes(writes: list[PendingWrite], fds: FdCache) -> None:
    """Do the deferred writes (on the I/O thread, with descriptors of its own ``fds``)."""
    native = extension("pwrite")
    if native is not None:
        _run_native(native.pwrite_all, writes, fds)
        return
    for w in writes:
        try:
            _write(fds.get(w.path), w.data, w.offset)
        except OSError as err:
            raise _write_error(w.path, err) from err


def _run_native(pwrite_all: Callable, writes: list[PendingWrite], fds: FdCache) -> None:
    """:func:`run_writes` with the native ``pwrite_all``, in groups of files.

    Each group spans fewer files than ``fds`` keeps open, so none of its descriptors
    is closed (and perhaps reused) before the group is written.
    """
    group: list[tuple[int, memoryview, int, int]] = []
    paths: list[str] = []
    seen: set[str] = set()
    for i, w in enumerate(writes):
        try:
            fd = fds.get(w.path)
        except OSError as err:
            raise _write_error(w.path, err) from err
        group.append((fd, w.data, w.offset, drop_from(w.offset, len(w.data))))
        paths.append(w.path)
        seen.add(w.path)
        if len(seen) >= fds.capacity // 2 or i == len(writes) - 1:
            failed = pwrite_all(group)
            if failed is not None:
                index, code = failed
                err = OSError(code, os.strerror(code))
                raise _write_error(paths[index], err) from err
            group, paths, seen = [], [], set()


class ChunkSeries:
    """Writes rows of one stream into its chunk files, creating chunks as the stream grows."""

    def __init__(self, directory: Path, schema: Schema, capacity: int, fds: FdCache):
        self.directory = directory
        self.capacity = capacity
        self._fd_cache = fds
        self._template = schema.row_template()
        self._row_bytes = {e.stored_key: e.nbytes for e in schema.entries}
        self._created: set[int] = set()
        self._paths: dict[tuple[int, Key], str] = {}
        self.touched: set[int] = set()

    def _path(self, index: int, key: Key) -> Path:
        *parents, last = key
        return self.directory.joinpath(chunk_dir_name(index), *parents, f"{last}.memmap")

    def _file(self, index: int, key: Key) -> str:
        """The path of a chunk file as a str, cached (pathlib costs ~10 us a join)."""
        path = self._paths.get((index, key))
        if path is None:
            if len(self._paths) > 4 * len(self._row_bytes):
                self._paths.clear()
            path = self._paths[(index, key)] = str(self._path(index, key))
        return path

    def _chunk(self, index: int) -> None:
        if index in self._created:
            return
        path = self.directory / chunk_dir_name(index)
        try:
            if not path.exists():
                self._template.expand(self.capacity).memmap_like(str(path))
        except (OSError, RuntimeError) as err:  # tensordict/torch report EFBIG, ENOENT so
            raise StoreWriteError(
                getattr(err, "errno", None), f"could not create chunk {str(path)!r}: {err}"
            ) from err
        self._created.add(index)

    def discard_from(self, index: int) -> None:
        """Delete chunk directories from ``index`` on (uncommitted leftovers of a crash)."""
        for path in sorted(self.directory.glob("chunk-*")):
            suffix = path.name.removeprefix("chunk-")
            if suffix.isdigit() and int(suffix) >= index:
                shutil.rmtree(path)

    def write(
        self, row: int, columns: dict[Key, torch.Tensor], later: list[PendingWrite] | None = None
    ) -> None:
        """Write ``columns`` (each ``[m, ...]``) at logical rows ``[row, row + m)``.

        With ``later`` (a list), the writes are not done but appended to it, for
        :func:`run_writes` on the I/O thread (on this VM even a
        4 KiB write into a new page of the cache can take tens of us); the caller keeps
        the columns' memory unchanged until then.
        """
        m = next(iter(columns.values())).shape[0]
        done = 0
        while done < m:
            index, offset = divmod(row + done, self.capacity)
            n = min(m - done, self.capacity - offset)
            self._chunk(index)
            for key, value in columns.items():
                size = self._row_bytes[key]
                if size == 0:
                    continue
                part = value[done : done + n] if n != m else value
                flat = part.reshape(-1)
                if flat.stride(0) != 1:  # non-contiguous, or one element with an odd stride
                    flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
                data = memoryview(flat.view(torch.uint8).numpy()).cast("B")
                path = self._file(index, key)
                if later is not None:
                    later.append(PendingWrite(path, data, offset * size))
                    continue
                try:
                    _write(self._fd_cache.get(path), data, offset * size)
                except OSError as err:
                    raise _write_error(path, err) from err
            self.touched.add(index)
            done += n

    def sync(self) -> None:
        """Fsync the files of every chunk written since the last sync."""
        for index in sorted(self.touched):
            for key in self._row_bytes:
                fd = os.open(self._path(index, key), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self.touched.clear()
