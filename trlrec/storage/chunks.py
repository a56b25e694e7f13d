"""A stream's chunk series: fixed-capacity memory-mapped chunks in one logical row space.

Chunk ``c`` of a stream holds logical rows ``[c * C, (c + 1) * C)``. Each chunk is a
directory written by ``TensorDict.memmap_like``, so plain ``TensorDict.load_memmap``
opens it. Only the chunks being written are kept mapped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from trlrec.errors import StoreWriteError
from trlrec.storage.layout import chunk_dir_name
from trlrec.storage.schema import Key, Schema

__all__ = ["ChunkSeries"]


class ChunkSeries:
    """Writes rows of one stream into its chunks, creating chunks as the stream grows."""

    def __init__(self, directory: Path, schema: Schema, capacity: int):
        self.directory = directory
        self.capacity = capacity
        self._template = schema.row_template()
        self._keys = [e.stored_key for e in schema.entries]
        self._open: dict[int, dict[Key, torch.Tensor]] = {}
        self.touched: set[int] = set()

    def _chunk(self, index: int) -> dict[Key, torch.Tensor]:
        leaves = self._open.get(index)
        if leaves is None:
            path = self.directory / chunk_dir_name(index)
            try:
                td = self._template.expand(self.capacity).memmap_like(str(path), existsok=True)
            except OSError as err:
                raise StoreWriteError(
                    err.errno, f"could not create chunk {str(path)!r}: {err.strerror}"
                ) from err
            leaves = {k: td.get(k) for k in self._keys}
            if len(self._open) >= 2:  # keep the current and the previous chunk only
                self._open.pop(min(self._open))
            self._open[index] = leaves
        return leaves

    def discard_from(self, index: int) -> None:
        """Delete chunk directories from ``index`` on (uncommitted leftovers of a crash)."""
        for path in sorted(self.directory.glob("chunk-*")):
            suffix = path.name.removeprefix("chunk-")
            if suffix.isdigit() and int(suffix) >= index:
                shutil.rmtree(path)

    def write(self, row: int, columns: dict[Key, torch.Tensor]) -> None:
        """Write ``columns`` (each ``[m, ...]``) at logical rows ``[row, row + m)``."""
        m = next(iter(columns.values())).shape[0]
        done = 0
        while done < m:
            index, offset = divmod(row + done, self.capacity)
            n = min(m - done, self.capacity - offset)
            leaves = self._chunk(index)
            try:
                for key, value in columns.items():
                    leaves[key][offset : offset + n].copy_(value[done : done + n])
            except RuntimeError as err:  # SIGBUS-free errors from a full disk surface here
                raise StoreWriteError(
                    0, f"could not write rows to chunk {index} of {str(self.directory)!r}: {err}"
                ) from err
            self.touched.add(index)
            done += n

    def sync(self) -> None:
        """Fsync the files of every chunk written since the last sync."""
        for index in sorted(self.touched):
            for root, _dirs, files in os.walk(self.directory / chunk_dir_name(index)):
                for name in files:
                    fd = os.open(os.path.join(root, name), os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        self.touched.clear()

    def close(self) -> None:
        """Unmap the chunks."""
        self._open.clear()
