"""Read one column of one episode chunk by chunk: memory-map views, never a whole copy."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from trlrec.errors import SchemaError
from trlrec.storage.format import chunk_spans
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry

__all__ = ["find_entry", "episode_column", "key_name", "parse_key", "require_entries"]


def key_name(key: tuple[str, ...]) -> str:
    """A key as users write it on the command line: ``a/b`` for nested keys."""
    return "/".join(key)


def parse_key(text: str) -> tuple[str, ...]:
    """``"next/reward"`` -> ``("next", "reward")``; ``"pixels"`` -> ``("pixels",)``."""
    return tuple(part for part in text.replace(".", "/").split("/") if part)


def find_entry(reader: TrajectoryReader, key: str | tuple[str, ...]) -> Entry:
    """The schema entry of ``key`` (``"pixels"``, ``"next/reward"``, ``("next", "reward")``).

    Raises:
        SchemaError: the store has no such key (the message lists the keys it has).
    """
    wanted = parse_key(key) if isinstance(key, str) else tuple(key)
    entries = require_entries(reader)
    for e in entries:
        if wanted in (e.key, e.stored_key):
            return e
    have = sorted(key_name(e.stored_key) for e in entries)
    raise SchemaError(f"key {key_name(wanted)!r} is not in the store; it has {have}")


def episode_column(
    reader: TrajectoryReader, episode: int, entry: Entry, *, with_last: bool = False
) -> Iterator[torch.Tensor]:
    """The rows of ``entry`` for one episode, as zero-copy pieces (one per chunk touched).

    A state key has ``T + 1`` rows per episode: the ``T`` root observations, then the
    final ``next`` one when ``with_last`` is true. Root and next keys have ``T`` rows.
    """
    shard, j = reader.shard_of(episode)
    rec = shard.record(j)
    rows = rec.stored_rows(entry.role)
    if not with_last:
        rows = rows[: rec.num_steps]
    for index, offset, n in chunk_spans(rows.start, len(rows), shard.chunk_rows):
        start = index * shard.chunk_rows + offset  # the rows of one chunk: checked, no copy
        yield shard.rows(rec.stream, start, n, [entry.stored_key])[entry.stored_key]


def require_entries(reader: TrajectoryReader) -> tuple[Entry, ...]:
    """The schema entries of a store with data, or a SchemaError saying it is empty."""
    if not reader.shards:
        raise SchemaError(f"the store {str(reader.path)!r} holds no data yet")
    return reader.shards[0].schema.entries
