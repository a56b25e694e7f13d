"""The on-disk format in one place: names, versions, records and row arithmetic.

Everything that says how a store is laid out lives here (docs/FORMAT.md is its
prose): the file names, the version constants and the dispatch of each supported
version to its parser, the typed records of ``episodes.bin`` and ``COMMIT`` and
their checks, where a row lives (chunk and offset) and the T + 1 layout (which
rows of a stream hold an episode's root and ``"next"`` values). The reader, the
replay buffer, the CLI and the writer all use it; it imports nothing of either
side, nor torch (the arithmetic works on ints and tensors alike).

Reading version 1 is one code path (:data:`SUPPORTED_VERSIONS` maps it to its
parser); a version 2 is added beside it as another entry, and
:data:`FORMAT_VERSION` names the version writers write.

Example:
    >>> rec = EpisodeRecord(stream=1, start_row=10, num_steps=3, flags=FLAG_DONE,
    ...                     first_transition=7)
    >>> EpisodeRecord.unpack_many(rec.pack() * 2) == [rec, rec]
    True
    >>> list(rec.rows), list(rec.column_rows("state", "next"))
    ([10, 11, 12, 13], [11, 12, 13])
    >>> list(chunk_spans(rec.rows.start, len(rec.rows), chunk_rows=12))
    [(0, 10, 2), (1, 0, 2)]
    >>> StreamEntry.from_json([14, 3, 10, 3, 7], "COMMIT").open_episode(1).flags == FLAG_OPEN
    True
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from trlrec.errors import CorruptStoreError, FormatVersionError
from trlrec.storage.jsonio import read_json

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "StoreFormat",
    "store_format",
    "DATASET_FILE",
    "SHARDS_DIR",
    "SHARD_FILE",
    "SCHEMA_FILE",
    "COMMIT_FILE",
    "LOCK_FILE",
    "EPISODES_FILE",
    "EPISODE_META_FILE",
    "STREAMS_DIR",
    "COLUMN_SUFFIX",
    "COMPRESSED_SUFFIX",
    "COMPRESSED_VERSION",
    "BLOCK_BYTES",
    "CompressedHeader",
    "frame_crc",
    "compressed_file",
    "block_rows_for",
    "DICTIONARY_BYTES",
    "dictionary_rows",
    "ZHEAD_PREFIX",
    "chunk_rows_needed",
    "EPISODE_FIELDS",
    "EPISODE_RECORD_BYTES",
    "EPISODE_DTYPE",
    "FAULT_FIELDS",
    "FAULT_PAST_END",
    "MAX_EPISODE_META_BYTES",
    "commit_max_bytes",
    "FLAG_DONE",
    "FLAG_CUT",
    "FLAG_OPEN",
    "ROOT",
    "NEXT",
    "EpisodeRecord",
    "StreamEntry",
    "CommitRecord",
    "chunk_dir_name",
    "chunk_path",
    "column_file",
    "key_file_name",
    "row_chunk",
    "chunk_spans",
    "chunk_count",
    "placements",
]

# ------------------------------------------------------------------ names
FORMAT_NAME = "trlrec"
FORMAT_VERSION = 1
"""The version this trlrec writes (dataset.json, shard.json and COMMIT)."""

DATASET_FILE = "dataset.json"
SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"
SCHEMA_FILE = "schema.json"
COMMIT_FILE = "COMMIT"
LOCK_FILE = "LOCK"
EPISODES_FILE = "episodes.bin"
EPISODE_META_FILE = "episode_meta.jsonl"
STREAMS_DIR = "streams"
COLUMN_SUFFIX = ".memmap"  # a column's file in a chunk: <key>.memmap
COMPRESSED_SUFFIX = ".zst"  # a compressed column's file in a chunk: <key>.zst
COMPRESSED_VERSION = 4
"""The version of a shard whose chunks may hold compressed columns (COMMIT's version).

Version 2 (read, no longer written) held only ``TRLRECZ1`` files, whose frames carry a
checksum of their decompressed bytes; version 3 (read, no longer written) ``TRLRECZ2``
files, whose index holds a CRC-32 of each compressed frame (checked before it is
decompressed, ~1000x fewer bytes for Atari frames). Version 4 writes ``TRLRECZ3``
files, whose blocks are compressed against a dictionary of a few of the chunk's own
rows (:func:`dictionary_rows`), and may keep the files of versions 2 and 3.
"""

# episodes.bin: little-endian int64 records of these fields, in this order.
EPISODE_FIELDS = (
    "stream",  # sub-environment index within the shard
    "start_row",  # logical row of the episode's first timestep in its stream
    "num_steps",  # transitions T; the episode spans T + 1 rows
    "flags",  # FLAG_* bits
    "first_transition",  # index of the first transition among the stream's transitions
    "meta_offset",  # byte offset of its JSON line in episode_meta.jsonl, or -1
    "meta_length",  # byte length of that line (without newline), or 0
    "reserved",
)
_RECORD = struct.Struct("<" + "q" * len(EPISODE_FIELDS))
EPISODE_RECORD_BYTES = _RECORD.size
EPISODE_DTYPE = np.dtype([(name, "<i8") for name in EPISODE_FIELDS])
"""A record of ``episodes.bin`` as a numpy structured dtype: the same 64 bytes."""

MAX_EPISODE_META_BYTES = 2**20
"""The most one episode's metadata may take as JSON: writers refuse more, readers call more
damage. It bounds ``episode_meta.jsonl`` lines and ``COMMIT``'s ``open_meta``."""


def commit_max_bytes(num_streams: int) -> int:
    """The most a ``COMMIT`` of a shard of ``num_streams`` streams can hold, in bytes.

    Its fixed fields, one stream entry (five integers) and one open episode's metadata
    per stream; a larger file is damage, refused before it is read.
    """
    return 4096 + num_streams * (256 + MAX_EPISODE_META_BYTES)


# Flags of an episode record.
FLAG_DONE = 1  # ended by a done flag of the environment
FLAG_CUT = 2  # ended because the next transition did not continue it (rollout cut, reset)
FLAG_OPEN = 4  # still being written when the commit was made (or the writer died)

# The two parts of a rollout row (a transition): its root keys and its "next" keys.
ROOT = "root"
NEXT = "next"

_COUNT_LIMIT = 2**62  # counts at or above this are damage, never a real store


def chunk_dir_name(index: int) -> str:
    """The directory name of chunk ``index`` of a stream."""
    return f"chunk-{index:06d}"


def chunk_path(shard_dir: Path, stream: int, index: int) -> Path:
    """The directory of chunk ``index`` of stream ``stream`` of the shard at ``shard_dir``."""
    return shard_dir / STREAMS_DIR / str(stream) / chunk_dir_name(index)


# Characters a key component cannot hold as such in a file name, written as ``%XX``
# (uppercase hex of the code point), as tensordict's memmap_like names its files.
_ENCODED = frozenset('/<>:"|?*\\ \x00%' + "".join(map(chr, range(32))) + "\x7f")


def key_file_name(part: str) -> str:
    r"""A key component as the file or directory name of its column in a chunk.

    ``camera pose`` is stored as ``camera%20pose``: a space, ``: < > " | ? * % \ /``,
    a control character or DEL becomes ``%XX``, and ``.``/``..`` become ``%2E``s
    (tensordict's memmap naming, which creates the files).
    """
    if part in (".", ".."):
        return "%2E" * len(part)
    if _ENCODED.isdisjoint(part):
        return part
    return "".join(f"%{ord(c):02X}" if c in _ENCODED else c for c in part)


def column_file(chunk_dir: Path, stored_key: tuple[str, ...]) -> Path:
    """The ``.memmap`` file of a column (its key as stored in a chunk) in a chunk directory."""
    *parents, last = map(key_file_name, stored_key)
    return chunk_dir.joinpath(*parents, last + COLUMN_SUFFIX)


def compressed_file(chunk_dir: Path, stored_key: tuple[str, ...]) -> Path:
    """The ``.zst`` file of a compressed column in a chunk directory (see :func:`column_file`)."""
    raw = column_file(chunk_dir, stored_key)
    return raw.with_name(raw.name.removesuffix(COLUMN_SUFFIX) + COMPRESSED_SUFFIX)


# -------------------------------------------------------- row arithmetic
@overload
def row_chunk(row: int, chunk_rows: int) -> tuple[int, int]: ...
@overload
def row_chunk(row: Any, chunk_rows: Any) -> tuple[Any, Any]: ...
def row_chunk(row: Any, chunk_rows: Any) -> tuple[Any, Any]:
    """``(chunk index, offset in the chunk)`` of a stream's logical ``row``.

    Works element-wise on integer tensors (the replay buffer's gathers) as on ints.
    """
    return row // chunk_rows, row % chunk_rows


def chunk_spans(start: int, count: int, chunk_rows: int) -> Iterator[tuple[int, int, int]]:
    """The pieces of rows ``[start, start + count)``: ``(chunk index, offset, rows)`` each."""
    row, end = start, start + count
    while row < end:
        index, offset = row_chunk(row, chunk_rows)
        n = min(end - row, chunk_rows - offset)
        yield index, offset, n
        row += n


def chunk_count(rows: int, chunk_rows: int) -> int:
    """How many chunks hold the rows ``[0, rows)`` of a stream."""
    return -(-rows // chunk_rows)


def chunk_rows_needed(next_row: int, index: int, chunk_rows: int) -> int:
    """How many rows of chunk ``index`` a stream with ``next_row`` committed rows counts.

    Every chunk but the last is whole (``chunk_rows``); the last holds the rest. A closed
    writer trims (or compresses) its last chunk to this many rows.
    """
    return max(0, min(chunk_rows, next_row - index * chunk_rows))


BLOCK_BYTES = 32 * 2**10
"""About this many raw bytes go in one compressed block (a random read decompresses one).

A trade: a sampled row costs the decompression of its block, and a smaller block
compresses less. At 32 KiB an 84x84x3 frame is a block of its own, 84x84 grayscale a
block of 4 rows and a 210x160x3 screen a block of its own (benchmarks/bench_replay.py,
bench_compress.py). Against a dictionary of the chunk's rows (layout 3,
:func:`dictionary_rows`), 84x84x3 Pong frames compress ~145x in blocks of one and
~260x in blocks of 3 (64 KiB), and a replay sample decompressing one-row blocks took
7.5 ms on one thread where 3-row blocks took 9.6 (a noisy VM; a sample needs a row and
the next: whole blocks of rows it does not need were much of the work). 256 KiB
compressed ~2x smaller and sampled ~2x slower.
"""
_MAX_BLOCK_ROWS = 1024


def block_rows_for(row_bytes: int) -> int:
    """Rows per compressed block for a column of ``row_bytes`` bytes a row (1 to 1024).

    A block's rows are found as :func:`row_chunk` finds a chunk's: row ``r`` of a chunk is
    offset ``r % block_rows`` of block ``r // block_rows`` (and :func:`chunk_spans`
    cuts a run of rows into blocks).
    """
    return max(1, min(_MAX_BLOCK_ROWS, BLOCK_BYTES // max(1, row_bytes)))


DICTIONARY_BYTES = 64 * 2**10
"""At most this many raw bytes of a chunk's rows make its column's dictionary (layout 3)."""
_DICTIONARY_ROWS = 4


def dictionary_rows(rows: int, row_bytes: int) -> list[int]:
    """The rows of a chunk of ``rows`` rows whose raw bytes make its column's dictionary.

    Every block of a layout-3 file is compressed against the same few rows of its chunk,
    end to end: the centres of equal parts of the chunk, up to 4 and at most
    :data:`DICTIONARY_BYTES` in all (none for rows bigger than that). A block of rows
    like them is then a few long matches into the dictionary rather than a frame
    encoded from nothing, which is most of a small block's decompression: 84x84x3 Atari
    frames decompressed 1.6x faster and compressed 1.8x smaller
    (docs/PERFORMANCE.md). Which rows does not matter to a reader: the file holds the
    dictionary.

    Example:
        >>> dictionary_rows(1000, 21168), dictionary_rows(1000, 7056), dictionary_rows(2, 8)
        ([166, 500, 833], [125, 375, 625, 875], [0, 1])
        >>> dictionary_rows(1000, 100800), dictionary_rows(0, 8)
        ([], [])
    """
    count = min(_DICTIONARY_ROWS, rows, DICTIONARY_BYTES // max(1, row_bytes))
    return [(2 * k + 1) * rows // (2 * count) for k in range(count)]


def frame_crc(frame: bytes | memoryview) -> int:
    """The CRC-32 of a compressed frame's bytes, as a layout-2 or 3 index holds it."""
    return zlib.crc32(frame)


# A compressed column file: this header, (layout 3) the dictionary's frame length and
# CRC-32, the end offset of each block's frame (uint64, from the end of the index and
# the dictionary), the CRC-32 of each frame (uint32; layouts 2 and 3), (layout 3) the
# dictionary's frame, then the frames, each an independent codec frame of
# ``block_rows`` rows (the last block: the rest). ``crc`` covers the header's other
# fields, the dictionary's and the index. The magic names the layout: 1, whose frames
# carry a checksum of their content (COMMIT version 2), 2, whose index checksums each
# compressed frame (COMMIT version 3), or 3, whose blocks are compressed against a
# dictionary of ``dict_rows`` of the chunk's rows (the last header field; 0 in layouts
# 1 and 2), written since COMMIT version 4.
_ZMAGICS = {b"TRLRECZ1": 1, b"TRLRECZ2": 2, b"TRLRECZ3": 3}
_ZHEAD = struct.Struct("<8sIIQQQII")  # magic, codec, block_rows, rows, row_bytes, blocks, crc,
# dict_rows
_ZDICT = struct.Struct("<II")  # layout 3: the dictionary's frame length and its CRC-32
ZHEAD_PREFIX = _ZHEAD.size + _ZDICT.size
"""How many first bytes of a compressed file :meth:`CompressedHeader.head_size` reads."""


@dataclass(frozen=True)
class CompressedHeader:
    """The header and block index of a compressed column file (``<key>.zst``).

    ``frame_crcs``: the CRC-32 of each block's compressed frame (layouts 2 and 3), or None
    for a file of layout 1, whose frames carry their own checksum. ``dictionary``: the
    length and CRC-32 of the dictionary's frame (layout 3), whose ``dict_rows`` rows
    every block was compressed against; None in layouts 1 and 2.

    Example:
        >>> h = CompressedHeader(codec=1, block_rows=4, rows=10, row_bytes=3, ends=(5, 9, 12),
        ...                      frame_crcs=(1, 2, 3), dictionary=(7, 4), dict_rows=2)
        >>> data = h.pack() + b"d" * 7 + b"x" * 12
        >>> CompressedHeader.parse(data[: h.size], len(data), "c.zst") == h
        True
        >>> CompressedHeader.head_size(data[:ZHEAD_PREFIX]) == h.size, h.layout
        (True, 3)
        >>> h.frame(2) == (h.size + 9, h.size + 12), h.block_span(2), h.dictionary_frame()
        (True, (8, 2), (92, 99))
    """

    codec: int
    block_rows: int
    rows: int
    row_bytes: int
    ends: tuple[int, ...]  # end offset of each block's frame, after the index (and dictionary)
    frame_crcs: tuple[int, ...] | None = None
    dictionary: tuple[int, int] | None = None  # (frame length, CRC-32): layout 3
    dict_rows: int = 0

    @property
    def layout(self) -> int:
        """1: frames checksum their content; 2: the index checksums each frame; 3: and more.

        Layout 3 adds a dictionary the blocks were compressed against.
        """
        if self.frame_crcs is None:
            return 1
        return 2 if self.dictionary is None else 3

    @staticmethod
    def _fixed_bytes(layout: int) -> int:
        return _ZHEAD.size + (_ZDICT.size if layout == 3 else 0)

    @staticmethod
    def _entry_bytes(layout: int) -> int:
        return 8 if layout == 1 else 12  # an end offset, and a frame's CRC-32 in layouts 2, 3

    @functools.cached_property
    def size(self) -> int:
        """Bytes of the header, the index and the dictionary: where the first block starts."""
        fixed = self._fixed_bytes(self.layout) + self._entry_bytes(self.layout) * len(self.ends)
        return fixed + self._dictionary_bytes

    @property
    def blocks(self) -> int:
        """How many blocks the file holds."""
        return len(self.ends)

    def block_span(self, block: int) -> tuple[int, int]:
        """``(first row, rows)`` of ``block`` in the chunk."""
        first = block * self.block_rows
        return first, min(self.block_rows, self.rows - first)

    def frame(self, block: int) -> tuple[int, int]:
        """The bytes ``[start, end)`` of ``block``'s frame in the file."""
        at = self.size
        return at + (self.ends[block - 1] if block else 0), at + self.ends[block]

    @property
    def _dictionary_bytes(self) -> int:
        return self.dictionary[0] if self.dictionary is not None else 0

    def dictionary_frame(self) -> tuple[int, int]:
        """The bytes ``[start, end)`` of the dictionary's frame in the file (empty if none)."""
        return self.size - self._dictionary_bytes, self.size

    @classmethod
    def of_frames(
        cls,
        codec: int,
        block_rows: int,
        rows: int,
        row_bytes: int,
        frames: list[memoryview],
        dictionary: memoryview,
        dict_rows: int,
    ) -> CompressedHeader:
        """The header (layout 3) of a file holding ``frames``, one a block, in block order.

        The frames were compressed against the dictionary of ``dict_rows`` rows whose frame
        is ``dictionary`` (empty when there is none).
        """
        ends = tuple(itertools.accumulate(f.nbytes for f in frames))
        return cls(codec, block_rows, rows, row_bytes, ends, tuple(map(frame_crc, frames)),
                   (dictionary.nbytes, frame_crc(dictionary)), dict_rows)  # fmt: skip

    def _index(self) -> bytes:
        n = len(self.ends)
        index = struct.pack(f"<{n}Q", *self.ends)
        return index if self.frame_crcs is None else index + struct.pack(f"<{n}I", *self.frame_crcs)

    def _crc(self) -> int:
        fields = struct.pack("<IIQQQ", self.codec, self.block_rows, self.rows, self.row_bytes,
                             len(self.ends))  # fmt: skip
        crc = zlib.crc32(self._index(), zlib.crc32(fields))
        if self.dictionary is None:
            return crc
        return zlib.crc32(struct.pack("<I", self.dict_rows) + _ZDICT.pack(*self.dictionary), crc)

    def pack(self) -> bytes:
        """The header and the index, as written before the dictionary and the frames."""
        magic = next(m for m, layout in _ZMAGICS.items() if layout == self.layout)
        head = _ZHEAD.pack(magic, self.codec, self.block_rows, self.rows, self.row_bytes,
                           len(self.ends), self._crc(), self.dict_rows)  # fmt: skip
        if self.dictionary is not None:
            head += _ZDICT.pack(*self.dictionary)
        return head + self._index()

    @staticmethod
    def head_size(data: bytes) -> int:
        """Bytes of header, index and dictionary, from the file's first bytes (or 0).

        ``data``: at least the first :data:`ZHEAD_PREFIX` bytes.
        """
        if len(data) < _ZHEAD.size or data[:8] not in _ZMAGICS:
            return 0
        layout = _ZMAGICS[data[:8]]
        entry, fixed = CompressedHeader._entry_bytes(layout), CompressedHeader._fixed_bytes(layout)
        blocks = _ZHEAD.unpack_from(data)[5]
        if blocks >= _COUNT_LIMIT // entry or len(data) < fixed:
            return 0
        extra = _ZDICT.unpack_from(data, _ZHEAD.size)[0] if layout == 3 else 0
        return fixed + entry * blocks + extra

    @classmethod
    def parse(cls, data: bytes, file_size: int, path: str | os.PathLike[str]) -> CompressedHeader:
        """Check and decode the header and index ``data`` of a file of ``file_size`` bytes.

        ``data``: the file's first :meth:`head_size` bytes (those of the dictionary's frame
        may be left off).

        Raises:
            CorruptStoreError: the file is not a whole compressed column (names ``path``).
        """
        fix = "the compressed column is damaged; restore it from a copy"
        if len(data) < _ZHEAD.size or data[:8] not in _ZMAGICS:
            raise _damaged(path, "not a trlrec compressed column (bad header)", fix)
        layout = _ZMAGICS[data[:8]]
        _, codec, block_rows, rows, row_bytes, blocks, crc, dict_rows = _ZHEAD.unpack_from(data)
        at = cls._fixed_bytes(layout)
        if len(data) < at + cls._entry_bytes(layout) * blocks:
            raise _damaged(path, f"its index of {blocks} blocks is cut short", fix)
        ends = struct.unpack_from(f"<{blocks}Q", data, at)
        crcs = dictionary = None
        if layout >= 2:
            crcs = tuple(struct.unpack_from(f"<{blocks}I", data, at + 8 * blocks))
        if layout == 3:
            dictionary = _ZDICT.unpack_from(data, _ZHEAD.size)
        head = cls(codec, block_rows, rows, row_bytes, tuple(ends), crcs, dictionary,
                   dict_rows if layout == 3 else 0)  # fmt: skip
        if crc != head._crc() or (layout < 3 and dict_rows):
            raise _damaged(path, "its header or block index fails its checksum", fix)
        if block_rows < 1 or blocks != -(-rows // block_rows):
            raise _damaged(path, f"{blocks} blocks of {block_rows} rows cannot hold {rows}", fix)
        if any(b < a for a, b in zip((0, *ends), ends, strict=False)):
            raise _damaged(path, "its block offsets go backwards", fix)
        counted = head.size + (ends[-1] if ends else 0)
        if counted != file_size:
            raise _damaged(path, f"it is {file_size} bytes; its index counts {counted}", fix)
        return head


# The T + 1 layout: where each stored column's values go in a rollout row. Row
# start_row + t of an episode holds the state of timestep t and the root-only and
# next-only values of transition t, so transition t reads state columns at shift 0
# (its root) and shift 1 (its "next"), the other columns at shift 0.
_PLACEMENTS: dict[str, tuple[tuple[str, int], ...]] = {
    "state": ((ROOT, 0), (NEXT, 1)),
    "root": ((ROOT, 0),),
    "next": ((NEXT, 0),),
}


def placements(role: str) -> tuple[tuple[str, int], ...]:
    """Where a column of ``role`` goes in a transition: ``(part, row shift)`` pairs.

    ``part`` is :data:`ROOT` or :data:`NEXT`; transition ``t`` of an episode takes the
    value from row ``start_row + t + shift``.
    """
    try:
        return _PLACEMENTS[role]
    except KeyError:
        raise ValueError(f"role {role!r} is not one of {sorted(_PLACEMENTS)}") from None


def _shift(role: str, part: str) -> int:
    for p, shift in placements(role):
        if p == part:
            return shift
    raise ValueError(f"a {role!r} column has no value in the {part!r} part of a transition")


# ------------------------------------------------------------ checking
def _is_count(v: Any) -> bool:
    return type(v) is int and 0 <= v < _COUNT_LIMIT


def _damaged(path: str | os.PathLike[str], what: str, fix: str) -> CorruptStoreError:
    return CorruptStoreError(f"{str(path)!r}: {what}; {fix}")


# ------------------------------------------------------- episode records
@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """One episode of a stream: rows ``start_row .. start_row + num_steps`` (T + 1 rows).

    On disk (``episodes.bin``) a record is eight little-endian int64 fields, in the
    order of :data:`EPISODE_FIELDS`. An open episode of a commit is an ``EpisodeRecord``
    with :data:`FLAG_OPEN` that is never written to ``episodes.bin``.
    """

    stream: int
    start_row: int
    num_steps: int
    flags: int
    first_transition: int
    meta_offset: int = -1
    meta_length: int = 0
    reserved: int = 0

    def pack(self) -> bytes:
        """The record's 64 bytes in ``episodes.bin``."""
        return _RECORD.pack(
            self.stream, self.start_row, self.num_steps, self.flags, self.first_transition,
            self.meta_offset, self.meta_length, self.reserved,
        )  # fmt: skip

    @classmethod
    def unpack_from(cls, data: bytes | memoryview, index: int) -> EpisodeRecord:
        """Record ``index`` of the packed records ``data``."""
        return cls(*_RECORD.unpack_from(data, index * EPISODE_RECORD_BYTES))

    @classmethod
    def unpack_many(
        cls, data: bytes | memoryview, path: str | os.PathLike[str] = EPISODES_FILE
    ) -> list[EpisodeRecord]:
        """Decode packed records (``path`` names the file in the error).

        Raises:
            CorruptStoreError: ``data`` is not a whole number of records.
        """
        if len(data) % EPISODE_RECORD_BYTES:
            raise _damaged(
                path,
                f"{len(data)} bytes is not a whole number of {EPISODE_RECORD_BYTES}-byte records",
                "the episode index is truncated",
            )
        return [cls(*fields) for fields in _RECORD.iter_unpack(data)]

    def as_dict(self) -> dict[str, int]:
        """The record's fields by name, in the order of :data:`EPISODE_FIELDS`."""
        return {name: getattr(self, name) for name in EPISODE_FIELDS}

    @property
    def rows(self) -> range:
        """The episode's rows in its stream: ``T + 1`` timesteps."""
        return range(self.start_row, self.start_row + self.num_steps + 1)

    @property
    def end_row(self) -> int:
        """The episode's last row (its final ``"next"`` state)."""
        return self.start_row + self.num_steps

    def column_rows(self, role: str, part: str) -> range:
        """The ``T`` rows holding the ``part`` values (:data:`ROOT`/:data:`NEXT`) of a column.

        A state column's root values are rows ``start .. start + T - 1``, its ``"next"``
        values rows ``start + 1 .. start + T``; root and next columns are in the first
        ``T`` rows (the last row holds zeros there).
        """
        first = self.start_row + _shift(role, part)
        return range(first, first + self.num_steps)

    def stored_rows(self, role: str) -> range:
        """The rows of the episode that hold values of a ``role`` column (T + 1 for state)."""
        return self.rows if role == "state" else self.rows[: self.num_steps]

    def meta_span(self, committed: int, path: str | os.PathLike[str], index: int) -> range | None:
        """The bytes of ``episode_meta.jsonl`` holding this episode's metadata, or None.

        Raises:
            CorruptStoreError: the span lies outside the ``committed`` bytes.
        """
        if self.meta_offset == -1:
            return None
        end = self.meta_offset + self.meta_length
        if self.meta_length > MAX_EPISODE_META_BYTES:
            raise _damaged(
                path,
                f"episode {index} has {self.meta_length} bytes of metadata, more than the "
                f"{MAX_EPISODE_META_BYTES} a writer stores",
                "the episode index is damaged",
            )
        if self.meta_offset < 0 or self.meta_length < 0 or end > committed:
            raise _damaged(
                path,
                f"episode {index} points at bytes {self.meta_offset}..{end}, outside the "
                f"{committed} committed",
                "the episode index is damaged",
            )
        return range(self.meta_offset, end)


# --------------------------------------------------------- COMMIT streams
@dataclass(frozen=True, slots=True)
class StreamEntry:
    """A stream's state at a commit: its rows, transitions and open episode.

    On disk it is the list ``[next_row, transitions, open_start, open_steps, open_first]``
    (the open episode is ``-1, -1, -1`` when there is none).
    """

    next_row: int  # rows below it are written
    transitions: int  # transitions committed in the stream
    open_start: int = -1  # the episode still open at the commit: its first row,
    open_steps: int = -1  # its transitions so far,
    open_first: int = -1  # and the index of its first transition

    def to_json(self) -> list[int]:
        """The positional list COMMIT stores."""
        return [self.next_row, self.transitions, self.open_start, self.open_steps, self.open_first]

    @classmethod
    def from_json(cls, value: Any, path: str | os.PathLike[str]) -> StreamEntry:
        """Parse and check one entry of COMMIT's ``streams`` (``path`` names the file).

        Raises:
            CorruptStoreError: the entry is not five counts that fit together.
        """
        fix = "the commit record is damaged"
        if not (isinstance(value, list) and len(value) == 5):
            raise _damaged(
                path,
                f"stream entry {value!r} is not [next_row, transitions, open_start, "
                "open_steps, open_first]",
                fix,
            )
        next_row, transitions, *opened = value
        if not (_is_count(next_row) and _is_count(transitions)) or not all(
            v == -1 or _is_count(v) for v in opened
        ):
            raise _damaged(path, f"stream entry {value!r} holds a value that is not a count", fix)
        if (opened[0] == -1) != (opened[1] == -1) or (opened[0] == -1) != (opened[2] == -1):
            raise _damaged(
                path, f"stream entry {value!r}: its open episode is partly -1 (none)", fix
            )
        if transitions > 0 and transitions >= next_row:  # T transitions span >= T + 1 rows
            raise _damaged(path, f"stream entry {value!r} counts more transitions than rows", fix)
        if opened[0] >= 0 and opened[0] + opened[1] >= next_row:
            raise _damaged(
                path, f"stream entry {value!r}: the open episode ends past the stream's rows", fix
            )
        return cls(next_row, transitions, *opened)

    def open_episode(self, stream: int) -> EpisodeRecord | None:
        """The episode open at the commit, when it has a transition (flag ``open``)."""
        if self.open_start < 0 or self.open_steps < 1:
            return None
        return EpisodeRecord(stream, self.open_start, self.open_steps, FLAG_OPEN, self.open_first)


# ------------------------------------------------------------------ COMMIT
@dataclass(frozen=True)
class CommitRecord:
    """A shard's commit record: every count a reader may trust (see docs/FORMAT.md).

    Example:
        >>> rec = CommitRecord(seq=1, episodes=0, episode_meta_bytes=0, chunk_rows=8,
        ...                    streams=(StreamEntry(4, 3, 0, 3, 0),))
        >>> rec.to_json()["streams"], rec.num_transitions, len(rec.open_episodes())
        ([[4, 3, 0, 3, 0]], 3, 1)
    """

    seq: int
    episodes: int  # records of episodes.bin committed
    episode_meta_bytes: int  # bytes of episode_meta.jsonl committed
    chunk_rows: int
    streams: tuple[StreamEntry, ...]
    open_meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(stream) -> meta
    version: int = FORMAT_VERSION

    @classmethod
    def parse(cls, path: Path, num_streams: int | None = None) -> CommitRecord:
        """Read and check the COMMIT file at ``path``, by the parser of its version.

        With the shard's ``num_streams`` (from its schema), a file larger than such a
        commit can be (:func:`commit_max_bytes`) is refused before it is read.

        Raises:
            NotAStoreError: the file is missing.
            CorruptStoreError: it is damaged (the message names it and what is wrong).
            FormatVersionError: its version is not in :data:`SUPPORTED_VERSIONS`.
        """
        if num_streams is None:
            data = read_json(path)
        else:
            data = read_json(path, max_bytes=commit_max_bytes(num_streams))
        return store_format(data.get("version"), path).parse_commit(data, path)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to COMMIT."""
        return {
            "version": self.version,
            "seq": self.seq,
            "episodes": self.episodes,
            "episode_meta_bytes": self.episode_meta_bytes,
            "chunk_rows": self.chunk_rows,
            "streams": [s.to_json() for s in self.streams],
            "open_meta": self.open_meta,
        }

    @property
    def num_transitions(self) -> int:
        """Transitions committed, all streams together."""
        return sum(s.transitions for s in self.streams)

    def open_episodes(self) -> list[EpisodeRecord]:
        """The episodes open at the commit that have a transition, in stream order."""
        out = []
        for b, s in enumerate(self.streams):
            ep = s.open_episode(b)
            if ep is not None:
                out.append(ep)
        return out

    def stream_meta(self, stream: int) -> dict[str, Any]:
        """The metadata attached so far to the open episode of ``stream`` (``{}`` if none)."""
        return dict(self.open_meta.get(str(stream), {}))

    def episode_faults(self, records: np.ndarray) -> np.ndarray:
        """Which of ``records`` (:data:`EPISODE_DTYPE`) do not fit this commit, and why.

        The one rule a reader checks each episode record by (all of a shard's at once).

        Returns:
            One ``uint8`` a record: 0 fits; :data:`FAULT_FIELDS` names a stream that
            does not exist, starts before row 0 or is empty; :data:`FAULT_PAST_END`
            lies past its stream's committed rows.
        """
        b, start, steps = records["stream"], records["start_row"], records["num_steps"]
        bad = (b < 0) | (b >= len(self.streams)) | (start < 0) | (steps < 1)
        next_rows = np.array([s.next_row for s in self.streams] or [0], dtype=np.int64)
        # end_row >= next_row, written so that no int64 overflows (start, steps < 2**63)
        past = ~bad & (start >= next_rows[np.where(bad, 0, b)] - np.where(bad, 0, steps))
        return np.where(bad, FAULT_FIELDS, np.where(past, FAULT_PAST_END, 0)).astype(np.uint8)

    def episode_error(
        self, rec: EpisodeRecord, index: int, fault: int, path: str | os.PathLike[str]
    ) -> CorruptStoreError:
        """The error of episode ``index`` (of the index file at ``path``) with ``fault``."""
        fix = "the episode index is damaged"
        if fault == FAULT_FIELDS:
            what = f"has stream {rec.stream}, start {rec.start_row}, {rec.num_steps} steps"
        else:
            committed = self.streams[rec.stream].next_row
            what = (
                f"ends at row {rec.end_row}, past the {committed} committed rows of stream "
                f"{rec.stream}"
            )
        return _damaged(path, f"episode {index} {what}", fix)


FAULT_FIELDS = 1
"""An episode record's fault: a stream that does not exist, a negative start, no step."""
FAULT_PAST_END = 2
"""An episode record's fault: it ends past its stream's committed rows."""


def _parse_commit_v1(data: dict[str, Any], path: Path, version: int = 1) -> CommitRecord:
    """Version 1 of COMMIT: see docs/FORMAT.md."""
    fix = "the commit record is damaged"
    for name in ("seq", "episodes", "episode_meta_bytes", "chunk_rows"):
        if not _is_count(data.get(name)):
            raise _damaged(
                path, f"{name!r} is {data.get(name)!r}, expected a non-negative int", fix
            )
    if data["chunk_rows"] < 1:
        raise _damaged(path, "'chunk_rows' must be at least 1", fix)
    streams = data.get("streams")
    if not isinstance(streams, list):
        raise _damaged(path, "'streams' is not a list", fix)
    metas = data.get("open_meta", {})
    if not isinstance(metas, dict):
        raise _damaged(path, "'open_meta' is not an object", fix)
    for key, meta in metas.items():
        if not isinstance(meta, dict):
            raise _damaged(
                path,
                f"'open_meta' of stream {key!r} is a {type(meta).__name__}, not an object",
                fix,
            )
    return CommitRecord(
        seq=data["seq"],
        episodes=data["episodes"],
        episode_meta_bytes=data["episode_meta_bytes"],
        chunk_rows=data["chunk_rows"],
        streams=tuple(StreamEntry.from_json(s, path) for s in streams),
        open_meta=metas,
        version=version,
    )


def _parse_commit_v2(data: dict[str, Any], path: Path) -> CommitRecord:
    """Version 2 of COMMIT: version 1's fields; the shard's chunks may hold ``.zst`` columns."""
    return _parse_commit_v1(data, path, 2)


def _parse_commit_v3(data: dict[str, Any], path: Path) -> CommitRecord:
    """Version 3 of COMMIT: version 2's; its ``.zst`` columns may be of layout 2."""
    return _parse_commit_v1(data, path, 3)


def _parse_commit_v4(data: dict[str, Any], path: Path) -> CommitRecord:
    """Version 4 of COMMIT: version 3's; its ``.zst`` columns may be of layout 3."""
    return _parse_commit_v1(data, path, 4)


# ---------------------------------------------------------------- versions
@dataclass(frozen=True)
class StoreFormat:
    """One readable version of the format: its number and the parsers of its records."""

    version: int
    parse_commit: Callable[[dict[str, Any], Path], CommitRecord]


SUPPORTED_VERSIONS: Mapping[int, StoreFormat] = {
    1: StoreFormat(1, _parse_commit_v1),
    2: StoreFormat(2, _parse_commit_v2),
    3: StoreFormat(3, _parse_commit_v3),
    4: StoreFormat(4, _parse_commit_v4),
}
"""The versions this trlrec reads, each to its parsers (a new version is a new entry)."""


def store_format(version: Any, path: str | os.PathLike[str]) -> StoreFormat:
    """The format of ``version``, read from the file at ``path``.

    Raises:
        FormatVersionError: this trlrec does not read ``version`` (the message names the
            file, the version found and the versions supported).
    """
    if type(version) is int and version in SUPPORTED_VERSIONS:
        return SUPPORTED_VERSIONS[version]
    supported = sorted(SUPPORTED_VERSIONS)
    newer = type(version) is int and version > supported[-1]
    raise FormatVersionError(
        f"{str(path)!r} has format version {version!r}; this trlrec reads versions "
        f"{supported}. "
        + ("Upgrade trlrec to read it" if newer else "The file is damaged or not a trlrec file")
    )
