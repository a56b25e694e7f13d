"""Routing collector batches from many workers to shards, so that no episode is cut.

A multi-process collector hands its batches to one recorder, and the batches of its
workers interleave: ``MultiAsyncCollector`` yields one worker's ``[T]`` (or ``[B, T]``)
batch at a time, in the order they finish, and a ``cat_results=-1``
``MultiSyncCollector`` puts the workers one after the other along time. Written to one
stream, each worker's episode would be cut wherever another worker's batch comes
between two of its batches. A **lane** is one writer (one shard) that receives whole
pieces of batches from one worker at a time, so its streams hold whole episodes.

The rule, in one place (:meth:`Lanes.extend`), reads only what every TorchRL collector
puts in its batches: ``("collector", "traj_ids")`` (trajectory ids, unique across the
workers of a collector, which draw them from one shared pool) and the done flags.

1. A batch is cut along time where *every* row's trajectory id changes and at least one
   row's previous step was not done, or a new id is one a lane holds open: one worker's
   batch ends there and another's begins (within one worker's rollout an id changes
   only after a done flag, to an id never used before).
2. Each piece goes to the lane whose open trajectories it continues (same id, in the
   same row, the lane's last step not done); else to a lane whose episodes all ended;
   else to a new lane (a new shard), at most ``max_lanes``; past that, to the lane
   written longest ago, whose open episodes end there (flagged cut).

A batch without trajectory ids goes to the first lane, as one stream of steps.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDictBase

from trlrec.storage.schema import Key
from trlrec.storage.writer import TrajectoryWriter

__all__ = ["Lanes"]

_DONE_NAMES = ("done", "terminated", "truncated")
_FRAME_MARKS = 2**12  # frame-offset marks kept per lane between two finished_episodes()


@dataclass
class _Lane:
    """One writer and the trajectories it holds open: one row each of its batch shape."""

    writer: TrajectoryWriter
    shape: tuple[int, ...]
    last_ids: torch.Tensor | None = None  # [N, k]: each row's last trajectory id
    open: torch.Tensor | None = None  # [N] bool: the row's last step was not done
    used: int = 0  # when a piece was last written here (in pieces routed)
    # (lane frames after a piece, global frames minus lane frames): maps the lane's
    # episode end frames to the frames of all lanes together
    marks: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=_FRAME_MARKS))


class Lanes:
    """The writers a recorder feeds collector batches to, one per interleaved worker.

    Args:
        first: the first lane's writer (the recorder's own).
        open_writer: makes the writer of lane ``i`` (a new shard of the same store).
        episode_key: the trajectory-id key (``("collector", "traj_ids")``), or None.
        max_lanes: the most lanes (shards) opened; a bound for batches whose workers
            start new trajectories at every batch (``reset_at_each_iter=True``).
    """

    def __init__(
        self,
        first: TrajectoryWriter,
        open_writer: Callable[[int], TrajectoryWriter],
        episode_key: Key | None,
        max_lanes: int,
    ) -> None:
        self._lanes: list[_Lane] = [_Lane(first, ())]
        self._shaped = False  # the first lane's shape is its first batch's
        self._open_writer = open_writer
        self._key = episode_key
        self._max = max_lanes
        self._pieces = 0
        self.frames = 0  # transitions routed, all lanes together

    @property
    def writers(self) -> list[TrajectoryWriter]:
        """The lanes' writers, in the order they were opened."""
        return [lane.writer for lane in self._lanes]

    def extend(self, batch: TensorDictBase, episode_metadata: Sequence[Any] | None) -> None:
        """Write a ``[*S, T]`` batch, each piece to its lane (see the module's docstring)."""
        shape = tuple(batch.batch_size[:-1])
        T = batch.batch_size[-1]
        ids = self._ids(batch)
        if ids is None:
            self._write(self._lanes[0], batch, episode_metadata, None, None)
            return
        done = _done(batch, ids.shape[0], T)
        for t0, t1 in self._pieces_of(ids, done):
            lane = self._route(shape, ids[:, t0])
            piece = batch if (t0, t1) == (0, T) else batch[..., t0:t1]
            metas = None if episode_metadata is None else list(episode_metadata[t0:t1])
            self._write(lane, piece, metas, ids[:, t1 - 1].clone(), ~done[:, t1 - 1])

    def _ids(self, batch: TensorDictBase) -> torch.Tensor | None:
        """The batch's trajectory ids as ``[N, T, k]`` CPU int64, or None without them."""
        if self._key is None:
            return None
        ids = batch.get(self._key, None)
        if not isinstance(ids, torch.Tensor):
            return None
        T = batch.batch_size[-1]
        N = batch.batch_size[:-1].numel()
        return ids.detach().to("cpu", torch.int64).reshape(N, T, -1)

    def _pieces_of(self, ids: torch.Tensor, done: torch.Tensor) -> list[tuple[int, int]]:
        """``(t0, t1)`` spans of the batch, cut where one worker's batch gives way to another's."""
        T = ids.shape[1]
        if T < 2:
            return [(0, T)]
        changed = (ids[:, 1:] != ids[:, :-1]).any(-1)  # [N, T - 1]
        cuts = changed.all(0)
        if bool(cuts.any()):
            held = [
                lane.last_ids[lane.open, 0]
                for lane in self._lanes
                if lane.open is not None and lane.last_ids is not None
            ]
            held_open = torch.cat(held) if held else torch.zeros(0, dtype=torch.int64)
            resumes = torch.isin(ids[:, 1:, 0], held_open).any(0)
            cuts &= (~done[:, :-1]).any(0) | resumes
        starts = [0, *(torch.nonzero(cuts).flatten() + 1).tolist(), T]
        return list(itertools.pairwise(starts))

    def _route(self, shape: tuple[int, ...], first_ids: torch.Tensor) -> _Lane:
        """The lane of a piece whose first step has ``first_ids`` (``[N, k]``)."""
        if not self._shaped:  # the first piece goes to the first lane
            self._shaped = True
            self._lanes[0].shape = shape
            return self._lanes[0]
        same = [lane for lane in self._lanes if lane.shape == shape]
        best, best_rows = None, 0
        for lane in same:
            if lane.last_ids is None or lane.open is None:
                continue
            rows = int((lane.open & (lane.last_ids == first_ids).all(-1)).sum())
            if rows > best_rows:
                best, best_rows = lane, rows
        if best is not None:
            return best
        for lane in same:
            if lane.open is None or not bool(lane.open.any()):
                return lane
        if len(self._lanes) < self._max:
            lane = _Lane(self._open_writer(len(self._lanes)), shape)
            self._lanes.append(lane)
            return lane
        if same:
            return min(same, key=lambda lane: lane.used)
        raise ValueError("unreachable: a lane of every shape seen exists")  # pragma: no cover

    def _write(
        self,
        lane: _Lane,
        piece: TensorDictBase,
        metas: Sequence[Any] | None,
        last_ids: torch.Tensor | None,
        open_: torch.Tensor | None,
    ) -> None:
        lane.writer.extend(piece, episode_metadata=metas)
        self._pieces += 1
        lane.used = self._pieces
        lane.last_ids, lane.open = last_ids, open_
        self.frames += piece.batch_size.numel()
        local = lane.writer.num_transitions
        lane.marks.append((local, self.frames - local))

    def finished_episodes(self) -> list[tuple[int, float | None, int]]:
        """Every lane's finished episodes, their end frames counted over all lanes."""
        out = []
        for lane in self._lanes:
            for end, ret, length in lane.writer.finished_episodes():
                out.append((end + _offset(lane.marks, end), ret, length))
        out.sort(key=lambda item: item[0])
        return out

    def stats(self) -> dict[str, float | int | str | None]:
        """The lanes' writers' :meth:`~trlrec.TrajectoryWriter.stats`, summed (the worst age)."""
        return merge_stats([lane.writer.stats() for lane in self._lanes])


def _offset(marks: deque[tuple[int, int]], end: int) -> int:
    """The global-minus-lane frame offset of lane frame ``end``; marks before it are dropped."""
    while len(marks) > 1 and marks[0][0] < end:
        marks.popleft()
    return marks[0][1] if marks else 0


def _done(batch: TensorDictBase, N: int, T: int) -> torch.Tensor:
    """``[N, T]``: whether any done flag of ``"next"`` is set."""
    next_ = batch.get("next")
    out = torch.zeros(N, T, dtype=torch.bool)
    for key in next_.keys(True, True):
        name = key if isinstance(key, str) else key[-1]
        if name in _DONE_NAMES:
            out |= next_.get(key).detach().to("cpu").reshape(N, T, -1).to(torch.bool).any(-1)
    return out


def merge_stats(
    parts: Sequence[dict[str, float | int | str | None]],
) -> dict[str, float | int | str | None]:
    """Several writers' stats as one: counts summed, the oldest commit, the last error."""
    out: dict[str, float | int | str | None] = {}
    for part in parts:
        for key, value in part.items():
            if key == "last_error":
                out[key] = value if value is not None else out.get(key)
            elif key != "seconds_since_commit" and isinstance(value, int | float):
                previous = out.get(key, 0)
                out[key] = (previous if isinstance(previous, int | float) else 0) + value
    # the age that matters: of the oldest commit with steps waiting behind it (a lane
    # whose worker went quiet with everything committed is not at risk)
    ages = [float(p["seconds_since_commit"] or 0.0) for p in parts if p.get("steps_pending")]
    every = [float(p["seconds_since_commit"] or 0.0) for p in parts]
    out["seconds_since_commit"] = max(ages) if ages else min(every, default=0.0)
    return out
