"""TrajectoryReader: lazy, zero-copy access to the episodes of a store."""

from __future__ import annotations

import bisect
import operator
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from tensordict import TensorDict

from trlrec.closing import Closeable
from trlrec.errors import ConfigError, IndexTypeError, OutOfRangeError, StoreError
from trlrec.storage.dataset import open_dataset, shard_dirs
from trlrec.storage.format import COMMIT_FILE
from trlrec.storage.shard_reader import EpisodeInfo, ShardReader

__all__ = ["TrajectoryReader", "EpisodeSequence", "as_replay_buffer"]

_ON_DAMAGED = ("raise", "skip")


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
        on_damaged: ``"raise"`` (the default) refuses a store with a damaged shard;
            ``"skip"`` reads the healthy shards and lists the others in :attr:`skipped`
            (a shard is damaged when its commit record, schema, index or any committed
            chunk file fails its checks, or it has a format version not read here).

    Raises:
        NotAStoreError: the path is missing or not a store.
        CorruptStoreError: a file of the store is damaged (the message names it).
        FormatVersionError: the store has a format version this trlrec cannot read.
        ConfigError: ``on_damaged`` is neither ``"raise"`` nor ``"skip"``.

    Example:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> from trlrec import TrajectoryReader, TrajectoryWriter
        >>> obs = torch.arange(4.0).unsqueeze(-1)  # each step's "next" is the next root
        >>> done = torch.tensor([[False], [True], [False], [False]])
        >>> steps = TensorDict({"observation": obs, "action": obs,
        ...                     "next": {"observation": obs + 1, "done": done}}, [4])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with TrajectoryWriter(d) as w:
        ...         w.extend(steps)
        ...     r = TrajectoryReader(d)
        ...     [len(ep) for ep in r.episodes], r.episodes[0]["next", "done"].flatten().tolist()
        ([2, 2], [False, True])
    """

    def __init__(self, path: str | os.PathLike[str], *, on_damaged: str = "raise"):
        if on_damaged not in _ON_DAMAGED:
            raise ConfigError(f"on_damaged must be one of {_ON_DAMAGED}, got {on_damaged!r}")
        self.path = Path(path)
        self.on_damaged = on_damaged
        self.refresh()

    def refresh(self) -> TrajectoryReader:
        """Re-read the commit records: see what writers committed since."""
        info = open_dataset(self.path)
        root = Path(os.path.realpath(self.path))
        shards: list[ShardReader] = []
        skipped: dict[str, str] = {}
        for directory in shard_dirs(self.path):
            if not (directory / COMMIT_FILE).exists():
                continue  # a writer that never committed: nothing to read
            try:
                shard = ShardReader(root, directory)
                problems = shard.check_files() if self.on_damaged == "skip" else []
            except StoreError as err:  # damaged, missing a file, or of another version
                if self.on_damaged == "raise":
                    raise
                problems = [str(err)]
            if problems:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                skipped[directory.name] = problems[0] + more
            else:
                shards.append(shard)
        # Nothing changes unless the whole store opened (a failed refresh keeps the old view).
        self.metadata: dict[str, Any] = info.get("metadata", {})
        self.format_version: int = info["version"]  # checked: one of SUPPORTED_VERSIONS
        self.shards = shards
        self.skipped = skipped  # on_damaged="skip": shard name -> what is wrong
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
            OutOfRangeError: ``i`` is out of range (an ``IndexError``).
            IndexTypeError: ``i`` is not an int (a ``TypeError``).
        """
        n = self.num_episodes
        try:
            if isinstance(i, bool):
                raise TypeError("a bool is not an episode index")
            i = operator.index(i)  # numpy and one-element torch integers too
        except TypeError:
            raise IndexTypeError(
                f"episode indices are ints (or slices of episodes), got {type(i).__name__} "
                f"{str(i)[:80]!r}; to look an episode up by its metadata, use "
                "episode_metadata(i)"
            ) from None
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise OutOfRangeError(
                f"episode index {i} is out of range: the store has {n} episodes (indices -{n} "
                f"to {n - 1}) in {str(self.path)!r}"
            )
        i = j
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
        """A TorchRL replay buffer over this store, see :func:`trlrec.replay.replay_buffer`.

        ``kwargs``: ``slice_len``/``num_slices`` (episode-aware slices), ``replacement``,
        ``device`` (samples on a GPU: pinned staging, non-blocking copies), ``prefetch``
        (samples gathered ahead in threads), and TorchRL's ``TensorDictReplayBuffer``
        options.
        """
        from trlrec.replay import replay_buffer  # imports TorchRL's data package: only now

        return replay_buffer(self, batch_size=batch_size, **kwargs)

    def close(self) -> None:
        """Drop the mapped chunks."""
        self.shards = []
        self._offsets = [0]

    def __repr__(self) -> str:
        skipped = f", skipped={sorted(self.skipped)}" if self.skipped else ""
        return (
            f"TrajectoryReader({str(self.path)!r}, episodes={self.num_episodes}, "
            f"steps={self.num_steps}, shards={len(self.shards)}{skipped})"
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
