"""Read one shard: its commit record, episode index and chunks, each checked against the files."""

from __future__ import annotations

import functools
import math
import os
import stat
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias, cast

import numpy as np
import torch
from tensordict import MemoryMappedTensor, TensorDict

from trlrec.errors import CorruptStoreError
from trlrec.storage.blocks import BlockCache, CompressedColumn
from trlrec.storage.dtypes import row_bytes_view, take_rows
from trlrec.storage.format import (
    COMMIT_FILE,
    EPISODE_DTYPE,
    EPISODE_META_FILE,
    EPISODE_RECORD_BYTES,
    EPISODES_FILE,
    NEXT,
    ROOT,
    SCHEMA_FILE,
    SHARD_FILE,
    CommitRecord,
    EpisodeRecord,
    StreamEntry,
    chunk_count,
    chunk_path,
    chunk_spans,
    column_file,
    compressed_file,
    placements,
    store_format,
)
from trlrec.storage.jsonio import loads, open_regular, read_json
from trlrec.storage.schema import Entry, Key, Schema

__all__ = ["ShardReader", "EpisodeInfo"]

# Chunks whose columns stay mapped: this many columns in all (a memory map each, well
# under the kernel's 65,530), and at least 16 chunks. A replay buffer touches the chunks of
# its samples over and over: a chunk mapped again costs ~0.1 ms a column.
_MAPPED_COLUMNS = 8192
_MIN_CHUNKS = 16

Leaf: TypeAlias = torch.Tensor | CompressedColumn
"""A column of a chunk: a memory-mapped tensor, or compressed blocks read on demand."""


_CHECKED_TAKE_BYTES = 64 * 2**10
"""A gather of at least this many bytes checks its rows with a max: numpy's check buffers
the whole output (a second copy: a raw pixel sample 6.7 -> 4.8 ms), a max costs ~2 us."""


class _Chunk:
    """A chunk's leaves, and the raw ones as ``[rows, bytes a row]`` uint8 arrays (made once)."""

    __slots__ = ("_bytes", "leaves")

    def __init__(self, leaves: dict[Key, Leaf]) -> None:
        self.leaves = leaves
        self._bytes: dict[Key, np.ndarray] = {}

    def row_bytes(self, key: Key) -> np.ndarray:
        """A raw (not empty) leaf's rows as bytes, a view of its memory map."""
        view = self._bytes.get(key)
        if view is None:
            leaf = cast(torch.Tensor, self.leaves[key])  # take_bytes asks for raw leaves only
            view = self._bytes[key] = row_bytes_view(leaf.as_subclass(torch.Tensor), len(leaf))
        return view


class EpisodeInfo(dict):
    """Where an episode lives: shard, index, and the fields of its :class:`EpisodeRecord`."""


def _inside(root: Path, path: Path) -> Path:
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise CorruptStoreError(
            f"{str(path)!r} resolves to {str(real)!r}, outside the store {str(root)!r}; "
            "refusing to follow it"
        )
    return real


class ShardReader:
    """A read-only view of one shard's committed data."""

    def __init__(self, root: Path, directory: Path):
        try:
            directory.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CorruptStoreError(
                f"{str(directory)!r}: the shard's name is not valid UTF-8, so its chunks cannot "
                "be mapped; rename the directory"
            ) from None
        self.root = root
        self.directory = _inside(root, directory)
        self.name = directory.name
        self.schema = Schema.from_json(
            read_json(_inside(root, directory / SCHEMA_FILE)), directory / SCHEMA_FILE
        )  # first: its stream count bounds the size of the commit record
        self.commit = CommitRecord.parse(
            _inside(root, directory / COMMIT_FILE), self.schema.num_streams
        )
        self.metadata: dict[str, Any] = self._read_metadata(directory / SHARD_FILE)
        self.chunk_rows: int = self.commit.chunk_rows
        self.streams: tuple[StreamEntry, ...] = self.commit.streams
        if len(self.streams) != self.schema.num_streams:
            raise CorruptStoreError(
                f"{str(directory / COMMIT_FILE)!r} lists {len(self.streams)} streams, the schema "
                f"{self.schema.num_streams}; the shard is damaged"
            )
        self.num_closed = self.commit.episodes
        self._check_rows()
        self._index = self._read_index()
        self.open_episodes = self.commit.open_episodes()
        self.num_episodes = self.num_closed + len(self.open_episodes)
        self.num_steps = self.commit.num_transitions
        self._chunks: OrderedDict[tuple[int, int], _Chunk] = OrderedDict()
        self._max_chunks = max(_MIN_CHUNKS, _MAPPED_COLUMNS // max(1, len(self.schema.entries)))
        self._blocks = BlockCache()  # decompressed blocks of compressed columns

    def _read_metadata(self, path: Path) -> dict[str, Any]:
        """The ``metadata`` of ``shard.json`` (``{}`` without the file), its version checked."""
        self.written_by: dict[str, Any] = {}
        if not path.exists():
            return {}
        data = read_json(_inside(self.root, path))
        store_format(data.get("version"), path)
        # who wrote it (host, pid, rank); older shards have only a pid, or nothing
        self.written_by = {k: data[k] for k in ("host", "pid", "rank") if k in data}
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise CorruptStoreError(
                f"{str(path)!r}: 'metadata' is a {type(metadata).__name__}, not an object; "
                "the file is damaged"
            )
        return metadata

    def _check_rows(self) -> None:
        """Check the commit's row counts against the chunks and index files that exist."""
        commit = self.directory / COMMIT_FILE
        for b, s in enumerate(self.streams):
            if s.next_row == 0:
                continue
            last = chunk_path(self.directory, b, chunk_count(s.next_row, self.chunk_rows) - 1)
            if not last.is_dir():
                raise CorruptStoreError(
                    f"{str(commit)!r} counts {s.next_row} rows in stream {b}, but its chunk "
                    f"{last.name} does not exist; the commit record or the chunks are damaged"
                )
        meta_bytes = self.commit.episode_meta_bytes
        if meta_bytes:
            path = _inside(self.root, self.directory / EPISODE_META_FILE)
            size = path.stat().st_size if path.exists() else 0
            if size < meta_bytes:
                raise CorruptStoreError(
                    f"{str(path)!r} is {size} bytes; its commit record counts {meta_bytes}. "
                    "The file is truncated"
                )

    def _read_index(self) -> bytes:
        """The committed records of ``episodes.bin`` (checked against the file's size first)."""
        if self.num_closed == 0:
            return b""
        path = _inside(self.root, self.directory / EPISODES_FILE)
        need = self.num_closed * EPISODE_RECORD_BYTES
        size = path.stat().st_size if path.exists() else 0
        if size < need:
            raise CorruptStoreError(
                f"{str(path)!r} is {size} bytes; its commit record counts {self.num_closed} "
                f"episodes ({need} bytes). The file is truncated"
            )
        try:
            with open_regular(path) as f:
                data = f.read(need)
        except OSError as err:
            raise CorruptStoreError(f"cannot read {str(path)!r}: {err.strerror}") from err
        if len(data) != need:
            raise CorruptStoreError(
                f"{str(path)!r} ended at {len(data)} bytes while being read; it counts "
                f"{self.num_closed} episodes ({need} bytes). The file is truncated"
            )
        return data

    @functools.cached_property
    def _records(self) -> np.ndarray:
        """Every episode's record (finished ones, then the open ones), unchecked."""
        opened = b"".join(rec.pack() for rec in self.open_episodes)
        return np.frombuffer(self._index + opened if opened else self._index, EPISODE_DTYPE)

    @functools.cached_property
    def _faults(self) -> np.ndarray:
        """Per episode, whether its record fits the commit (0) or its fault, all checked at once."""
        return self.commit.episode_faults(self._records)

    def record(self, i: int) -> EpisodeRecord:
        """Episode ``i`` of this shard (finished ones, then the open ones), checked."""
        if i < self.num_closed:
            rec = EpisodeRecord.unpack_from(self._index, i)
        else:
            rec = self.open_episodes[i - self.num_closed]
        fault = int(self._faults[i])
        if fault:
            raise self.commit.episode_error(rec, i, fault, self.directory / EPISODES_FILE)
        return rec

    def episode_table(self) -> np.ndarray:
        """Every episode's record, as :meth:`record` gives them one by one: a read-only array.

        Of dtype :data:`~trlrec.storage.format.EPISODE_DTYPE` (a field per record
        field), finished episodes then the open ones, each checked.

        Raises:
            CorruptStoreError: a record does not fit the commit (the first such is named).
        """
        bad = np.flatnonzero(self._faults)
        if bad.size:
            self.record(int(bad[0]))  # raises its error
        return self._records

    def info(self, i: int) -> EpisodeInfo:
        """Where episode ``i`` of this shard lives, checked against the commit record."""
        return EpisodeInfo(shard=self.name, index=i, **self.record(i).as_dict())

    def episode_metadata(self, i: int) -> dict[str, Any]:
        """The metadata attached to episode ``i`` (``{}`` when none)."""
        rec = self.record(i)
        if i >= self.num_closed:
            return self.commit.stream_meta(rec.stream)
        path = _inside(self.root, self.directory / EPISODE_META_FILE)
        span = rec.meta_span(self.commit.episode_meta_bytes, path, i)
        if span is None:
            return {}
        try:
            with open_regular(path) as f:
                size = os.fstat(f.fileno()).st_size
                if span.stop > size:  # never read (allocate) past the file's real end
                    raise CorruptStoreError(
                        f"{str(path)!r} is {size} bytes; episode {i}'s metadata lies at bytes "
                        f"{span.start}..{span.stop}. The file is truncated"
                    )
                f.seek(span.start)
                raw = f.read(len(span))
        except OSError as err:
            raise CorruptStoreError(f"cannot read {str(path)!r}: {err.strerror}") from err
        value = loads(raw, path, f"the metadata of episode {i}")
        if not isinstance(value, dict):
            raise CorruptStoreError(f"{str(path)!r}: metadata of episode {i} is not an object")
        return value

    def _leaf(self, directory: Path, e: Entry) -> Leaf:
        """A column of a chunk: its ``.zst`` where compressed, else its ``.memmap`` mapped.

        A chunk file holds ``chunk_rows`` rows, or fewer (a writer trims its last chunk
        when it closes, and may go on in a fresh chunk after it); a row past them is
        an error when it is read (:meth:`rows`, :meth:`take`), never garbage.
        """
        packed = compressed_file(directory, e.stored_key)
        if e.nbytes and os.path.lexists(packed):
            column = CompressedColumn(_inside(self.root, packed), e.shape, e.dtype, self._blocks)
            if column.rows > self.chunk_rows:
                raise CorruptStoreError(
                    f"{str(packed)!r} holds {column.rows} rows, more than a chunk's "
                    f"{self.chunk_rows}. The chunk is damaged"
                )
            return column
        path = column_file(directory, e.stored_key)
        real = _inside(self.root, path)
        try:
            st = real.stat()
        except FileNotFoundError:
            if e.nbytes and os.path.lexists(packed):  # compressed meanwhile, by its writer
                return self._leaf(directory, e)
            raise CorruptStoreError(f"{str(path)!r} is missing; the chunk is damaged") from None
        except (OSError, ValueError) as err:  # a name too long, a NUL in it
            raise CorruptStoreError(
                f"cannot open {str(path)!r}: {err}; the chunk is damaged"
            ) from err
        if not stat.S_ISREG(st.st_mode):
            raise CorruptStoreError(f"{str(path)!r} is not a regular file; the chunk is damaged")
        row_bytes = math.prod(e.shape) * torch.empty((), dtype=e.dtype).element_size()
        rows = self.chunk_rows if row_bytes == 0 else min(self.chunk_rows, st.st_size // row_bytes)
        if rows == 0:  # a chunk exists once a row was written to it
            raise CorruptStoreError(
                f"{str(path)!r} is {st.st_size} bytes, shorter than one row of {e.shape} "
                f"{e.dtype} ({row_bytes} bytes); the chunk is truncated"
            )
        numel = rows * math.prod(e.shape)  # Python ints: no int64 overflow
        if numel == 0:
            return MemoryMappedTensor(torch.empty((rows, *e.shape), dtype=e.dtype))
        try:
            data = torch.from_file(str(real), shared=False, size=numel, dtype=e.dtype)
        except RuntimeError as err:
            if os.path.lexists(packed):  # compressed meanwhile, by its writer
                return self._leaf(directory, e)
            raise CorruptStoreError(f"{str(path)!r} cannot be mapped: {err}") from err
        return MemoryMappedTensor(data.view(rows, *e.shape))

    def chunk(self, stream: int, index: int) -> dict[Key, Leaf]:
        """The leaves of a chunk, indexed like tensors.

        Raw columns are mapped copy-on-write (the store is never modified), compressed
        ones are :class:`~trlrec.storage.blocks.CompressedColumn` (blocks on demand).
        """
        return self._chunk(stream, index).leaves

    def _chunk(self, stream: int, index: int) -> _Chunk:
        key = (stream, index)
        found = self._chunks.get(key)
        if found is None:
            directory = chunk_path(self.directory, stream, index)
            found = _Chunk({e.stored_key: self._leaf(directory, e) for e in self.schema.entries})
            self._chunks[key] = found
            if len(self._chunks) > self._max_chunks:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        return found

    def _short(self, stream: int, index: int, key: Key, rows: int) -> CorruptStoreError:
        return CorruptStoreError(
            f"{str(column_file(chunk_path(self.directory, stream, index), key))!r} holds "
            f"{rows} rows; a row past them was asked for. The chunk is truncated or the "
            "episode index damaged"
        )

    def take(
        self,
        stream: int,
        index: int,
        key: Key,
        offsets: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rows ``offsets`` (int64, positions inside chunk ``index``) of one stored column.

        The one row gather of the read side: the replay buffer samples through it, so a
        column stored another way (compressed blocks) only has to answer here and in
        :meth:`rows`. The rows are copied as bytes (numpy's ``take``, every dtype alike);
        a compressed column decompresses only the blocks holding them.

        Args:
            stream: the chunk's stream.
            index: the chunk's index in its stream.
            key: the stored key of the column.
            offsets: the rows, an int64 tensor of any shape.
            out: where the rows go (contiguous, ``[*offsets.shape, *row shape]`` of the
                column's dtype), or None for a new tensor.

        Raises:
            CorruptStoreError: a row lies past the rows the chunk file holds.
        """
        leaf = self._chunk(stream, index).leaves[key]
        if out is None:
            out = torch.empty((*offsets.shape, *leaf.shape[1:]), dtype=leaf.dtype)
        where = f"chunk {index} of stream {stream} of {str(self.directory)!r}"
        return take_rows(
            lambda rows, dst: self.take_bytes(stream, index, key, rows, dst), offsets, out, where
        )

    def take_bytes(
        self, stream: int, index: int, key: Key, offsets: np.ndarray, out: np.ndarray
    ) -> None:
        """:meth:`take` on bytes: rows ``offsets`` (1-D int64, >= 0) into ``out`` ``[n, bytes]``.

        The replay buffer's gather, which makes each output's byte view once for all the
        chunks of a sample.

        Raises:
            CorruptStoreError: a row lies past the rows the chunk file holds.
        """
        chunk = self._chunk(stream, index)
        leaf = chunk.leaves[key]
        if isinstance(leaf, CompressedColumn):
            leaf.take_bytes(offsets, out)
            return
        src = chunk.row_bytes(key)
        if out.nbytes < _CHECKED_TAKE_BYTES:
            try:  # numpy checks the rows (cheaper than a max first, for a small gather)
                src.take(offsets, axis=0, out=out)
            except IndexError:
                raise self._short(stream, index, key, len(src)) from None
            return
        if int(offsets.max()) >= len(src):  # numpy's own check copies ``out`` twice
            raise self._short(stream, index, key, len(src))
        src.take(offsets, axis=0, out=out, mode="clip")

    def rows(
        self, stream: int, start: int, count: int, keys: Iterable[Key] | None = None
    ) -> dict[Key, torch.Tensor]:
        """Rows ``[start, start + count)`` of a stream's columns (``keys``: stored keys, or all).

        Zero-copy unless the rows span chunks (then each column is concatenated) or
        blocks of a compressed column.

        Raises:
            CorruptStoreError: a row lies past the rows a chunk file holds.
        """
        wanted = [e.stored_key for e in self.schema.entries] if keys is None else list(keys)
        pieces: dict[Key, list[torch.Tensor]] = {k: [] for k in wanted}
        for index, offset, n in chunk_spans(start, count, self.chunk_rows):
            leaves = self.chunk(stream, index)
            for k in wanted:
                piece = leaves[k][offset : offset + n]
                if piece.shape[0] != n:
                    raise self._short(stream, index, k, len(leaves[k]))
                pieces[k].append(piece)
        return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in pieces.items()}

    def column_files(self) -> Iterator[tuple[int, int, Entry, Path]]:
        """``(stream, chunk, entry, file)`` of every column file the commit counts.

        The file is the column's ``.zst`` where it was compressed, else its ``.memmap``.
        """
        for b, s in enumerate(self.streams):
            for c in range(chunk_count(s.next_row, self.chunk_rows)):
                directory = chunk_path(self.directory, b, c)
                for e in self.schema.entries:
                    packed = compressed_file(directory, e.stored_key)
                    if e.nbytes and os.path.lexists(packed):
                        yield b, c, e, packed
                    else:
                        yield b, c, e, column_file(directory, e.stored_key)

    def rows_used(self) -> dict[tuple[int, int], int]:
        """``{(stream, chunk): rows}``: how many rows of each chunk the episodes use.

        Every row written belongs to an episode, closed or open at the commit.
        """
        C = self.chunk_rows
        used: dict[tuple[int, int], int] = {}
        for i in range(self.num_episodes):
            try:
                rec = self.record(i)
            except CorruptStoreError:
                continue  # reported by whoever reads it
            for c, offset, n in chunk_spans(rec.start_row, len(rec.rows), C):
                key = (rec.stream, c)
                used[key] = max(used.get(key, 0), offset + n)
        return used

    def check_files(self) -> list[str]:
        """What is wrong with the committed column files.

        Missing, not a file, a wrong size, a damaged compressed header.
        """
        problems = []
        used = self.rows_used()
        for b, c, e, file in self.column_files():
            need = used.get((b, c), 0)
            try:
                st = os.stat(_inside(self.root, file))
            except CorruptStoreError as err:  # a link out of the store
                problems.append(str(err))
                continue
            except FileNotFoundError:
                problems.append(f"{str(file)!r} is missing")
                continue
            except (OSError, ValueError) as err:
                problems.append(f"{str(file)!r} cannot be opened: {err}")
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{str(file)!r} is not a regular file")
            elif file.suffix == ".zst":
                try:
                    rows = CompressedColumn(file, e.shape, e.dtype, self._blocks).rows
                except CorruptStoreError as err:
                    problems.append(str(err))
                    continue
                if not need <= rows <= self.chunk_rows:
                    problems.append(
                        f"{str(file)!r} holds {rows} rows, expected {need} to {self.chunk_rows}"
                    )
            elif e.nbytes and (
                st.st_size % e.nbytes
                or not need * e.nbytes <= st.st_size <= self.chunk_rows * e.nbytes
            ):
                problems.append(
                    f"{str(file)!r} is {st.st_size} bytes, expected whole rows of "
                    f"{e.shape} {e.dtype}, at least the {need} rows its episodes use and at "
                    f"most {self.chunk_rows} ({self.chunk_rows * e.nbytes} bytes)"
                )
        return problems

    def column_usage(self) -> Iterator[tuple[Entry, int, int]]:
        """``(entry, bytes allocated on disk, raw bytes)`` of every committed column file.

        The raw bytes are those of the rows its episodes use (:meth:`rows_used`), as a
        raw memory map holds them (a compressed column's, decompressed).
        """
        used = self.rows_used()
        for b, c, e, file in self.column_files():
            try:
                st = os.stat(_inside(self.root, file))
            except (OSError, ValueError):
                continue
            yield e, st.st_blocks * 512, used.get((b, c), 0) * e.nbytes

    def check_column(self, stream: int, index: int, e: Entry) -> None:
        """Read every byte a column of a chunk holds.

        A compressed one's every block (checksums checked), a raw one's rows.

        Raises:
            CorruptStoreError: a block is damaged, or the file cannot be read.
        """
        leaf = self.chunk(stream, index)[e.stored_key]
        if isinstance(leaf, CompressedColumn):
            leaf.check()
            return
        path = column_file(chunk_path(self.directory, stream, index), e.stored_key)
        left = len(leaf) * e.nbytes
        buffer = memoryview(bytearray(min(left, 1 << 20) or 1))
        try:
            with open_regular(_inside(self.root, path)) as f:
                while left > 0:
                    got = f.readinto(buffer[: min(left, len(buffer))])
                    if not got:
                        raise CorruptStoreError(
                            f"{str(path)!r} ends {left} bytes before its rows; it is truncated"
                        )
                    left -= got
        except OSError as err:
            raise CorruptStoreError(f"cannot read {str(path)!r}: {err.strerror}") from err

    def episode(self, i: int) -> TensorDict:
        """Episode ``i`` as a ``[T]`` TensorDict of rollout rows (root keys + ``"next"``)."""
        rec = self.record(i)
        steps = rec.num_steps
        rows = self.rows(rec.stream, rec.rows.start, len(rec.rows))
        parts = {ROOT: TensorDict({}, batch_size=[steps]), NEXT: TensorDict({}, batch_size=[steps])}
        for e in self.schema.entries:
            for part, shift in placements(e.role):
                parts[part].set(e.key, rows[e.stored_key][shift : shift + steps])
        out = parts[ROOT]
        out.set("next", parts[NEXT])
        return out


def worker_label(written_by: dict[str, Any]) -> str:
    """A shard's writer as ``trlrec info`` and ``verify`` name it: ``host pid N [rank R]``.

    Examples:
        >>> worker_label({"host": "node1", "pid": 42, "rank": "3"})
        'node1 pid 42 rank 3'
        >>> worker_label({})
        'unknown writer'
    """
    if not written_by:
        return "unknown writer"
    parts = [str(written_by.get("host", "?")), f"pid {written_by.get('pid', '?')}"]
    if written_by.get("rank") is not None:
        parts.append(f"rank {written_by['rank']}")
    return " ".join(parts)
