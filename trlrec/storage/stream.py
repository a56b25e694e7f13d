"""One episode stream (one sub-environment): turns blocks of transitions into rows.

A block of ``n`` transitions becomes state rows (one per timestep, the T + 1 layout)
and transition columns, computed with a few vectorised tensor operations per key.
A transition continues the open episode when no done flag ended it, no reset was
signalled, and its root state equals, bit for bit, the previous ``"next"`` state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trlrec.storage.chunks import ChunkSeries
from trlrec.storage.dtypes import bits_view
from trlrec.storage.format import FLAG_CUT, FLAG_DONE
from trlrec.storage.schema import Entry, Key, Schema

__all__ = ["SMALL_ROW", "Block", "Episode", "Stream", "write_columns"]


@dataclass
class Episode:
    """An episode of a stream: rows ``[start_row, start_row + num_steps]``."""

    stream: int
    start_row: int
    first_transition: int
    num_steps: int = 0
    flags: int = 0
    meta: dict[str, Any] | None = None
    reward: float | None = None  # the sum of its rewards, where the schema has "reward"


@dataclass
class Block:
    """``n`` consecutive transitions of one stream, each column ``[n, ...]``."""

    state_root: dict[Key, torch.Tensor]
    state_next: dict[Key, torch.Tensor]
    root: dict[Key, torch.Tensor]
    next: dict[Key, torch.Tensor]
    done: torch.Tensor  # [n] bool
    force_new: torch.Tensor  # [n] bool
    metas: dict[int, dict[str, Any]] = field(default_factory=dict)  # transition -> episode meta
    # [n] bool: the root state is known to be the previous next state (not staged)
    aliased: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.done.shape[0]


SMALL_ROW = 256  # bytes: rows up to this size are compared and written a block at a time


def _words(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes as a flat tensor of the widest aligned integer type (a view if contiguous).

    Comparing int64 words runs several times faster than the same bytes as uint8.
    """
    flat = t.reshape(-1)
    if flat.numel() and flat.stride(0) != 1:
        flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
    flat = flat.view(torch.uint8)
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if flat.numel() % size == 0 and flat.data_ptr() % size == 0:
            return flat.view(dtype)
    return flat


def _np_bits(t: torch.Tensor) -> np.ndarray:
    """``t``'s elements as same-width integers, as a numpy view (any dtype, bit-exact)."""
    return bits_view(t).numpy()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit equality (NaN payloads included) of two tensors of one shape and dtype.

    Compared as flat words, in numpy, on the calling thread. Not ``torch.equal``: past
    32,768 elements (a few staged pixel rows) it runs on torch's intra-op pool, whose
    OpenMP workers then spin, waiting for more work, on the other core, which the I/O
    and sealing threads need (measured on 64 rows of 84x84 frames: 58 us of the step
    loop and as much again of a spinning worker; numpy: 28 us, one thread).
    """
    wa, wb = _words(a), _words(b)
    if wa.dtype != wb.dtype:  # differently aligned: compare bytes
        wa, wb = wa.view(torch.uint8), wb.view(torch.uint8)
    return bool(np.array_equal(wa.numpy(), wb.numpy()))


class Stream:
    """Writes the rows and tracks the episodes of one stream."""

    def __init__(
        self,
        index: int,
        chunks: ChunkSeries,
        schema: Schema,
        next_row: int = 0,
    ):
        self.index = index
        self.chunks = chunks
        self.schema = schema
        self.next_row = next_row
        self.transitions = 0
        self.open: Episode | None = None
        self._last: dict[Key, torch.Tensor] | None = None  # the last "next" state
        # (role, key) of the columns whose rows are small: gathered per block
        self._small = {(e.role, e.key) for e in schema.entries if e.nbytes <= SMALL_ROW}
        self._reward = any(e.role == "next" and e.key == ("reward",) for e in schema.entries)

    def _continuity(self, block: Block) -> torch.Tensor:
        """Whether each transition's root state is, bit for bit, the previous next state.

        Small rows are compared for the whole block at once (in numpy: on arrays this
        small a numpy operation costs ~1 us, a torch one ~10 in the step loop); big
        ones with one ``torch.equal`` per key and per run of transitions between known
        episode starts (done flags, resets), row by row only in a run that differs.
        """
        n = len(block)
        cont = torch.ones(n, dtype=torch.bool)
        cont_np = cont.numpy()
        known = block.force_new.numpy().copy()
        known[1:] |= block.done.numpy()[:-1]
        aliased = (
            block.aliased.numpy() if block.aliased is not None else np.zeros(n, dtype=np.bool_)
        )
        runs: list[tuple[int, int]] | None = None
        for key, root in block.state_root.items():
            nxt = block.state_next[key]
            last = None if self._last is None else self._last[key]
            if last is not None and not aliased[0] and not _same(root[:1], last):
                cont_np[0] = False
            if n < 2:
                continue
            if ("state", key) in self._small:
                eq = (_np_bits(root[1:]) == _np_bits(nxt[:-1])).reshape(n - 1, -1).all(1)
                cont_np[1:] &= eq | aliased[1:] | known[1:]
                continue
            if runs is None:
                starts = [0, *np.flatnonzero(known).tolist(), n]
                runs = [
                    (a, b)
                    for a, b in itertools.pairwise(starts)
                    if b - a >= 2 and not aliased[a + 1 : b].all()
                ]
            for a, b in runs:
                if not _same(root[a + 1 : b], nxt[a : b - 1]):
                    eq = _np_bits(root[a + 1 : b]) == _np_bits(nxt[a : b - 1])
                    cont_np[a + 1 : b] &= eq.reshape(b - a - 1, -1).all(1) | aliased[a + 1 : b]
        self._last = {k: v[-1:].clone() for k, v in block.state_next.items()}
        return cont

    def write_block(self, block: Block) -> list[Episode]:
        """Write a block of transitions; return the episodes it closed.

        The block is cut into runs that each continue one episode. Big columns
        (pixels) are written run by run straight from the block's tensors, with no
        gathering copy; small columns are gathered into the block's rows and written
        with one call per key, whatever the number of runs. All rows are written
        before the stream's state changes, so a failed write (a full disk) leaves
        the stream as it was before the block. The writes are jobs of the writer's
        I/O backend: the block's tensors stay unchanged until it is done with them.
        """
        n = len(block)
        if n == 0:
            return []
        cont = self._continuity(block)
        cont &= ~block.force_new
        cont[1:] &= ~block.done[:-1]
        if self.open is None:
            cont[0] = False
        new = ~cont
        starts = [0, *new[1:].nonzero().squeeze(1).add(1).tolist(), n]
        runs = list(itertools.pairwise(starts))
        self._write_small(block, new)
        row = self.next_row
        for a, b in runs:
            row = self._write_big(block, a, b, bool(new[a]), row)
        closed: list[Episode] = []
        for a, b in runs:
            closed.extend(self._account(block, a, b, bool(new[a])))
        return closed

    def _write_small(self, block: Block, new: torch.Tensor) -> None:
        """Gather the small columns of the whole block into rows; one write per key.

        The gathering is done in numpy, on the columns' bits (any dtype, exact).
        """
        small = self._small
        state = {k: v for k, v in block.state_next.items() if ("state", k) in small}
        trans = {k: v for k, v in block.root.items() if ("root", k) in small}
        trans.update({("next", *k): v for k, v in block.next.items() if ("next", k) in small})
        if not state and not trans:
            return
        new_np = new.numpy()
        # block row of each transition's next state: one row per transition, plus one
        # more (the first state) for each episode starting in the block
        end = np.cumsum(new_np, dtype=np.int64) + np.arange(len(new_np))
        m = int(end[-1]) + 1
        new_at = np.flatnonzero(new_np)
        columns: dict[Key, torch.Tensor] = {}
        for key, nxt in state.items():
            src = _np_bits(nxt)
            rows = np.empty((m, *src.shape[1:]), dtype=src.dtype)
            rows[end] = src
            rows[end[new_at] - 1] = _np_bits(block.state_root[key])[new_at]
            columns[key] = torch.from_numpy(rows).view(nxt.dtype)
        if columns:
            self.chunks.write(self.next_row, columns)
        if trans:
            # transition i lives in the row of its root state, end[i] - 1; when the block
            # continues an episode, that is the row before the block for i = 0
            carried = not bool(new_np[0])
            pos = end - 1 + carried
            columns = {}
            for key, value in trans.items():
                src = _np_bits(value)
                rows = np.zeros((m + carried, *src.shape[1:]), dtype=src.dtype)
                rows[pos] = src
                columns[key] = torch.from_numpy(rows).view(value.dtype)
            self.chunks.write(self.next_row - carried, columns)

    def _write_big(self, block: Block, a: int, b: int, new: bool, row: int) -> int:
        """Write the big columns of transitions ``[a, b)``; return the row after them."""
        small = self._small
        if new:  # the episode's first state row
            first = {
                k: v[a : a + 1] for k, v in block.state_root.items() if ("state", k) not in small
            }
            if first:
                self.chunks.write(row, first)
            row += 1
        state = {k: v[a:b] for k, v in block.state_next.items() if ("state", k) not in small}
        if state:
            self.chunks.write(row, state)
        trans = {k: v[a:b] for k, v in block.root.items() if ("root", k) not in small}
        trans.update(
            {("next", *k): v[a:b] for k, v in block.next.items() if ("next", k) not in small}
        )
        if trans:
            self.chunks.write(row - 1, trans)
        return row + (b - a)

    def _account(self, block: Block, a: int, b: int, new: bool) -> list[Episode]:
        """Episode bookkeeping for the (written) transitions ``[a, b)``."""
        closed: list[Episode] = []
        ep = self.open
        if new or ep is None:  # a block continues an open episode only (write_block)
            if ep is not None:
                ep.flags = FLAG_CUT
                closed.append(ep)
            ep = self.open = Episode(self.index, self.next_row, self.transitions)
            self.next_row += 1
        for i in sorted(m for m in block.metas if a <= m < b):
            ep.meta = block.metas[i]
        if self._reward:  # the episode's return, for the recorders' statistics
            run = float(block.next[("reward",)][a:b].double().sum())
            ep.reward = run if ep.reward is None else ep.reward + run
        self.transitions += b - a
        self.next_row += b - a
        ep.num_steps = self.transitions - ep.first_transition
        if block.done[b - 1]:
            ep.flags = FLAG_DONE
            closed.append(ep)
            self.open = None
        return closed

    def cut(self) -> Episode | None:
        """End the open episode without a done flag (the recording stops or resets)."""
        ep, self.open = self.open, None
        if ep is not None:
            ep.flags = FLAG_CUT
        return ep


def write_columns(
    stream: Stream,
    root_entries: list[Entry],
    next_entries: list[Entry],
    cols: list[torch.Tensor],
    done: torch.Tensor,
    force: torch.Tensor,
    metas: dict[int, Any],
    aliased: torch.Tensor | None = None,
) -> list[Episode]:
    """Write one stream's ``[n, ...]`` columns (root entries, then "next" ones); closed episodes."""
    nr = len(root_entries)
    roots, nexts = cols[:nr], cols[nr:]
    block = Block(
        state_root={
            e.key: c for e, c in zip(root_entries, roots, strict=True) if e.role == "state"
        },
        state_next={
            e.key: c for e, c in zip(next_entries, nexts, strict=True) if e.role == "state"
        },
        root={e.key: c for e, c in zip(root_entries, roots, strict=True) if e.role == "root"},
        next={e.key: c for e, c in zip(next_entries, nexts, strict=True) if e.role == "next"},
        done=done,
        force_new=force,
        metas=metas,
        aliased=aliased,
    )
    return stream.write_block(block)
