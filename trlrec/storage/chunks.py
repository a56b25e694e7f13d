"""A stream's chunk series: fixed-capacity chunk files in one logical row space.

Chunk ``c`` of a stream holds logical rows ``[c * C, (c + 1) * C)``. Each chunk is a
directory created by ``TensorDict.memmap_like``, so plain ``TensorDict.load_memmap``
opens it. Rows go to the files as ``pwrite`` jobs of the writer's I/O backend
(:mod:`trlrec.io`) rather than through a memory map: no page fault per new page, and a
full disk is an error naming the file (a ``StoreWriteError``), not a ``SIGBUS``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from trlrec.errors import StoreWriteError
from trlrec.io.backend import IOBackend
from trlrec.storage.format import chunk_dir_name, column_file
from trlrec.storage.jsonio import fsync_path
from trlrec.storage.schema import Key, Schema

__all__ = ["ChunkSeries", "default_chunk_rows"]

_CHUNK_BYTES = 128 * 2**20  # a chunk holds about this much data ...
_MAX_CHUNK_ROWS = 2**18  # ... in at most this many rows, and at least 16


def default_chunk_rows(schema: Schema) -> int:
    """Rows per chunk for a recording of ``schema``: about 128 MiB of data."""
    return max(16, min(_MAX_CHUNK_ROWS, _CHUNK_BYTES // max(1, schema.row_bytes())))


class ChunkSeries:
    """Writes rows of one stream into its chunk files, creating chunks as the stream grows.

    Args:
        directory: the stream's directory.
        schema: the recording's schema.
        capacity: rows per chunk.
        io: the writer's I/O backend, and ``group`` its group for these writes.
        compressed: the keys compressed when a chunk is sealed: their raw files are
            read back and removed soon, so their written pages stay in the page cache
            (and need never reach the disk).
    """

    def __init__(
        self,
        directory: Path,
        schema: Schema,
        capacity: int,
        io: IOBackend,
        group: int,
        compressed: frozenset[Key] = frozenset(),
    ) -> None:
        self.directory = directory
        self.capacity = capacity
        self.io = io
        self.group = group
        self.compressed = compressed
        self._template = schema.row_template()
        self._row_bytes = {e.stored_key: e.nbytes for e in schema.entries}
        self._created: set[int] = set()
        self._paths: dict[tuple[int, Key], str] = {}
        self.touched: set[int] = set()
        self._new: set[int] = set()  # chunks created since the last sync

    def _path(self, index: int, key: Key) -> Path:
        return column_file(self.directory / chunk_dir_name(index), key)

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
                self._empty_files(index)
                self._new.add(index)
        except (OSError, RuntimeError) as err:  # tensordict/torch report EFBIG, ENOENT so
            raise StoreWriteError(
                getattr(err, "errno", None), f"could not create chunk {str(path)!r}: {err}"
            ) from err
        self._created.add(index)

    def _empty_files(self, index: int) -> None:
        """Create the (empty) files of the columns holding no bytes, which tensordict skips.

        A ``[C, 0]`` column has a zero-byte ``.memmap`` file like any other, so that the
        reader finds every column of the schema.
        """
        for key, size in self._row_bytes.items():
            if size == 0:
                path = self._path(index, key)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()

    def discard_from(self, index: int) -> None:
        """Delete chunk directories from ``index`` on (uncommitted leftovers of a crash)."""
        for path in sorted(self.directory.glob("chunk-*")):
            suffix = path.name.removeprefix("chunk-")
            if suffix.isdigit() and int(suffix) >= index:
                shutil.rmtree(path)

    def write(self, row: int, columns: dict[Key, torch.Tensor]) -> None:
        """Queue ``columns`` (each ``[m, ...]``) for logical rows ``[row, row + m)``.

        The caller keeps the columns' memory unchanged until the backend is done.
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
                keep = key in self.compressed
                self.io.write(self._file(index, key), data, offset * size, self.group, keep)
            self.touched.add(index)
            done += n

    def sync(self) -> None:
        """Fsync the files of every chunk written since the last sync (after a barrier).

        The directories of chunks created since then are fsync'ed too (each directory
        of the chunk, the stream's, ``streams/`` and the shard's: every new entry on the
        way to the files), so a durable commit never counts a chunk a power cut lost.
        """
        paths = [
            self._path(index, key) for index in sorted(self.touched) for key in self._row_bytes
        ]
        dirs = [
            Path(top)
            for index in sorted(self._new)
            for top, _, _ in os.walk(self.directory / chunk_dir_name(index), False)
        ]
        if self._new:
            dirs += [self.directory, self.directory.parent, self.directory.parent.parent]
        for path in paths + dirs:
            try:
                fsync_path(path)
            except OSError as err:
                raise StoreWriteError(
                    err.errno,
                    f"cannot fsync {str(path)!r} for a durable commit: {err.strerror}; what "
                    "was committed before stays readable",
                ) from err
        self.touched.clear()
        self._new.clear()
