"""The Ray Data datasource of :mod:`trlrec.ray`: read tasks over a store's shards.

Imported by :mod:`trlrec.ray` only when a dataset is made (it needs Ray Data), so that a
process using only :func:`trlrec.ray.commit_writers` (a collector worker) does not import
Ray Data. The plan is made on the caller from the commit records and episode indices;
each read task maps its shard with :class:`~trlrec.storage.shard_reader.ShardReader` and
yields blocks of bounded rows. Nothing from disk is unpickled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from trlrec.errors import ConfigError, UnsupportedDataError
from trlrec.ray import EPISODE_INDEX, FLAGS, NUM_STEPS, STEP_INDEX
from trlrec.storage.format import NEXT, EpisodeRecord, placements
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry, Key, Schema
from trlrec.storage.shard_reader import ShardReader

__all__ = ["TrajectoryDatasource", "BLOCK_ROWS"]

BLOCK_ROWS = 4096
_BLOCK_BYTES = 64 * 2**20  # read_episodes: bytes of episodes in one block (one episode at least)
_NO_ARROW = (torch.complex64, torch.complex128)  # Arrow has no complex numbers
_WIDEN = {torch.bfloat16: torch.float32}  # NumPy has no bfloat16: widened, exactly


# ------------------------------------------------------------------- columns
@dataclass(frozen=True)
class _Column:
    """One output column: which stored column, at which row shift, as which dtype."""

    name: str
    stored: Key
    shift: int
    shape: tuple[int, ...]
    out: np.dtype  # as the column holds it (bfloat16 widened)


def _columns(
    schema: Schema | None, separator: str, columns: Sequence[str] | None, reserved: Sequence[str]
) -> list[_Column]:
    """The columns of ``schema`` to read: root keys by name, ``"next"`` keys under ``next``."""
    if not isinstance(separator, str) or not separator:
        raise ConfigError(f"separator must be a non-empty str, got {separator!r}")
    if isinstance(columns, str):
        raise ConfigError(f"columns must be a list of column names, got the str {columns!r}")
    entries: list[Entry] = [] if schema is None else list(schema.entries)
    out: list[tuple[_Column, Entry]] = []
    for e in entries:
        for part in e.key:
            if separator in part:
                raise ConfigError(
                    f"key {e.key!r} holds the separator {separator!r}, so its column name would "
                    "be ambiguous; pass another separator (separator='/')"
                )
        dtype = _WIDEN.get(e.dtype, e.dtype)
        np_dtype = (
            np.dtype(object) if dtype in _NO_ARROW else torch.empty((), dtype=dtype).numpy().dtype
        )
        for part, shift in placements(e.role):
            key = ("next", *e.key) if part == NEXT else e.key
            out.append((_Column(separator.join(key), e.stored_key, shift, e.shape, np_dtype), e))
    names = [c.name for c, _ in out]
    for name in reserved:
        if name in names:
            raise ConfigError(
                f"the store has a key named {name!r}, the name of a column trlrec adds; "
                "pass ids=False to read it"
            )
    if columns is not None:
        known = set(names) | set(reserved)
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ConfigError(
                f"columns {unknown!r} are not in the store; its columns are {sorted(known)!r}"
            )
        out = [(c, e) for c, e in out if c.name in set(columns)]
    for _, e in out:
        if e.dtype in _NO_ARROW:
            raise UnsupportedDataError(
                f"key {e.key!r} is {e.dtype}, which Arrow (Ray Data's blocks) cannot hold; "
                "leave its columns out with columns=[...]"
            )
    return [c for c, _ in out]


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A column's rows as NumPy (zero-copy; bfloat16 widened to float32, exactly)."""
    if t.dtype in _WIDEN:
        t = t.to(_WIDEN[t.dtype])
    return t.numpy()


# --------------------------------------------------------------------- plans
@dataclass(frozen=True)
class _Segment:
    """Transitions ``t0 .. t0 + steps`` of an episode: root rows ``row .. row + steps``."""

    stream: int
    row: int
    steps: int
    episode: int
    t0: int


@dataclass(frozen=True)
class _Piece:
    """What one block holds: segments of one shard (transitions), or whole episodes."""

    shard: str
    segments: tuple[_Segment, ...]
    flags: tuple[int, ...] = ()  # read_episodes: each episode's flags

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.segments)


def _snapshot(
    path: str | os.PathLike[str],
) -> tuple[str, Schema | None, list[tuple[str, int, list[EpisodeRecord]]]]:
    """The store as committed now: its root, schema and each shard's episodes (records).

    Records, not indices, go to the read tasks: a shard may commit more before a task
    runs (an open episode closing renumbers nothing already committed, but a task must
    read what this snapshot saw).
    """
    reader = TrajectoryReader(path)
    root = os.path.realpath(reader.path)
    schema: Schema | None = None
    shards = []
    offset = 0
    for shard in reader.shards:
        if schema is None:
            schema = shard.schema
        elif set(shard.schema.entries) != set(schema.entries):  # the batch shape may differ
            raise UnsupportedDataError(
                f"shard {shard.name!r} of {str(path)!r} has another schema than the shards "
                "before it; a dataset's rows share one set of columns"
            )
        records = [shard.record(j) for j in range(shard.num_episodes)]
        shards.append((str(shard.directory), offset, records))
        offset += shard.num_episodes
    return root, schema, shards


def _transition_pieces(
    shards: list[tuple[str, int, list[EpisodeRecord]]], block_rows: int
) -> list[_Piece]:
    """Blocks of at most ``block_rows`` transitions, each within one shard, in stream order."""
    pieces: list[_Piece] = []
    for directory, offset, records in shards:
        order = sorted(range(len(records)), key=lambda j: (records[j].stream, records[j].start_row))
        current: list[_Segment] = []
        room = block_rows
        for j in order:
            rec = records[j]
            t = 0
            while t < rec.num_steps:
                n = min(room, rec.num_steps - t)
                current.append(_Segment(rec.stream, rec.start_row + t, n, offset + j, t))
                t += n
                room -= n
                if room == 0:
                    pieces.append(_Piece(directory, tuple(current)))
                    current, room = [], block_rows
        if current:
            pieces.append(_Piece(directory, tuple(current)))
    return pieces


def _episode_pieces(
    shards: list[tuple[str, int, list[EpisodeRecord]]], row_bytes: int, block_rows: int
) -> list[_Piece]:
    """Blocks of whole episodes: at most ``block_rows`` of them and ~64 MiB (one at least)."""
    pieces: list[_Piece] = []
    for directory, offset, records in shards:
        segs: list[_Segment] = []
        flags: list[int] = []
        size = 0
        for j, rec in enumerate(records):
            nbytes = rec.num_steps * row_bytes
            if segs and (len(segs) >= block_rows or size + nbytes > _BLOCK_BYTES):
                pieces.append(_Piece(directory, tuple(segs), tuple(flags)))
                segs, flags, size = [], [], 0
            segs.append(_Segment(rec.stream, rec.start_row, rec.num_steps, offset + j, 0))
            flags.append(rec.flags)
            size += nbytes
        if segs:
            pieces.append(_Piece(directory, tuple(segs), tuple(flags)))
    return pieces


# ------------------------------------------------------------------ reading
def _runs(segments: Sequence[_Segment]) -> Iterator[list[_Segment]]:
    """Consecutive segments whose rows touch (one read of their stream each)."""
    run: list[_Segment] = []
    for s in segments:
        if run and (s.stream != run[-1].stream or s.row > run[-1].row + run[-1].steps + 1):
            yield run
            run = []
        run.append(s)
    if run:
        yield run


def _read_transitions(
    root: str, piece: _Piece, columns: list[_Column], ids: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The transitions of ``piece`` as NumPy columns (one block)."""
    shard = ShardReader(Path(root), Path(piece.shard))
    n = piece.steps
    out = {c.name: np.empty((n, *c.shape), dtype=c.out) for c in columns}
    stored = sorted({c.stored for c in columns})
    at = 0
    for run in _runs(piece.segments):
        lo = run[0].row
        hi = max(s.row + s.steps for s in run)  # the last "next" row, inclusive
        rows = shard.rows(run[0].stream, lo, hi - lo + 1, stored) if stored else {}
        idx = np.concatenate([np.arange(s.row - lo, s.row - lo + s.steps) for s in run])
        for c in columns:
            out[c.name][at : at + len(idx)] = _numpy(rows[c.stored])[idx + c.shift]
        at += len(idx)
    if EPISODE_INDEX in ids:
        out[EPISODE_INDEX] = np.concatenate(
            [np.full(s.steps, s.episode, dtype=np.int64) for s in piece.segments]
        )
    if STEP_INDEX in ids:
        out[STEP_INDEX] = np.concatenate(
            [np.arange(s.t0, s.t0 + s.steps, dtype=np.int64) for s in piece.segments]
        )
    return out


def _ragged(values: list[np.ndarray]) -> np.ndarray:
    """One episode per row: an object array of ``[T, ...]`` arrays (a tensor column in Ray)."""
    col: np.ndarray = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        col[i] = v
    return col


def _read_episodes(root: str, piece: _Piece, columns: list[_Column]) -> dict[str, np.ndarray]:
    """The episodes of ``piece``, one per row (one block)."""
    shard = ShardReader(Path(root), Path(piece.shard))
    stored = sorted({c.stored for c in columns})
    values: dict[str, list[np.ndarray]] = {c.name: [] for c in columns}
    for s in piece.segments:
        rows = shard.rows(s.stream, s.row, s.steps + 1, stored) if stored else {}
        for c in columns:
            values[c.name].append(np.array(_numpy(rows[c.stored])[c.shift : c.shift + s.steps]))
    out = {name: _ragged(v) for name, v in values.items()}
    out[EPISODE_INDEX] = np.array([s.episode for s in piece.segments], dtype=np.int64)
    out[NUM_STEPS] = np.array([s.steps for s in piece.segments], dtype=np.int64)
    out[FLAGS] = np.array(piece.flags, dtype=np.int64)
    return out


def _read_task(
    root: str, pieces: list[_Piece], columns: list[_Column], kind: str, ids: tuple[str, ...]
) -> Iterator[Any]:
    """A read task's body, run on a Ray worker: one block per piece, one at a time."""
    for piece in pieces:
        if kind == "episodes":
            batch = _read_episodes(root, piece, columns)
        else:
            batch = _read_transitions(root, piece, columns, ids)
        yield BlockAccessor.batch_to_block(batch)


def _empty(columns: list[_Column], kind: str, ids: tuple[str, ...]) -> Any:
    """A block of no rows with the dataset's columns (a store without transitions)."""
    batch: dict[str, np.ndarray]
    if kind == "episodes":
        batch = {c.name: np.empty(0, dtype=object) for c in columns}
    else:
        batch = {c.name: np.empty((0, *c.shape), dtype=c.out) for c in columns}
    batch.update({n: np.empty(0, dtype=np.int64) for n in ids})
    return BlockAccessor.batch_to_block(batch)


def _block_metadata(num_rows: int, size_bytes: int) -> Any:
    try:
        return BlockMetadata(
            num_rows=num_rows, size_bytes=size_bytes, input_files=None, exec_stats=None
        )
    except TypeError:  # Ray < 2.44 had the schema in the block metadata
        return BlockMetadata(
            num_rows=num_rows, size_bytes=size_bytes, schema=None, input_files=None, exec_stats=None
        )


class TrajectoryDatasource(Datasource):
    """A trlrec store as a Ray Data datasource: ``ray.data.read_datasource(source)``.

    :func:`read_transitions` and :func:`read_episodes` build one; use it directly to pass
    it to ``ray.data.read_datasource`` with Ray's own options. The store is read as
    committed when the source is made.

    Args:
        path: the store directory (every Ray node must see it at this path).
        kind: ``"transitions"`` (a row per transition) or ``"episodes"`` (a row per episode).
        columns, separator, ids, block_rows: as :func:`trlrec.ray.read_transitions`.

    Raises:
        NotAStoreError, CorruptStoreError, ConfigError, UnsupportedDataError: as
            :func:`trlrec.ray.read_transitions` (``trlrec.ray.TrajectoryDatasource`` raises
            MissingDependencyError without Ray Data).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str = "transitions",
        columns: Sequence[str] | None = None,
        separator: str = ".",
        ids: bool = True,
        block_rows: int | None = None,
    ):
        super().__init__()
        if kind not in ("transitions", "episodes"):
            raise ConfigError(f"kind must be 'transitions' or 'episodes', got {kind!r}")
        rows = BLOCK_ROWS if block_rows is None else block_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"block_rows must be a positive int, got {block_rows!r}")
        self.path = Path(path)
        self.kind = kind
        if kind == "episodes":
            reserved: tuple[str, ...] = (EPISODE_INDEX, NUM_STEPS, FLAGS)  # always there
        else:
            reserved = (EPISODE_INDEX, STEP_INDEX) if ids else ()
        self._root, schema, shards = _snapshot(path)
        self._columns = _columns(schema, separator, columns, reserved)
        if kind == "transitions" and columns is not None:
            reserved = tuple(n for n in reserved if n in columns)
        self._ids = reserved
        row_bytes = sum(math.prod(c.shape) * c.out.itemsize for c in self._columns)
        self._row_bytes = row_bytes + (8 * len(reserved) if kind == "transitions" else 0)
        if kind == "episodes":
            self._pieces = _episode_pieces(shards, max(row_bytes, 1), rows)
        else:
            self._pieces = _transition_pieces(shards, rows)

    def _piece_rows(self, piece: _Piece) -> int:
        return len(piece.segments) if self.kind == "episodes" else piece.steps

    def _piece_bytes(self, piece: _Piece) -> int:
        extra = 24 * len(piece.segments) if self.kind == "episodes" else 0
        return piece.steps * self._row_bytes + extra

    def get_name(self) -> str:
        """The read tasks' name in Ray's progress and stats."""
        return f"trlrec.{self.kind}"

    def estimate_inmemory_data_size(self) -> int:
        """Bytes of the rows the source yields (its columns' values)."""
        return sum(self._piece_bytes(p) for p in self._pieces)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, **_: Any
    ) -> list[Any]:
        """Up to ``parallelism`` read tasks, each a run of blocks of one or more shards."""
        extra = {} if per_task_row_limit is None else {"per_task_row_limit": per_task_row_limit}
        root, columns, kind, ids = self._root, self._columns, self.kind, self._ids
        if not self._pieces:
            return [ReadTask(lambda: [_empty(columns, kind, ids)], _block_metadata(0, 0), **extra)]
        n = max(1, min(parallelism if parallelism > 0 else len(self._pieces), len(self._pieces)))
        tasks = []
        for k in range(n):
            group = self._pieces[k * len(self._pieces) // n : (k + 1) * len(self._pieces) // n]
            meta = _block_metadata(
                sum(self._piece_rows(p) for p in group), sum(self._piece_bytes(p) for p in group)
            )

            def read(group: list[_Piece] = group) -> Iterator[Any]:
                return _read_task(root, group, columns, kind, ids)

            tasks.append(ReadTask(read, meta, **extra))
        return tasks
