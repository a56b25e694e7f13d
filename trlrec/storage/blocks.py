"""Reading compressed columns: blocks decompressed on demand, kept in a bounded cache.

A compressed column file (``<key>.zst``, see :class:`~trlrec.storage.format.CompressedHeader`)
holds independent frames of ``block_rows`` rows each; reading rows decompresses only
the blocks that hold them, and the decompressed blocks are kept in a least-recently
used cache of a bounded number of bytes (never the whole dataset). The frames carry
a checksum: a damaged block is a :class:`~trlrec.errors.CorruptStoreError` naming the
file, never wrong values.
"""

from __future__ import annotations

import functools
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trlrec.errors import CorruptStoreError
from trlrec.storage.compression import FrameSource, codec_by_id
from trlrec.storage.decode_threads import even_parts, run_in_parts
from trlrec.storage.dtypes import row_bytes_view, take_rows
from trlrec.storage.format import ZHEAD_PREFIX, CompressedHeader, chunk_spans
from trlrec.storage.jsonio import open_regular

__all__ = ["BlockCache", "CompressedColumn", "gather"]

BLOCK_CACHE_BYTES = 64 * 2**20
"""Decompressed bytes a shard reader keeps, by default."""
WHOLE_BYTES = 4 * 2**20
"""A compressed column of at most this many bytes a chunk is decompressed and kept whole."""
GROUP_BYTES = 4 * 2**20
"""Decompressed bytes of the blocks a gather hands to a thread at once."""
SAMPLE_BYTES = 64 * 2**20
"""Decompressed bytes a gather holds at once: a larger one runs in pieces."""


_threads = threading.local()


def _anonymous(nbytes: int) -> torch.Tensor:
    """``nbytes`` (at least one) of a private anonymous map, as uint8.

    Private: a forked child's writes are its own (a shared map, mmap's default, would
    let a child decompressing into a reused buffer change its parent's rows).
    """
    return torch.frombuffer(
        mmap.mmap(-1, max(1, nbytes), flags=mmap.MAP_PRIVATE), dtype=torch.uint8
    )


def scratch(nbytes: int) -> np.ndarray:
    """A buffer of ``nbytes`` this thread's gathers decompress their blocks into.

    One a thread, whatever the shard (the threads a gather is split over decode into
    its caller's), reused call to call: it grows to the largest gather asked for (at
    most about :data:`SAMPLE_BYTES`), in an anonymous map as blocks are, and is never
    held past the call that asked for it.
    """
    have = getattr(_threads, "scratch", None)
    if have is None or have.numel() < nbytes:
        have = _threads.scratch = _anonymous(nbytes)
    return have.numpy()[:nbytes]


class BlockCache:
    """Decompressed blocks, least recently used dropped first past ``capacity`` bytes.

    A block is a 1-D uint8 buffer in an anonymous memory map of its own, which never
    leaves the cache (readers copy rows out of it): a dropped block's buffer is reused
    for the next block of its size, so blocks coming and going neither fault fresh pages
    in nor fragment the heap (blocks from malloc grew a sampling reader by a GB). A few
    spare buffers a size are kept; the others are unmapped.
    """

    _SPARE = 4  # dropped buffers kept for reuse, per size

    def __init__(self, capacity: int = BLOCK_CACHE_BYTES) -> None:
        self.capacity = capacity
        self.size = 0
        self._blocks: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._spare: dict[int, list[torch.Tensor]] = {}

    def get(self, key: tuple[str, int]) -> torch.Tensor | None:
        """The block at ``key`` (file, block), or None."""
        value = self._blocks.get(key)
        if value is not None:
            self._blocks.move_to_end(key)
        return value

    def buffer(self, nbytes: int) -> torch.Tensor:
        """A buffer of ``nbytes`` to decompress a block into: a dropped block's, or a new one."""
        spare = self._spare.get(nbytes)
        if spare:
            return spare.pop()
        return _anonymous(nbytes)[:nbytes]

    def put(self, key: tuple[str, int], value: torch.Tensor) -> None:
        """Keep ``value`` (from :meth:`buffer`); drop the oldest blocks past the capacity."""
        self._blocks[key] = value
        self.size += value.numel()
        while self.size > self.capacity and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self.size -= old.numel()
            spare = self._spare.setdefault(old.numel(), [])
            if len(spare) < self._SPARE:
                spare.append(old)

    def __len__(self) -> int:
        return len(self._blocks)


class CompressedColumn:
    """The rows of one compressed column of a chunk: indexed like the raw tensor.

    ``column[a:b]`` and ``column[offsets]`` (an int64 tensor) return the rows as a
    tensor of the column's dtype, decompressing only the blocks that hold them.

    Args:
        path: the ``.zst`` file.
        shape, dtype: a row's shape and dtype (from the schema).
        cache: the shard reader's cache of decompressed blocks.
    """

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: torch.dtype, cache: BlockCache
    ) -> None:
        self.path = path
        self.row_shape = shape
        self.dtype = dtype
        self.cache = cache
        self._name = str(path)
        try:
            with open_regular(path) as f:
                size = os.fstat(f.fileno()).st_size
                first = f.read(ZHEAD_PREFIX)
                want = CompressedHeader.head_size(first)
                data = first + f.read(max(0, min(want, size) - len(first)))
                head = CompressedHeader.parse(data, size, path)
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as err:
            raise CorruptStoreError(f"cannot read {str(path)!r}: {err.strerror}") from err
        row_bytes = torch.empty((), dtype=dtype).element_size()
        for d in shape:
            row_bytes *= d
        if head.row_bytes != row_bytes:
            raise CorruptStoreError(
                f"{str(path)!r} holds rows of {head.row_bytes} bytes; the schema's "
                f"{shape} {dtype} are {row_bytes}. The compressed column is damaged"
            )
        self.head = head
        self.codec = codec_by_id(head.codec, path)
        self.rows = head.rows

    @property
    def shape(self) -> torch.Size:
        """``(rows, *row shape)``."""
        return torch.Size((self.rows, *self.row_shape))

    def __len__(self) -> int:
        return self.rows

    @functools.cached_property
    def _frames(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Each block's frame ``[start, end)`` in the file (``[blocks, 2]``), and its CRC-32."""
        head = self.head
        ends = np.asarray(head.ends, dtype=np.int64) + head.size
        spans = np.stack([np.r_[head.size, ends[:-1]], ends], axis=1) if len(ends) else ends
        crcs = None if head.frame_crcs is None else np.asarray(head.frame_crcs, dtype=np.int64)
        return spans.reshape(-1, 2), crcs

    def _decompress(self, blocks: np.ndarray | list[int], out: np.ndarray) -> None:
        """Decompress ``blocks`` end to end into ``out`` (uint8), each frame's checksum checked."""
        if self._map is None:  # an empty file has no frame to read
            raise CorruptStoreError(
                f"{str(self.path)!r} is empty; the compressed column is damaged"
            )
        head = self.head
        picked = np.asarray(blocks, dtype=np.int64)
        spans, crcs = self._frames
        rows = np.minimum(head.block_rows, head.rows - picked * head.block_rows)
        checks = None if crcs is None else crcs[picked].tolist()
        where = FrameSource(self.path, picked.tolist(), checks, self._dictionary)
        self.codec.decompress_into(self._map, spans[picked], out, rows * head.row_bytes, where)

    @functools.cached_property
    def _dictionary(self) -> Any:
        """What the blocks were compressed against (layout 3), decompressed once; or None."""
        head = self.head
        if head.dictionary is None or not head.dict_rows or self._map is None:
            return None
        content: np.ndarray = np.empty(head.dict_rows * head.row_bytes, dtype=np.uint8)
        where = FrameSource(self.path, [-1], [head.dictionary[1]])
        frame = [head.dictionary_frame()]
        self.codec.decompress_into(self._map, frame, content, [content.nbytes], where)
        return self.codec.dictionary(content.tobytes())

    def _cached(self, slot: int, blocks: list[int], rows: int) -> torch.Tensor:
        """``blocks`` (holding ``rows`` rows) decompressed as one cache entry, or found there.

        A view of the cache's buffer: callers copy rows out, never hand it on.
        """
        key = (self._name, slot)
        value = self.cache.get(key)
        if value is None:
            value = self.cache.buffer(rows * self.head.row_bytes)
            self._decompress(blocks, value.numpy())
            self.cache.put(key, value)
        return value

    def _raw(self, index: int) -> np.ndarray:
        """Block ``index``'s rows as ``[n, row_bytes]`` uint8 (a cache entry of its own)."""
        value = self._cached(index, [index], self.head.block_span(index)[1])
        return value.numpy().reshape(-1, self.head.row_bytes)

    def _whole(self) -> np.ndarray:
        """Every row as ``[rows, row_bytes]`` uint8 (one cache entry: slot -1)."""
        value = self._cached(-1, list(range(self.head.blocks)), self.rows)
        return value.numpy().reshape(self.rows, self.head.row_bytes)

    def _beyond(self, row: int) -> CorruptStoreError:
        return CorruptStoreError(
            f"{str(self.path)!r} holds {self.rows} rows; row {row} of its chunk was asked "
            "for. The chunk is truncated or the episode index damaged"
        )

    def span(self, start: int, count: int) -> torch.Tensor:
        """Rows ``[start, start + count)``.

        Each block's rows are copied out as soon as it is read: reading the next block
        may drop this one from the cache and reuse its buffer.
        """
        if start + count > self.rows:
            raise self._beyond(start + count - 1)
        out = torch.empty((count, *self.row_shape), dtype=self.dtype)
        if count == 0 or self.head.row_bytes == 0:
            return out
        dst = row_bytes_view(out, count)
        at = 0
        for b, offset, n in chunk_spans(start, count, self.head.block_rows):
            dst[at : at + n] = self._raw(b)[offset : offset + n]
            at += n
        return out

    def take(self, offsets: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``offsets`` (an int64 tensor of any shape), into ``out`` when given.

        A random sample decompresses only the blocks it touches. ``out``: contiguous,
        ``[*offsets.shape, *row shape]`` of the column's dtype.
        """
        if out is None:
            out = torch.empty((*offsets.shape, *self.row_shape), dtype=self.dtype)
        return take_rows(self.take_bytes, offsets, out, repr(str(self.path)))

    @property
    def kept_whole(self) -> bool:
        """Whether the column is small enough to be decompressed whole (:data:`WHOLE_BYTES`)."""
        return self.rows * self.head.row_bytes <= WHOLE_BYTES

    def take_bytes(self, offsets: np.ndarray, out: np.ndarray) -> None:
        """:meth:`take` on bytes: rows ``offsets`` (1-D int64, >= 0) into ``out`` ``[n, bytes]``.

        A small column (:attr:`kept_whole`: flags, rewards) is decompressed once and kept
        whole: one gather, as raw. A bigger one decompresses the blocks holding the rows
        (:func:`gather`).
        """
        if not len(offsets):
            return
        if self.kept_whole:
            top = int(offsets.max())
            if top >= self.rows:
                raise self._beyond(top)
            self._whole().take(offsets, axis=0, out=out, mode="clip")
            return
        gather([(self, offsets)], out)

    def __getitem__(self, index: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.rows)
            if step != 1:
                raise IndexError("a compressed column takes slices of step 1")
            return self.span(start, max(0, stop - start))
        return self.take(torch.as_tensor(index, dtype=torch.int64))

    def check(self) -> None:
        """Decompress every block (each frame's checksum is checked); raise the first damage."""
        for b in range(self.head.blocks):
            self._decompress([b], scratch(self.head.block_rows * self.head.row_bytes))


def gather(
    parts: Sequence[tuple[CompressedColumn, np.ndarray]],
    out: np.ndarray,
    order: np.ndarray | None = None,
) -> None:
    """Rows of compressed columns of one row size into ``out`` (``[n, bytes a row]`` uint8).

    ``parts``: ``(column, rows)`` pairs (rows: 1-D int64, >= 0, any order, repeats); their
    rows end to end go to ``out``, or, given ``order``, position ``p`` of ``out`` takes row
    ``order[p]`` of them (a replay sample's chunks, put back in its order).

    Each block holding a row is decompressed once, into one buffer of the calling thread
    (:func:`scratch`), and one ``take`` copies every row from it to its place in ``out``
    (decompressing by groups of blocks and copying each group's rows out, then putting
    them in order, copied each row once more: a tenth of a sample's time). The blocks are
    decompressed in groups of about :data:`GROUP_BYTES`, on threads
    (:mod:`~trlrec.storage.decode_threads`). A gather of more than :data:`SAMPLE_BYTES`
    of blocks runs in pieces of at most that, so memory stays bounded. The rows are put in
    place on the threads too (numpy's ``take`` releases the GIL): a sample 8.7 -> 8.3 ms.

    A random sample rarely finds its blocks again, so it neither reads nor fills the
    block cache.

    Raises:
        CorruptStoreError: a row lies past a column's rows, or a block is damaged.
    """
    rb = out.shape[1]
    tasks: list[tuple[CompressedColumn, np.ndarray, int]] = []  # blocks from a decoded row
    where: list[np.ndarray] = []  # each row's place among the decoded rows
    at = 0
    for column, rows in parts:
        if not len(rows):
            continue
        top = int(rows.max())
        if top >= column.rows:
            raise column._beyond(top)
        br = column.head.block_rows
        distinct, which = np.unique(rows // br, return_inverse=True)
        where.append(at + which.reshape(-1) * br + rows % br)
        per = max(1, GROUP_BYTES // (br * rb))  # blocks a group
        starts = range(0, len(distinct), per)
        tasks += [(column, distinct[k : k + per], at + k * br) for k in starts]
        at += len(distinct) * br
    if not where:
        return
    place = np.concatenate(where) if len(where) > 1 else where[0]
    if order is not None:
        place = place[order]
    pieces = _pieces([len(b) * c.head.block_rows * rb for c, b, _ in tasks], SAMPLE_BYTES)
    for first, end in pieces:
        low = tasks[first][2]
        column, blocks, start = tasks[end - 1]
        high = start + len(blocks) * column.head.block_rows
        held = scratch((high - low) * rb).reshape(-1, rb)

        def work(task: tuple[CompressedColumn, np.ndarray, int], low: int = low,
                 held: np.ndarray = held) -> None:  # fmt: skip
            column, blocks, start = task
            rows = len(blocks) * column.head.block_rows
            column._decompress(blocks, held[start - low : start - low + rows].reshape(-1))

        run_in_parts(work, tasks[first:end], (high - low) * rb)
        if len(pieces) == 1:  # every row to its place, in parts on the threads too
            spot: np.ndarray = place - low

            def put(part: slice, spot: np.ndarray = spot, held: np.ndarray = held) -> None:
                held.take(spot[part], axis=0, out=out[part], mode="clip")

            run_in_parts(put, even_parts(len(spot)), out.nbytes)
        else:
            mine = np.flatnonzero((place >= low) & (place < high))
            out[mine] = held.take(place[mine] - low, axis=0)


def _pieces(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """``[first, end)`` runs of ``sizes``, each of at most ``limit`` in all (or one item)."""
    out, first, total = [], 0, 0
    for k, size in enumerate(sizes):
        if k > first and total + size > limit:
            out.append((first, k))
            first, total = k, 0
        total += size
    out.append((first, len(sizes)))
    return out
