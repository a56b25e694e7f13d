"""A shard being recorded: the machinery under :class:`~trlrec.storage.writer.TrajectoryWriter`.

It holds the shard's files, its streams, the staging buffers and the I/O backend's
group; sets them up from the first transition (or from the shard's last commit);
writes staged blocks and batches; commits (the protocol itself is
:meth:`ShardFiles.commit <trlrec.storage.shard.ShardFiles.commit>`); and after an I/O
error rolls back to the last commit on disk, as a writer reopening the shard would. It
is not thread-safe: the writer's lock serialises its callers.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase

from trlrec.errors import TrlrecError
from trlrec.io import IOBackend
from trlrec.storage.batches import batch_columns
from trlrec.storage.chunks import default_chunk_rows
from trlrec.storage.commit_clock import CommitClock
from trlrec.storage.format import COMMIT_FILE, SCHEMA_FILE
from trlrec.storage.jsonio import write_json_atomic
from trlrec.storage.schema import Key, Schema
from trlrec.storage.sealing import ChunkSealer, compression_plan
from trlrec.storage.shard import ShardFiles
from trlrec.storage.staging import StepStaging
from trlrec.storage.stream_set import StreamSet

__all__ = ["Recording"]


class Recording:
    """One writer's shard: files, streams, staging and I/O, from set-up to release.

    Args:
        shard_path: the shard directory (made by the dataset).
        metadata: the recording's metadata (``shard.json``).
        io: the I/O backend (closed by :meth:`release`).
        clock: the writer's commit clock (reset at each commit).
        chunk_rows: rows per chunk, or None (a default for the schema).
        stage_steps: steps per staging buffer, or None (a default for the schema).
        durable: fsync at each commit.
        episode_key: a root key whose change starts a new episode, or None.
        compression: the writer's ``compression`` (columns compressed as chunks seal).
    """

    def __init__(
        self,
        shard_path: Path,
        metadata: dict[str, Any],
        io: IOBackend,
        clock: CommitClock,
        *,
        chunk_rows: int | None,
        stage_steps: int | None,
        durable: bool,
        episode_key: Key | None,
        compression: Any = None,
    ) -> None:
        self.shard_path = shard_path
        self.io = io
        self.clock = clock
        self.group = io.new_group()
        self.durable = durable
        self._chunk_rows = chunk_rows
        self._stage_steps = stage_steps
        self._episode_key = episode_key
        self.files = ShardFiles(shard_path, durable=durable, compressed=compression is not None)
        self.sealer = ChunkSealer(shard_path, compression, durable=durable)
        self.schema: Schema | None = None
        # what the last commit holds, and the I/O errors met (read by TrajectoryWriter.stats)
        self.committed_steps = 0
        self.committed_rows = 0
        self.errors = 0
        self.last_error: str | None = None
        self._noted: BaseException | None = None
        # set with the schema (_setup), and read only after it: typed as always set
        self.staging: StepStaging = None  # type: ignore[assignment]
        self.streams: StreamSet = None  # type: ignore[assignment]
        self.capture: Any = None  # the staging's native capture (StepStaging.capture)
        try:
            commit, schema = self.files.open(metadata)
            if commit is not None and schema is not None:
                self._chunk_rows = commit["chunk_rows"]
                self._setup(schema)
                self._resume(commit)
        except BaseException:
            self.files.release()
            raise

    # ----------------------------------------------------------------- set-up
    def _setup(self, schema: Schema) -> None:
        self.schema = schema
        self._chunk_rows = self._chunk_rows or default_chunk_rows(schema)
        buffers = 2 if self.io.name in ("thread", "native") else 1  # fill one, write one
        self.staging = StepStaging(schema, self._stage_steps, buffers)
        self.capture = self.staging.capture
        self.clock.attach(self.capture)  # it counts the steps it stages
        self.sealer.setup(schema, self._chunk_rows)
        sizes = (self._chunk_rows, self.io, self.group, self._episode_key)
        self.streams = StreamSet(
            self.shard_path, self.staging, *sizes, compressed=frozenset(self.sealer.plan)
        )

    def init_schema(self, root: TensorDictBase, next_: TensorDictBase) -> None:
        """Set the recording up from its first transition (its schema is written)."""
        schema = Schema.from_transition(root, next_)
        compression_plan(self.sealer.compression, schema)  # a bad key: refused before anything
        write_json_atomic(self.shard_path / SCHEMA_FILE, schema.to_json(), durable=self.durable)
        self._setup(schema)

    def _resume(self, commit: dict[str, Any], *, commit_now: bool = True) -> None:
        """Continue after ``commit``; its open episodes end there (cut).

        ``commit_now``: commit that at once (opening a shard), or with the next commit
        (a roll back, whose cause may fail a commit now too).
        """
        self.files.resume(commit)
        self._count_committed(commit["streams"])
        for ep in self.streams.resume(commit, self.shard_path / COMMIT_FILE):
            self.files.add_episode(ep)
        self.sealer.resume(commit["streams"])
        if commit_now:
            self.commit(sync=True)

    # ---------------------------------------------------------------- writing
    def submit(self, commit: bool) -> None:
        """Write the staged steps as a block (and commit); stage into the other buffer."""
        st = self.staging.current
        try:
            for ep in self.streams.write_staged(st):
                self.files.add_episode(ep)
            st.written_at = self.io.submitted
            if commit:
                self.commit()
        except (OSError, TrlrecError) as err:
            self.note_error(err)
            raise
        finally:
            st.clear()
        nxt = self.staging.swap()
        self.io.wait(nxt.written_at)  # its last block is written: it may be overwritten
        self.check_io()

    def drain(self) -> None:
        """Write everything staged and wait for the I/O."""
        if self.schema is not None and self.staging.current.count:
            self.submit(False)
        self.io.barrier()
        self.check_io()

    def extend(
        self, batch: TensorDictBase, episode_metadata: Any, force: torch.Tensor | None
    ) -> bool:
        """Write a ``[*batch, T]`` batch; whether an episode closed.

        ``force``: the streams reset before it. The batch's memory is the caller's again
        when this returns.
        """
        if self.schema is None:
            first = batch[..., 0]
            self.init_schema(first, first.get("next"))
        cols, metas = batch_columns(self.staging, batch, episode_metadata)
        self.drain()
        self.staging.forget()
        closed = self.streams.write_batch(cols, metas, force)
        for ep in closed:
            self.files.add_episode(ep)
        self.io.barrier()
        self.check_io()
        return bool(closed)

    def commit(self, sync: bool = False) -> None:
        """Commit what was written (queued on the I/O backend; ``sync``: and wait for it)."""
        self.clock.committed()
        if self.durable:
            self.io.barrier()
            self.check_io()
            self.streams.sync()
        entries, open_meta = self.streams.entries()
        try:
            token = self.files.commit(
                self.io, self.group, entries, open_meta, self._chunk_rows or 1
            )
        except (OSError, TrlrecError) as err:
            self.note_error(err)
            raise
        self.sealer.committed(self.io, self.group, token, entries)
        self._count_committed(entries)  # queued: a failure rolls back and counts again
        if sync:
            self.io.barrier()
            self.check_io()

    def _count_committed(self, entries: list[list[int]]) -> None:
        """Keep the rows and transitions of the streams' COMMIT entries (for stats)."""
        self.committed_rows = sum(e[0] for e in entries)
        self.committed_steps = sum(e[1] for e in entries)

    def note_error(self, err: BaseException) -> None:
        """Count an error met while writing and keep its text (for stats); once per error."""
        if err is self._noted:
            return
        self._noted = err
        self.errors += 1
        self.last_error = f"{type(err).__name__}: {err}"

    def stats(self, steps: int, last_commit: float) -> dict[str, float | int | str | None]:
        """The writer's :meth:`~trlrec.TrajectoryWriter.stats`, given its appended steps."""
        row_bytes = self.schema.row_bytes() if self.schema is not None else 0
        return {
            "steps": steps,
            "steps_committed": self.committed_steps,
            "steps_pending": max(0, steps - self.committed_steps),
            "episodes_committed": self.files.num_episodes,
            "bytes_written": self.committed_rows * row_bytes,
            "seconds_since_commit": max(0.0, time.monotonic() - last_commit),
            "shards": 1,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    def check_io(self) -> None:
        """Raise the I/O backend's error, if any, after rolling back to the last commit."""
        err = self.io.error(self.group)
        if err is not None:
            self.note_error(err)
            self._roll_back()
            raise err

    def _roll_back(self) -> None:
        """Continue from the last commit on disk, as a writer reopening the shard would.

        What was recorded since is dropped (a failed write may have torn it); the
        episodes open at that commit end there, flagged as cut.
        """
        self.io.close_files()  # its files closed: chunks past the commit are deleted
        self.group = self.io.new_group()
        self.files.discard_pending()
        self.clock.committed()
        self._setup(self.staging.schema)
        commit = self.files.last_commit()
        if commit is not None:
            self._resume(commit, commit_now=False)

    # --------------------------------------------------------------- the end
    def finish(self) -> None:
        """Write what is staged, end the open episodes (cut) and commit."""
        if self.schema is not None:
            self.drain()
            for ep in self.streams.cut():
                self.files.add_episode(ep)
            self.commit(sync=True)
            self.sealer.finish(self.streams.entries()[0])

    def release(self) -> None:
        """Close the I/O backend and release the shard (removed if nothing was recorded)."""
        self.sealer.close()
        self.io.close()
        if self.schema is None and not (self.shard_path / COMMIT_FILE).exists():
            shutil.rmtree(self.shard_path, ignore_errors=True)  # while its lock is still held
        self.files.release()
