"""A shard's streams: one per sub-environment, fed staged blocks or collector batches.

Turns columns of ``[N, n, ...]`` (N streams) into each stream's rows, keeps episodes of
different streams apart, starts a new episode where a trajectory id changes, and says
what a commit records of the streams (their COMMIT entries) or how they continue
after one.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import torch

from trlrec.errors import SchemaError
from trlrec.io.backend import IOBackend
from trlrec.storage.chunks import ChunkSeries
from trlrec.storage.format import FLAG_CUT, FLAG_DONE, STREAMS_DIR, StreamEntry, chunk_count
from trlrec.storage.schema import Key
from trlrec.storage.staging import Stager, StepStaging
from trlrec.storage.stream import Episode, Stream, write_columns

__all__ = ["StreamSet"]

_FINISHED_KEPT = 2**16  # episode statistics kept between two take_finished() calls


class StreamSet:
    """The streams of a shard.

    Args:
        shard_path: the shard directory.
        staging: the recording's staging (its schema and entries in staging order).
        chunk_rows: rows per chunk.
        io: the writer's I/O backend, and ``group`` its group.
        episode_key: a root key whose change starts a new episode, or None.
        compressed: the keys compressed when their chunk is sealed (their pages are
            kept in the page cache until then).
    """

    def __init__(
        self,
        shard_path: Path,
        staging: StepStaging,
        chunk_rows: int,
        io: IOBackend,
        group: int,
        episode_key: Key | None,
        compressed: frozenset[Key] = frozenset(),
    ) -> None:
        schema = staging.schema
        root = shard_path / STREAMS_DIR
        self.staging = staging
        self.streams = [
            Stream(b, ChunkSeries(root / str(b), schema, chunk_rows, io, group, compressed), schema)
            for b in range(schema.num_streams)
        ]
        self._id_slot = next(
            (i for i, e in enumerate(staging.root_entries) if e.key == episode_key), None
        )
        self._last_ids: torch.Tensor | None = None
        # (end frame, return, length) of the episodes done since take_finished()
        self._finished: deque[tuple[int, float | None, int]] = deque(maxlen=_FINISHED_KEPT)

    def _write(
        self,
        stream: Stream,
        cols: list[torch.Tensor],
        done: torch.Tensor,
        force: torch.Tensor,
        metas: dict[int, Any],
        aliased: torch.Tensor | None = None,
    ) -> list[Episode]:
        st = self.staging
        closed = write_columns(
            stream, st.root_entries, st.next_entries, cols, done, force, metas, aliased
        )
        for ep in closed:
            if ep.flags & FLAG_DONE:
                end = len(self.streams) * (ep.first_transition + ep.num_steps)
                self._finished.append((end, ep.reward, ep.num_steps))
        return closed

    def take_finished(self) -> list[tuple[int, float | None, int]]:
        """``(end frame, return, length)`` of the episodes done since the last call.

        The frame counts the transitions of all streams up to the episode's end; the
        return is None without a "reward" key. At most the last 65536 are kept.
        """
        out = list(self._finished)
        self._finished.clear()
        return out

    def write_staged(self, st: Stager) -> list[Episode]:
        """Write a staging buffer's steps as each stream's next block; the episodes closed."""
        n = st.count
        if n == 0:
            return []
        cols = st.columns()
        done = self.staging.done(cols, n)
        aliased = torch.tensor(list(st.alias[:n]), dtype=torch.bool)
        closed = []
        for b, stream in enumerate(self.streams):
            metas = {i: m[b] for i, m in st.metas.items() if m[b] is not None}
            force = st.force_new[b, :n]
            closed += self._write(stream, [c[b] for c in cols], done[b], force, metas, aliased)
        return closed

    def write_batch(
        self,
        cols: list[torch.Tensor],
        metas: dict[int, list[dict[str, Any] | None]],
        pending_force: torch.Tensor | None,
    ) -> list[Episode]:
        """Write ``[N, T, ...]`` columns of a batch; the episodes closed.

        ``pending_force``: the streams whose next transition starts a new episode.
        """
        n, T = cols[0].shape[:2]
        force = torch.zeros(n, T, dtype=torch.bool)
        if pending_force is not None:
            force[:, 0] = pending_force
        if self._id_slot is not None:
            ids = cols[self._id_slot].reshape(n, T, -1)
            force[:, 1:] |= (ids[:, 1:] != ids[:, :-1]).any(-1)
            if self._last_ids is not None:
                force[:, 0] |= (ids[:, 0] != self._last_ids).any(-1)
            self._last_ids = ids[:, -1].clone()
        closed = []
        step = max(1, self.staging.current.capacity * 16)  # blocks of bounded size
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            for b, stream in enumerate(self.streams):
                block = [c[b, t0:t1] for c in cols]
                block_metas = {
                    t - t0: m[b] for t, m in metas.items() if t0 <= t < t1 and m[b] is not None
                }
                done = self.staging.done(block, t1 - t0)
                closed += self._write(stream, block, done, force[b, t0:t1], block_metas)
        return closed

    def entries(self) -> tuple[list[list[int]], dict[str, Any]]:
        """The streams as a commit records them: COMMIT's entries and open episodes' metadata."""
        entries, open_meta = [], {}
        for s in self.streams:
            ep = s.open
            if ep is None:
                entries.append(StreamEntry(s.next_row, s.transitions, -1, -1, -1).to_json())
            else:
                entry = StreamEntry(
                    s.next_row, s.transitions, ep.start_row, ep.num_steps, ep.first_transition
                )
                entries.append(entry.to_json())
                if ep.meta is not None:
                    open_meta[str(s.index)] = ep.meta
        return entries, open_meta

    def resume(self, commit: dict[str, Any], commit_path: Path) -> list[Episode]:
        """Continue after ``commit``: on fresh chunks; its open episodes end there (cut)."""
        if len(commit["streams"]) != len(self.streams):
            raise SchemaError(
                f"{str(commit_path)!r} lists {len(commit['streams'])} streams, its schema "
                f"{len(self.streams)}"
            )
        cut = []
        for stream, (next_row, transitions, start, steps, first) in zip(
            self.streams, commit["streams"], strict=True
        ):
            # Continue on a fresh chunk: anything past the commit is a torn tail.
            chunk = chunk_count(next_row, stream.chunks.capacity)
            stream.chunks.discard_from(chunk)
            stream.next_row = chunk * stream.chunks.capacity
            stream.transitions = transitions
            if start >= 0:
                meta = commit["open_meta"].get(str(stream.index))
                cut.append(Episode(stream.index, start, first, steps, FLAG_CUT, meta))
        return cut

    def cut(self) -> list[Episode]:
        """End every open episode (the recording stops)."""
        return [ep for ep in (s.cut() for s in self.streams) if ep is not None]

    def sync(self) -> None:
        """Fsync every chunk file written since the last sync."""
        for s in self.streams:
            s.chunks.sync()
