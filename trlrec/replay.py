"""A TorchRL replay buffer over a store, for offline RL: the data stays in its memory maps.

What is zero-copy and what is not:

- The recorded data is never copied or materialised: :class:`StoreStorage` maps a flat
  transition index onto (shard, stream, chunk, row) of the store's chunk files and
  gathers only the sampled rows, key by key, straight from the memory maps (a sample
  is a fresh tensordict in RAM, as with any replay buffer). Each observation is
  stored once; the ``"next"`` observation of a transition is read from the row after.
- In RAM: per-episode tables (a few ints per episode) and, for episode-aware slices,
  the episode id of every transition (8 bytes each), which ``SliceSampler`` needs.
- The buffer is read-only (TorchRL's ``ImmutableDatasetWriter``): ``extend`` raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from tensordict import TensorDict
from torchrl.data import (
    ImmutableDatasetWriter,
    RandomSampler,
    SamplerWithoutReplacement,
    SliceSampler,
    SliceSamplerWithoutReplacement,
    TensorDictReplayBuffer,
)
from torchrl.data.replay_buffers.storages import Storage

from trlrec.errors import ConfigError, OutOfRangeError, SchemaError, StoreError
from trlrec.storage.format import NEXT, ROOT, placements, row_chunk
from trlrec.storage.schema import Entry, Key

if TYPE_CHECKING:  # the reader imports this module (its as_replay_buffer), never the reverse
    from trlrec.storage.reader import TrajectoryReader

__all__ = ["StoreStorage", "replay_buffer"]

EPISODE_KEY = "episode"


class StoreStorage(Storage):
    """A read-only TorchRL ``Storage`` of a store's transitions (see the module docstring).

    Transition ``i`` is step ``i - offset[e]`` of episode ``e``, episodes in reader order.
    ``get`` returns rollout rows (root keys + ``"next"``) plus the episode index under
    ``episode_key`` (unless ``None``).

    Args:
        reader: an open reader; it must stay open while the storage is used.
        episode_key: root key holding each transition's episode index, or ``None``.

    Raises:
        StoreError: the store holds no transition.
        SchemaError: its shards have different schemas, or ``episode_key`` is a stored key.
    """

    def __init__(self, reader: TrajectoryReader, *, episode_key: str | None = EPISODE_KEY):
        shards = reader.shards
        if reader.num_steps == 0 or reader.num_episodes == 0:
            raise StoreError(f"the store {str(reader.path)!r} holds no transition to sample")
        schema = shards[0].schema
        for s in shards[1:]:
            if s.schema.entries != schema.entries:
                raise SchemaError(
                    f"shard {s.name!r} has another schema than {shards[0].name!r}; a replay "
                    "buffer needs one set of keys, shapes and dtypes"
                )
        if episode_key is not None and any(e.key == (episode_key,) for e in schema.entries):
            raise SchemaError(
                f"the store already has a key {episode_key!r}; pass another episode_key"
            )
        self.reader = reader
        self.entries: tuple[Entry, ...] = schema.entries
        self.episode_key = episode_key
        infos = [reader.episode_info(i) for i in range(reader.num_episodes)]
        shard_of = {s.name: i for i, s in enumerate(shards)}
        self._ep_shard = torch.tensor([shard_of[i["shard"]] for i in infos])
        self._ep_stream = torch.tensor([i["stream"] for i in infos])
        self._ep_start = torch.tensor([i["start_row"] for i in infos])
        self.episode_lengths = torch.tensor([i["num_steps"] for i in infos])
        self._offsets = torch.zeros(len(infos) + 1, dtype=torch.int64)
        torch.cumsum(self.episode_lengths, 0, out=self._offsets[1:])
        self._chunk_rows = torch.tensor([s.chunk_rows for s in shards])
        self._num_streams = max(len(s.streams) for s in shards)
        n = int(self._offsets[-1])
        super().__init__(max_size=n)

    # ------------------------------------------------------------ Storage API
    def __len__(self) -> int:
        return self.max_size

    def episode_ids(self) -> torch.Tensor:
        """The episode index of every transition (``[len(self)]`` int64, built in RAM)."""
        return torch.repeat_interleave(
            torch.arange(len(self.episode_lengths)), self.episode_lengths
        )

    def get(self, index: Any) -> TensorDict:
        """Gather transitions ``index`` (int, slice, sequence or tensor) from the memory maps."""
        if isinstance(index, tuple):
            if len(index) != 1:
                raise IndexError(f"a StoreStorage is 1-D; got an index of {len(index)} dims")
            index = index[0]
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        idx = torch.as_tensor(index, dtype=torch.int64)
        scalar = idx.ndim == 0
        flat = idx.reshape(-1)
        n = len(self)
        if flat.numel() and (int(flat.min()) < -n or int(flat.max()) >= n):
            raise OutOfRangeError(
                f"transition index out of range: {str(self.reader.path)!r} has {n} transitions"
            )
        out = self._gather(torch.where(flat < 0, flat + n, flat))
        out = out.reshape(idx.shape)
        return out[()] if scalar else out

    def _gather(self, idx: torch.Tensor) -> TensorDict:
        ep = torch.searchsorted(self._offsets, idx, right=True) - 1
        row = self._ep_start[ep] + (idx - self._offsets[ep])
        shard, stream = self._ep_shard[ep], self._ep_stream[ep]
        n = idx.numel()
        parts = {ROOT: TensorDict({}, batch_size=[n]), NEXT: TensorDict({}, batch_size=[n])}
        by_shift: dict[int, list[tuple[Key, torch.Tensor]]] = {}
        for e in self.entries:
            for part, shift in placements(e.role):
                col = torch.empty((n, *e.shape), dtype=e.dtype)
                parts[part].set(e.key, col)
                by_shift.setdefault(shift, []).append((e.stored_key, col))
        for shift, cols in by_shift.items():
            self._fill(shard, stream, row + shift, cols)
        out = parts[ROOT]
        out.set("next", parts[NEXT])
        if self.episode_key is not None:
            out.set(self.episode_key, ep)
        return out

    def _fill(
        self,
        shard: torch.Tensor,
        stream: torch.Tensor,
        row: torch.Tensor,
        cols: list[tuple[Key, torch.Tensor]],
    ) -> None:
        if row.numel() == 0:
            return
        chunk, offset = row_chunk(row, self._chunk_rows[shard])
        code = (shard * self._num_streams + stream) * (int(chunk.max()) + 1) + chunk
        groups, inverse = torch.unique(code, return_inverse=True)
        for g in range(groups.numel()):
            mask = inverse == g
            first = int(mask.nonzero()[0, 0])
            s, b, c = int(shard[first]), int(stream[first]), int(chunk[first])
            shard_reader = self.reader.shards[s]
            rows = offset[mask]
            for key, col in cols:
                col[mask] = shard_reader.take(b, c, key, rows)

    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        """Refused: a store is read through this storage, written with a TrajectoryWriter."""
        raise StoreError("a StoreStorage is read-only; write with a TrajectoryWriter instead")

    def contains(self, item: Any) -> bool:
        """Whether ``item`` is a valid transition index."""
        return isinstance(item, int) and -len(self) <= item < len(self)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save: the store on disk is the state."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load: the store on disk is the state."""

    def _empty(self) -> None:
        raise StoreError("a StoreStorage is read-only; it cannot be emptied")

    def __repr__(self) -> str:
        return f"StoreStorage({str(self.reader.path)!r}, transitions={len(self)})"


def _identity(batch: TensorDict) -> TensorDict:
    return batch  # StoreStorage.get already returns one [N] tensordict


def replay_buffer(
    reader: TrajectoryReader,
    *,
    batch_size: int,
    slice_len: int | None = None,
    num_slices: int | None = None,
    replacement: bool = True,
    strict_length: bool = True,
    episode_key: str | None = EPISODE_KEY,
    **kwargs: Any,
) -> TensorDictReplayBuffer:
    """A read-only TorchRL replay buffer sampling the transitions of a store.

    Without ``slice_len``/``num_slices``, transitions are sampled uniformly. With one
    of them, a ``SliceSampler`` samples sub-trajectories that never cross episodes
    (each sample is ``[batch_size]``: ``batch_size // slice_len`` slices end to end).
    The data is read from the memory maps; nothing is copied but the sampled rows.

    Args:
        reader: an open :class:`~trlrec.TrajectoryReader` (``trlrec.as_replay_buffer``
            and ``TrajectoryReader.as_replay_buffer`` open one and call this).
        batch_size: transitions per sample.
        slice_len: length of each slice (``batch_size`` must be a multiple of it).
        num_slices: number of slices per sample (exclusive with ``slice_len``).
        replacement: sample with replacement (``False``: each transition or slice once
            per pass over the data).
        strict_length: skip episodes shorter than a slice (else return shorter slices).
        episode_key: root key of the samples holding the episode index, or ``None``.
        **kwargs: passed to ``TensorDictReplayBuffer`` (``transform``, ``prefetch``...)
            or, for a sliced buffer, to the sampler when they are sampler options
            (``truncated_key``, ``span``, ``pad_output``).

    Returns:
        A ``TensorDictReplayBuffer`` whose ``sample()`` returns ``[batch_size]`` rollout rows.

    Raises:
        ConfigError: for a bad ``batch_size``, ``slice_len`` or ``num_slices``.
        StoreError: the store is empty (and the reader's errors for a missing or damaged store).

    Examples:
        >>> import tempfile
        >>> from torchrl.envs import GymEnv
        >>> from trlrec import TensorDictRecorder, as_replay_buffer
        >>> path = tempfile.mkdtemp() + "/cartpole"
        >>> with TensorDictRecorder(path) as rec:
        ...     _ = GymEnv("CartPole-v1").append_transform(rec).rollout(
        ...         100, break_when_any_done=False)
        >>> rb = as_replay_buffer(path, batch_size=32)
        >>> rb.sample()["next", "reward"].shape
        torch.Size([32, 1])
        >>> slices = as_replay_buffer(path, batch_size=32, slice_len=8).sample()
        >>> episodes = slices["episode"].view(4, 8)  # 4 slices of 8 steps, each in one episode
        >>> bool((episodes == episodes[:, :1]).all())
        True
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if slice_len is not None and num_slices is not None:
        raise ConfigError("slice_len and num_slices are exclusive; pass one of them")
    for name, value in (("slice_len", slice_len), ("num_slices", num_slices)):
        if value is None:
            continue
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if batch_size % value:
            raise ConfigError(f"batch_size ({batch_size}) must be a multiple of {name} ({value})")
    return _build(reader, batch_size, slice_len, num_slices, replacement, strict_length,
                  episode_key, kwargs)  # fmt: skip


def _build(
    reader: TrajectoryReader,
    batch_size: int,
    slice_len: int | None,
    num_slices: int | None,
    replacement: bool,
    strict_length: bool,
    episode_key: str | None,
    kwargs: dict[str, Any],
) -> TensorDictReplayBuffer:
    storage = StoreStorage(reader, episode_key=episode_key)
    if slice_len is None and num_slices is None:
        sampler = RandomSampler() if replacement else SamplerWithoutReplacement()
    else:
        options = {k: kwargs.pop(k) for k in ("truncated_key", "span", "pad_output") if k in kwargs}
        cls = SliceSampler if replacement else SliceSamplerWithoutReplacement
        longest = int(storage.episode_lengths.max())
        need = slice_len if slice_len is not None else batch_size // (num_slices or 1)
        if strict_length and longest < need:
            raise ConfigError(
                f"no episode of {str(reader.path)!r} is {need} steps long (the longest has "
                f"{longest}); use shorter slices or strict_length=False"
            )
        sampler = cls(
            slice_len=slice_len,
            num_slices=num_slices,
            trajectories=storage.episode_ids(),
            cache_values=True,
            strict_length=strict_length,
            **options,
        )
    kwargs.setdefault("collate_fn", _identity)
    return TensorDictReplayBuffer(
        storage=storage,
        sampler=sampler,
        writer=ImmutableDatasetWriter(),
        batch_size=batch_size,
        **kwargs,
    )
