"""A TorchRL replay buffer over a store, for offline RL: the data stays in its memory maps.

What is zero-copy and what is not:

- The recorded data is never copied or materialised: :class:`StoreStorage` maps a flat
  transition index onto (shard, stream, chunk, row) of the store's chunk files and
  gathers only the sampled rows, column by column, through
  :meth:`~trlrec.storage.shard_reader.ShardReader.take` (a sample is a fresh
  tensordict in RAM, or on ``device``, as with any replay buffer). Each observation is
  stored once; the ``"next"`` observation of a transition is read from the row after.
- In RAM: per-episode tables (a few ints per episode) and, for episode-aware slices,
  the episode id of every transition (8 bytes each), which ``SliceSampler`` needs;
  per column, one batch of rows kept from sample to sample (for samples spanning chunks).
- The buffer is read-only (TorchRL's ``ImmutableDatasetWriter``): ``extend`` raises.

How a sample is gathered (no Python loop per sampled row): the rows a batch needs (row
``t`` of each transition, and row ``t + 1`` where a state column gives the ``"next"``
value) are computed as arrays and sorted by chunk once (big rows, such as pixels, also
de-duplicated: a slice's consecutive transitions share their states); each chunk
touched is read with one ``take`` per column, and one more ``take`` puts the rows in
the sampled order. A batch that falls in one chunk is read straight in sampled order.
A sample is one buffer: every column's rows (copied as bytes) and the episode ids, each
tensor of the sample a view of it; for a CUDA device the buffer is pinned and copied in
one non-blocking copy. The cost is about one ``take`` per (chunk touched, column): a store of many
chunks samples slower than one of few.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
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

from trlrec.errors import ConfigError, OutOfRangeError, ReadOnlyError, SchemaError, StoreError
from trlrec.storage.blocks import CompressedColumn, gather
from trlrec.storage.format import ROOT, chunk_count, placements, row_chunk
from trlrec.storage.schema import Entry, Key
from trlrec.storage.shard_reader import ShardReader

if TYPE_CHECKING:  # the reader imports this module (its as_replay_buffer), never the reverse
    from trlrec.storage.reader import TrajectoryReader

__all__ = ["StoreStorage", "replay_buffer"]

EPISODE_KEY = "episode"

# Rows of at least this many bytes are "big": gathered with a plan of their own positions
# only (a root-only image is not read for the row after), each row read once. Smaller
# ones share the plan of all positions, which saves the calls of a second plan.
_BIG_ROW = 4096

# One lock per reader: its chunk cache is shared by every buffer over it, and TorchRL's
# lock covers one buffer only (two prefetching buffers on one reader sample at once).
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _reader_lock(reader: TrajectoryReader) -> threading.Lock:
    with _LOCKS_LOCK:
        lock = _LOCKS.get(reader)
        if lock is None:
            lock = _LOCKS[reader] = threading.Lock()
        return lock


@dataclass(frozen=True)
class _Column:
    """A stored column and where its values go: ``(part, key, block)`` targets.

    Block ``k`` of a gather's positions holds the rows of shift ``shifts[k]``.
    """

    stored_key: Key
    shape: tuple[int, ...]
    dtype: torch.dtype
    targets: tuple[tuple[str, Key, int], ...]
    row_bytes: int
    read: tuple[int, ...]  # the blocks gathered: its own (big rows), else all

    @functools.cached_property
    def strides(self) -> tuple[int, ...]:
        """The strides, in elements, of contiguous ``[n, *shape]`` rows (as torch makes them)."""
        dims = (1, *self.shape)
        return tuple(math.prod(max(d, 1) for d in dims[i + 1 :]) for i in range(len(dims)))


@dataclass
class _Plan:
    """How to read some positions of a gather: the chunks, their rows, the order back.

    Group ``g`` reads rows ``rows[g]`` of chunk ``sources[g]`` (``(shard, stream,
    chunk)``), sorted by chunk (and de-duplicated for big rows); position ``p`` takes row
    ``inverse[p]`` of the groups' rows end to end. With one chunk, ``rows[0]`` is in
    position order and ``inverse`` is ``None``.
    """

    sources: list[tuple[ShardReader, int, int]]
    rows: list[np.ndarray]
    inverse: np.ndarray | None

    @functools.cached_property
    def total(self) -> int:
        """The groups' rows, end to end (counted once a plan, not once a column)."""
        return sum(len(rows) for rows in self.rows)


def _take_all(plan: _Plan, key: Key, dst: np.ndarray) -> None:
    """The rows of every group of ``plan``, end to end, into ``dst`` (``[rows, bytes]``)."""
    start = 0
    for (shard, stream, chunk), rows in zip(plan.sources, plan.rows, strict=True):
        end = start + len(rows)
        shard.take_bytes(stream, chunk, key, rows, dst[start:end])
        start = end


def _by_block(leaf: object) -> bool:
    """Whether a chunk's column is read by block (compressed, and not kept whole)."""
    return isinstance(leaf, CompressedColumn) and not leaf.kept_whole


_READ_ONLY = (
    "{what} is read-only: it samples a store on disk. Record new transitions with a "
    "TrajectoryWriter (or a TensorDictRecorder) into the store, then open a new buffer, or "
    "copy samples into a buffer of your own to modify them"
)


class _ReadOnlyWriter(ImmutableDatasetWriter):
    """TorchRL's writer for immutable datasets, refusing writes with a trlrec error."""

    def add(self, data: Any) -> int:
        raise ReadOnlyError(_READ_ONLY.format(what="this replay buffer"))

    def extend(self, data: Any) -> torch.Tensor:
        raise ReadOnlyError(_READ_ONLY.format(what="this replay buffer"))

    def _empty(self, empty_write_count: bool = True) -> None:
        raise ReadOnlyError(_READ_ONLY.format(what="this replay buffer (it cannot be emptied)"))


class StoreStorage(Storage):
    """A read-only TorchRL ``Storage`` of a store's transitions (see the module docstring).

    Transition ``i`` is step ``i - offset[e]`` of episode ``e``, episodes in reader order.
    ``get`` returns rollout rows (root keys + ``"next"``) plus the episode index under
    ``episode_key`` (unless ``None``).

    Args:
        reader: an open reader; it must stay open while the storage is used.
        episode_key: root key holding each transition's episode index, or ``None``.
        device: where the samples go (``None``: the CPU). For a CUDA device the rows are
            gathered into pinned memory and copied without blocking the host.

    Raises:
        StoreError: the store holds no transition.
        SchemaError: its shards have different schemas, or ``episode_key`` is a stored key.
        ConfigError: ``device`` is not a device.
    """

    def __init__(
        self,
        reader: TrajectoryReader,
        *,
        episode_key: str | None = EPISODE_KEY,
        device: torch.device | str | None = None,
    ):
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
        try:
            self.sample_device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(
                f"device must be a torch device or its name ('cpu', 'cuda:0'), got {device!r}"
            ) from err
        cuda = self.sample_device is not None and self.sample_device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asks for CUDA, which this torch cannot use "
                "(torch.cuda.is_available() is False); pass device='cpu' or None"
            )
        self._pin = cuda  # pinned staging, non-blocking copies
        self.reader = reader
        self.entries: tuple[Entry, ...] = schema.entries
        self.episode_key = episode_key
        self._lock = _reader_lock(reader)
        # the sample __getitem__ gathered, for the get that follows it (per thread)
        self._kept = threading.local()
        # per column, the rows of a sample before they are put in order (used under _lock)
        self._scratch: dict[Key, np.ndarray] = {}
        self._init_tables(reader)
        self._init_columns()
        super().__init__(max_size=int(self._offsets[-1]))

    def _init_tables(self, reader: TrajectoryReader) -> None:
        """Per-episode rows and chunk codes; code -> (shard, stream, chunk) of every chunk."""
        shards = reader.shards
        self._sources: list[tuple[ShardReader, int, int]] = []
        lane_base: dict[tuple[str, int], int] = {}
        for shard in shards:
            for b, st in enumerate(shard.streams):
                lane_base[(shard.name, b)] = len(self._sources)
                # + 1: the row after a stream's last one is never read, but its code
                # stays inside the lane whatever the rounding
                chunks = chunk_count(st.next_row, shard.chunk_rows) + 1
                self._sources += [(shard, b, c) for c in range(chunks)]
        # the reader's episodes, in its order: shard by shard, each shard's table (checked)
        starts: list[np.ndarray] = []
        bases: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for shard in shards:
            table = shard.episode_table()
            lanes = np.array([lane_base[(shard.name, b)] for b in range(len(shard.streams))])
            starts.append(table["start_row"])
            bases.append(lanes[table["stream"]])  # the streams were checked
            lengths.append(table["num_steps"])
            rows.append(np.full(len(table), shard.chunk_rows, dtype=np.int64))
        # the tables' fields are little-endian int64: native here, so no second copy
        self._ep_start = np.concatenate(starts).astype(np.int64, copy=False)
        self._ep_base = np.concatenate(bases).astype(np.int64, copy=False)
        lengths_all = np.concatenate(lengths).astype(np.int64, copy=False)
        self.episode_lengths = torch.from_numpy(lengths_all)
        self._offsets: np.ndarray = np.zeros(len(lengths_all) + 1, dtype=np.int64)
        np.cumsum(lengths_all, out=self._offsets[1:])
        chunk_rows = {s.chunk_rows for s in shards}
        # one chunk size (the usual case) is a scalar; else one per episode
        self._ep_rows: int | np.ndarray = (
            chunk_rows.pop() if len(chunk_rows) == 1 else np.concatenate(rows)
        )
        self._stride = max(s.chunk_rows for s in shards)

    def _init_columns(self) -> None:
        shifts = sorted({shift for e in self.entries for _, shift in placements(e.role)})
        self._shifts = tuple(shifts)
        columns = []
        for e in self.entries:
            targets = tuple(
                (part, e.key, shifts.index(shift)) for part, shift in placements(e.role)
            )
            blocks = tuple(sorted({t[2] for t in targets}))
            read = blocks if e.nbytes >= _BIG_ROW else tuple(range(len(shifts)))
            columns.append(_Column(e.stored_key, e.shape, e.dtype, targets, e.nbytes, read))
        self._columns = tuple(columns)
        self._dedup: dict[tuple[int, ...], bool] = {}
        for c in self._columns:
            self._dedup[c.read] = self._dedup.get(c.read, False) or c.row_bytes >= _BIG_ROW

    # ------------------------------------------------------------ Storage API
    def __len__(self) -> int:
        return self.max_size

    def episode_ids(self) -> torch.Tensor:
        """The episode index of every transition (``[len(self)]`` int64, built in RAM)."""
        return torch.repeat_interleave(
            torch.arange(len(self.episode_lengths)), self.episode_lengths
        )

    def __getitem__(self, index: Any) -> TensorDict:
        """:meth:`get`, the sample kept for the next ``get`` of the same index in this thread.

        TorchRL's ``SliceSampler`` reads ``storage[index]`` (for the done flags at its
        slices' ends) just before the buffer gathers the very same index with ``get``:
        kept, that sample is gathered once, not twice (the second ``get`` returns the same
        tensordict, once; any other index gathers anew).
        """
        out = self.get(index)
        self._kept.sample = (self._kept.index, out)
        return out

    def get(self, index: Any) -> TensorDict:
        """Gather transitions ``index`` (int, slice, sequence or tensor) from the memory maps."""
        flat, shape = self._flat_index(index)
        kept = self._kept.__dict__.pop("sample", None)
        key = self._kept.index = (shape, flat.tobytes())
        if kept is not None and kept[0] == key:
            return kept[1]
        out = self._gather(flat)
        if len(shape) != 1:
            out = out.reshape(shape)
        return out[()] if not shape else out

    def _flat_index(self, index: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """An index as flat int64 positions (negative ones counted from the end) and its shape."""
        if isinstance(index, tuple):
            if len(index) != 1:
                raise IndexError(f"a StoreStorage is 1-D; got an index of {len(index)} dims")
            index = index[0]
        n = len(self)
        flat: np.ndarray
        if isinstance(index, slice):
            flat = np.arange(n, dtype=np.int64)[index]
            shape: tuple[int, ...] = flat.shape
        else:
            if isinstance(index, torch.Tensor):
                index = index.detach().cpu().numpy()
            arr = np.asarray(index)
            if arr.size == 0:  # [] is float64 to numpy
                arr = arr.astype(np.int64)
            if arr.dtype.kind not in "iub" or (arr.dtype.kind == "b" and arr.ndim == 0):
                raise IndexError(
                    f"a StoreStorage is indexed by integers; got {arr.dtype} {index!r:.80}"
                )
            if arr.dtype.kind == "b":
                arr = np.flatnonzero(arr)
            shape = arr.shape
            flat = arr.astype(np.int64, copy=False).reshape(-1)
        low = int(flat.min()) if flat.size else 0
        if low < -n or (flat.size and flat.max() >= n):
            raise OutOfRangeError(
                f"transition index out of range: {str(self.reader.path)!r} has {n} transitions"
            )
        return (np.where(flat < 0, flat + n, flat) if low < 0 else flat), shape

    # ------------------------------------------------------------ the gather
    def _gather(self, idx: np.ndarray) -> TensorDict:
        n = idx.size
        ep = np.searchsorted(self._offsets, idx, side="right") - 1
        row = self._ep_start[ep] + (idx - self._offsets[ep])
        k = len(self._shifts)
        rows = np.concatenate([row + s for s in self._shifts]) if k > 1 else row + self._shifts[0]
        base, chunk_rows = self._ep_base[ep], self._ep_rows
        if k > 1:
            base = np.concatenate([base] * k)  # np.tile's Python upkeep: ~4x the copy
            if isinstance(chunk_rows, np.ndarray):
                chunk_rows = np.concatenate([chunk_rows[ep]] * k)
        elif isinstance(chunk_rows, np.ndarray):
            chunk_rows = chunk_rows[ep]
        chunk, offset = row_chunk(rows, chunk_rows)
        code = base + chunk
        # the whole sample in one buffer (one allocation, one copy to a device): each
        # column's rows as bytes at a 16-byte aligned offset, then the episode ids
        spans, size = [], 0
        for col in self._columns:
            nbytes = len(col.read) * n * col.row_bytes
            spans.append((size, nbytes))
            size += -(-nbytes // 16) * 16
        buf = torch.empty(size + -(-8 * n // 16) * 16, dtype=torch.uint8, pin_memory=self._pin)
        flat = buf.numpy()
        flat[size : size + 8 * n].view(np.int64)[:] = ep
        plans: dict[tuple[int, ...], _Plan] = {}
        with self._lock:
            for col, (at, nbytes) in zip(self._columns, spans, strict=True):
                plan = plans.get(col.read)
                if plan is None:
                    dedup = self._dedup[col.read]
                    plan = plans[col.read] = self._plan(code, offset, n, col.read, dedup)
                if nbytes:
                    self._read(plan, col, flat[at : at + nbytes].reshape(-1, col.row_bytes))
        device = self.sample_device
        if device is not None and device.type != "cpu":
            buf = buf.to(device, non_blocking=self._pin)
        # each value a strided view of the buffer seen as its dtype (one view a dtype, then
        # one call a value: torch's view calls cost ~2 us each)
        whole: dict[torch.dtype, torch.Tensor] = {}
        values: dict[tuple[str, Key], torch.Tensor] = {}
        for col, (at, _) in zip(self._columns, spans, strict=True):
            typed = whole.get(col.dtype)
            if typed is None:
                typed = whole[col.dtype] = buf.view(col.dtype)
            item = col.dtype.itemsize
            for part, key, block in col.targets:
                start = (at + col.read.index(block) * n * col.row_bytes) // item
                values[(part, key)] = typed.as_strided((n, *col.shape), col.strides, start)
        episode = buf.narrow(0, size, 8 * n).view(torch.int64)
        return self._assemble(values, episode, n)

    def _plan(
        self, code: np.ndarray, offset: np.ndarray, n: int, blocks: tuple[int, ...], dedup: bool
    ) -> _Plan:
        """Group positions ``blocks`` of a gather by chunk (one sort, no loop per row).

        ``dedup``: read each row once (for plans serving big rows).
        """
        if blocks != tuple(range(len(self._shifts))):
            sel = np.concatenate([np.arange(b * n, (b + 1) * n) for b in blocks])
            code, offset = code[sel], offset[sel]
        if code.size == 0 or code.min() == code.max():
            source = self._sources[int(code[0]) if code.size else 0]
            return _Plan([source], [offset], None)
        if dedup:  # each row once: a slice's consecutive transitions share their states
            unique, inverse = np.unique(code * self._stride + offset, return_inverse=True)
            codes = unique // self._stride
            offsets = unique - codes * self._stride
        else:  # small rows: reading one twice costs less than finding it
            order = np.argsort(code)  # any order within a chunk: inverse puts rows back
            codes, offsets = code[order], offset[order]
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
        cuts: list[int] = (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
        bounds = list(zip([0, *cuts], [*cuts, codes.size], strict=True))
        return _Plan(
            [self._sources[c] for c in codes[[a for a, _ in bounds]].tolist()],
            [offsets[a:b] for a, b in bounds],
            inverse.reshape(-1),
        )

    def _read(self, plan: _Plan, col: _Column, out: np.ndarray) -> None:
        """The rows of ``col`` at its positions ``col.read``, as bytes into ``out``.

        One chunk: one ``take`` in position order, straight into the output. Several: one
        ``take`` per chunk into a buffer kept from sample to sample (no fresh pages), then
        one ``take`` puts the rows in position order (a gather copies rows whole; placing
        rows by index costs per element: ~10x slower for uint8 pixels). Rows are copied as
        bytes (numpy's ``take``: every dtype alike, ~2 us a call against ~5 for torch's).
        Compressed chunks (but small columns, kept whole): the blocks of every chunk are
        decompressed into one buffer, and one ``take`` puts the rows in position order
        (:func:`~trlrec.storage.blocks.gather`).
        """
        if plan.inverse is None:
            _take_all(plan, col.stored_key, out)
            return
        leaves = [sh.chunk(st, ch)[col.stored_key] for sh, st, ch in plan.sources[:1]]
        if _by_block(leaves[0]):  # the first chunk says whether to look at the others
            leaves += [sh.chunk(st, ch)[col.stored_key] for sh, st, ch in plan.sources[1:]]
            if all(map(_by_block, leaves)):
                gather(list(zip(leaves, plan.rows, strict=True)), out, plan.inverse)
                return
        joined = self._scratch.get(col.stored_key)
        if joined is None or joined.shape[0] < plan.total:  # bounded by the batch
            joined = self._scratch[col.stored_key] = np.empty((plan.total, col.row_bytes), np.uint8)
        _take_all(plan, col.stored_key, joined)
        joined.take(plan.inverse, axis=0, out=out, mode="clip")  # every position is a row

    def _assemble(
        self, values: dict[tuple[str, Key], torch.Tensor], episode: torch.Tensor, n: int
    ) -> TensorDict:
        """The ``[n]`` rollout rows: root keys, ``"next"`` and the episode index."""
        root: dict[str, Any] = {}
        nxt: dict[str, Any] = {}
        for (part, key), value in values.items():
            d = root if part == ROOT else nxt
            for name in key[:-1]:
                d = d.setdefault(name, {})
            d[key[-1]] = value
        if self.episode_key is not None:
            root[self.episode_key] = episode
        root["next"] = nxt
        # the values are fresh [n, ...] tensors on one device: nothing to check
        return TensorDict._new_unsafe(root, batch_size=torch.Size([n]), device=self.sample_device)

    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        """Refused: a store is read through this storage, written with a TrajectoryWriter."""
        raise ReadOnlyError(_READ_ONLY.format(what="a StoreStorage"))

    def contains(self, item: Any) -> bool:
        """Whether ``item`` is a valid transition index."""
        return isinstance(item, int) and -len(self) <= item < len(self)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save: the store on disk is the state."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load: the store on disk is the state."""

    def _empty(self) -> None:
        raise ReadOnlyError(_READ_ONLY.format(what="a StoreStorage (it cannot be emptied)"))

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
    device: torch.device | str | None = None,
    prefetch: int | None = None,
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
        device: where samples go (``None``: the CPU). A CUDA device gets its rows
            gathered into pinned memory and copied without blocking the host.
        prefetch: how many samples TorchRL gathers ahead in threads while the training
            step runs (``None``: none); the gather's copies release the GIL.
        **kwargs: passed to ``TensorDictReplayBuffer`` (``transform``, ``prefetch``...)
            or, for a sliced buffer, to the sampler when they are sampler options
            (``truncated_key``, ``span``, ``pad_output``).

    Returns:
        A ``TensorDictReplayBuffer`` whose ``sample()`` returns ``[batch_size]`` rollout rows.

    Raises:
        ConfigError: for a bad ``batch_size``, ``slice_len``, ``num_slices``, ``device``
            or ``prefetch``.
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
    if prefetch is not None and (not isinstance(prefetch, int) or prefetch < 0):
        raise ConfigError(f"prefetch must be None or an int >= 0, got {prefetch!r}")
    storage = StoreStorage(reader, episode_key=episode_key, device=device)
    if prefetch:
        kwargs["prefetch"] = prefetch
    return _build(storage, batch_size, slice_len, num_slices, replacement, strict_length,
                  kwargs)  # fmt: skip


def _build(
    storage: StoreStorage,
    batch_size: int,
    slice_len: int | None,
    num_slices: int | None,
    replacement: bool,
    strict_length: bool,
    kwargs: dict[str, Any],
) -> TensorDictReplayBuffer:
    reader = storage.reader
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
        writer=_ReadOnlyWriter(),
        batch_size=batch_size,
        **kwargs,
    )
