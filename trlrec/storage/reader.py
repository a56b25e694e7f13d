"""TrajectoryReader: lazy, zero-copy access to the episodes of a store."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from tensordict import TensorDict

from trlrec.closing import Closeable
from trlrec.storage.dataset import open_dataset
from trlrec.storage.format import COMMIT_FILE, SHARDS_DIR
from trlrec.storage.shard_reader import EpisodeInfo, ShardReader

__all__ = ["TrajectoryReader", "EpisodeSequence", "as_replay_buffer"]


class EpisodeSequence(Sequence[TensorDict]):
    """The episodes of a reader: ``len``, int and negative indexing, slicing, iteration.

    Each access builds a fresh view, so iteration holds no shared cursor and is re-entrant.
    """

    def __init__(self, reader: TrajectoryReader):
        self._reader = reader

    def __len__(self) -> int:
        return self._reader.num_episodes

    @overload
    def __getitem__(self, i: int) -> TensorDict: ...
    @overload
    def __getitem__(self, i: slice) -> list[TensorDict]: ...
    def __getitem__(self, i: int | slice) -> TensorDict | list[TensorDict]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        shard, j = self._reader.shard_of(i)
        return shard.episode(j)

    def __iter__(self) -> Iterator[TensorDict]:
        for i in range(len(self)):
            yield self[i]


class TrajectoryReader(Closeable):
    """Reads a store written by :class:`~trlrec.TrajectoryWriter`.

    Shards are merged in name order; within a shard, finished episodes come in
    the order they ended, then the episodes still open at the last commit. A
    reader sees what was committed when it was opened (or last refreshed).

    Args:
        path: the store directory.

    Raises:
        NotAStoreError: the path is missing or not a store.
        CorruptStoreError: a file of the store is damaged (the message names it).
        FormatVersionError: the store has a format version this trlrec cannot read.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.refresh()

    def refresh(self) -> TrajectoryReader:
        """Re-read the commit records: see what writers committed since."""
        info = open_dataset(self.path)
        self.metadata: dict[str, Any] = info.get("metadata", {})
        self.format_version: int = info["version"]  # checked: one of SUPPORTED_VERSIONS
        root = Path(os.path.realpath(self.path))
        shards_dir = self.path / SHARDS_DIR
        names = sorted(p.name for p in shards_dir.iterdir()) if shards_dir.is_dir() else []
        self.shards: list[ShardReader] = [
            ShardReader(root, shards_dir / n)
            for n in names
            if (shards_dir / n / COMMIT_FILE).exists()
        ]
        self._offsets = [0]
        for s in self.shards:
            self._offsets.append(self._offsets[-1] + s.num_episodes)
        return self

    @property
    def num_episodes(self) -> int:
        """Episodes committed (finished ones and those still being written)."""
        return self._offsets[-1]

    @property
    def num_steps(self) -> int:
        """Transitions committed."""
        return sum(s.num_steps for s in self.shards)

    @property
    def episodes(self) -> EpisodeSequence:
        """The episodes, each a ``[T]`` TensorDict backed by memory maps."""
        return EpisodeSequence(self)

    @property
    def specs(self) -> Any:
        """The recording env's specs (``env.specs``: a ``Composite``), or ``None``.

        Rebuilt from the store's ``specs.json`` at each access, equal to what the
        writer was given; ``None`` for a store written without specs (such as format
        version 1 stores made before specs were recorded). Specs recorded on a GPU are
        rebuilt there; on a machine without it, ``trlrec.specs.read_specs(path,
        device="cpu")``. See :mod:`trlrec.specs`.
        """
        from trlrec.specs import read_specs

        return read_specs(self.path)

    def shard_of(self, i: int) -> tuple[ShardReader, int]:
        """The shard holding episode ``i`` (negative counts from the end) and its index there.

        Raises:
            IndexError: ``i`` is out of range.
            TypeError: ``i`` is not an int.
        """
        n = self.num_episodes
        if not isinstance(i, int):
            raise TypeError(f"episode indices are ints, got {type(i).__name__}")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"episode index out of range: the store has {n} episodes")
        s = bisect.bisect_right(self._offsets, i) - 1
        return self.shards[s], i - self._offsets[s]

    def episode_metadata(self, i: int) -> dict[str, Any]:
        """What ``episode_fn`` gave for episode ``i`` (``{}`` if nothing)."""
        shard, j = self.shard_of(i)
        return shard.episode_metadata(j)

    def episode_info(self, i: int) -> EpisodeInfo:
        """Where episode ``i`` lives and how it ended (``flags``: 1 done, 2 cut, 4 open)."""
        shard, j = self.shard_of(i)
        return shard.info(j)

    def as_replay_buffer(self, *, batch_size: int, **kwargs: Any) -> Any:
        """A TorchRL replay buffer over this store, see :func:`trlrec.replay.replay_buffer`."""
        from trlrec.replay import replay_buffer  # imports TorchRL's data package: only now

        return replay_buffer(self, batch_size=batch_size, **kwargs)

    def close(self) -> None:
        """Drop the mapped chunks."""
        self.shards = []
        self._offsets = [0]

    def __repr__(self) -> str:
        return (
            f"TrajectoryReader({str(self.path)!r}, episodes={self.num_episodes}, "
            f"steps={self.num_steps}, shards={len(self.shards)})"
        )


def as_replay_buffer(
    reader_or_path: TrajectoryReader | str | os.PathLike[str], *, batch_size: int, **kwargs: Any
) -> Any:
    """A read-only TorchRL replay buffer over a store (a reader or its directory).

    The arguments are those of :func:`trlrec.replay.replay_buffer`.
    """
    reader = (
        reader_or_path
        if isinstance(reader_or_path, TrajectoryReader)
        else TrajectoryReader(reader_or_path)
    )
    return reader.as_replay_buffer(batch_size=batch_size, **kwargs)
