"""TrajectoryWriter: append rollout transitions to a memory-mapped, crash-safe store.

One step goes one way: :meth:`TrajectoryWriter.append` checks it, the staging copies
it into a buffer (:mod:`~trlrec.storage.staging`), full buffers become rows of each
sub-environment's stream (:mod:`~trlrec.storage.stream_set`, into chunk files), and the
commit clock (:mod:`~trlrec.storage.commit_clock`) says when the shard commits. The
machinery under it (set-up, writes, commits, roll back) is
:mod:`~trlrec.storage.recording`; every byte goes to disk through the writer's I/O
backend (:mod:`trlrec.io`), chosen once when it opens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase

from trlrec.closing import Closeable
from trlrec.errors import ClosedError, ConfigError, StoreWriteError
from trlrec.io import IOBackend, open_backend
from trlrec.storage.batches import (
    check_batch,
    check_episode_metadata,
    check_pair,
    check_row,
    stream_mask,
)
from trlrec.storage.commit_clock import CommitClock, IdleCommitter
from trlrec.storage.compression import check_compression
from trlrec.storage.dataset import check_metadata, create_dataset, new_shard_dir
from trlrec.storage.recording import Recording
from trlrec.storage.schema import Key, Schema
from trlrec.storage.staging import StagingLock

__all__ = ["TrajectoryWriter"]


class TrajectoryWriter(Closeable):
    """Writes transitions of TorchRL rollouts to a store directory.

    A transition is a rollout row: root keys (observation, action, done flags...) and
    a ``"next"`` sub-tensordict. Steps are staged in a small preallocated buffer and
    written to chunk files as slices; they survive a crash from their commit on
    (episode ends, every ``commit_every_steps`` transitions and
    ``commit_every_seconds`` — also while nobody appends —, ``flush()``, ``close()``).

    Args:
        path: the store directory; created if missing. An existing store is appended
            to (a new shard), never overwritten.
        metadata: JSON-serialisable dict stored once with the recording.
        shard: the shard to write: ``None`` makes a new one; an existing one's name
            continues it after its last commit.
        chunk_rows: rows per chunk (default: about 128 MiB of data, at most 262144).
        stage_steps: steps staged in RAM between writes (default: up to 1024, ~8 MiB).
        commit_every_steps, commit_every_seconds: commit after this many transitions,
            or this long after the last commit.
        commit_on_done, min_commit_interval: commit soon after an episode ends, but no
            sooner than this many seconds after the last commit.
        durable: fsync data, index and commit record at each commit (power loss).
        background: write on an I/O thread (native where built), so the step loop does
            not wait for the disk; an I/O error is then raised by the next call, after
            a roll back to the last commit. ``False`` writes in the calling thread.
        io: the I/O backend, overriding ``background``: "inline", "thread", "native",
            "auto", or an :class:`~trlrec.io.IOBackend` (the writer closes it).
        episode_key: a root key whose change starts a new episode (a collector's
            trajectory ids), used when present.
        compression: store columns compressed (lossless): ``None`` (raw memory maps),
            ``"zstd"`` (every column), ``("zstd", level)``, or a mapping from keys
            (``"pixels"``, ``("next", "reward")``) to those. A chunk's columns are
            compressed on a worker thread once the chunk is full and committed (and the
            last chunks at ``close()``), off the step loop; readers decompress them
            transparently. Needs the ``zstandard`` package.
        specs: the recording env's specs (``env.specs``), stored as JSON in the
            store's ``specs.json`` (the first writer's are kept) and read back by
            :attr:`TrajectoryReader.specs <trlrec.TrajectoryReader.specs>`.

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> from trlrec import TrajectoryWriter, TrajectoryReader
        >>> path = tempfile.mkdtemp() + "/run"
        >>> with TrajectoryWriter(path, metadata={"agent": "random"}) as w:
        ...     for t in range(3):
        ...         w.append(TensorDict({
        ...             "observation": torch.tensor([float(t)]),
        ...             "action": torch.tensor([1]),
        ...             "next": {"observation": torch.tensor([t + 1.0]),
        ...                      "reward": torch.tensor([1.0]),
        ...                      "done": torch.tensor([t == 2])},
        ...         }, batch_size=[]))
        >>> r = TrajectoryReader(path)
        >>> r.num_steps, r.num_episodes, r.metadata
        (3, 1, {'agent': 'random'})
        >>> r.episodes[0]["next", "observation"].flatten().tolist()
        [1.0, 2.0, 3.0]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: dict[str, Any] | None = None,
        shard: str | None = None,
        chunk_rows: int | None = None,
        stage_steps: int | None = None,
        commit_every_steps: int = 1024,
        commit_every_seconds: float = 5.0,
        commit_on_done: bool = True,
        min_commit_interval: float = 0.2,
        durable: bool = False,
        background: bool = True,
        io: str | IOBackend | None = None,
        episode_key: Key | str | None = ("collector", "traj_ids"),
        specs: Any = None,
        compression: Any = None,
    ):
        for name, value in (("chunk_rows", chunk_rows), ("stage_steps", stage_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        check_compression(compression)
        self.clock = CommitClock(
            commit_every_steps, commit_every_seconds, commit_on_done, min_commit_interval
        )
        self.path = Path(path)
        self.metadata = check_metadata(metadata)
        self._error: BaseException | None = None  # an idle commit's failure, raised next call
        self._pending_force: torch.Tensor | None = None  # streams reset before the next step
        self._closed = False
        self._owner = os.getpid()  # a forked child's copy is not its to write (forked())
        create_dataset(self.path, self.metadata, durable=durable)
        if specs is not None:  # the env's specs (env.specs), see trlrec.specs
            from trlrec.specs import write_specs

            write_specs(self.path, specs, durable=durable)
        self.shard_path = new_shard_dir(self.path, shard, durable=durable)
        if not isinstance(io, IOBackend):
            io = open_backend(io or ("auto" if background else "inline"))
        key = (episode_key,) if isinstance(episode_key, str) else episode_key
        try:
            self._rec = Recording(
                self.shard_path,
                self.metadata,
                io,
                self.clock,
                chunk_rows=chunk_rows,
                stage_steps=stage_steps,
                durable=durable,
                episode_key=key,
                compression=compression,
            )
        except BaseException:
            io.close()
            raise
        self._lock = StagingLock(self._rec)  # the caller's thread vs. the idle committer
        IdleCommitter.get().add(self)  # commits it while idle, closes it at exit

    @property
    def schema(self) -> Schema | None:
        """The recording's schema (keys, shapes, dtypes), once a transition was appended."""
        return self._rec.schema

    @property
    def num_transitions(self) -> int:
        """Transitions appended so far, all streams together (a ``[B]`` step counts B)."""
        rec = self._rec
        if rec.schema is None:
            return 0
        staged = rec.staging.current.count * rec.staging.num_streams
        return sum(s.transitions for s in rec.streams.streams) + staged

    @property
    def num_steps(self) -> int:
        """Steps appended so far (an ``extend`` of ``[B, T]`` counts ``B * T``)."""
        return self.clock.appended

    @property
    def background(self) -> bool:
        """Whether blocks are written on a background thread."""
        return self._rec.io.name in ("thread", "native")

    def finished_episodes(self) -> list[tuple[int, float | None, int]]:
        """The episodes a done flag ended since the last call, oldest first (at most 65536).

        Returns:
            ``(end frame, return, length)`` each: the frame counts the transitions of all
            streams up to the episode's end, the return is None without a "reward" key.
        """
        with self._lock:
            return [] if self._rec.schema is None else self._rec.streams.take_finished()

    def _check_open(self) -> None:
        if self._closed:
            if self._owner != os.getpid():
                raise ClosedError(
                    f"the writer of {str(self.shard_path)!r} belongs to process "
                    f"{self._owner}, which this process (pid {os.getpid()}) was forked from: "
                    "its shard stays the parent's. Open a TrajectoryWriter in this process "
                    "(it writes a shard of its own); a TensorDictRecorder does so itself"
                )
            raise ClosedError(f"the writer of {str(self.shard_path)!r} is closed; open a new one")
        if self._error is not None:
            err, self._error = self._error, None
            self._gate()
            raise err

    def _gate(self) -> None:
        """Send the next step the Python way if it must see it (closed, an error, a reset)."""
        capture = self._rec.capture
        if capture is not None:
            capture.blocked = (
                self._closed or self._error is not None or self._pending_force is not None
            )

    def append(
        self, step: TensorDictBase, *, episode_metadata: dict | Sequence[dict | None] | None = None
    ) -> None:
        """Append one transition: a rollout row with root keys and ``"next"``.

        Args:
            step: unbatched, or ``[B]`` for a batched env (one stream per sub-env).
            episode_metadata: a dict (per stream: a sequence) to attach to the episode
                this transition belongs to; the last one given is kept.

        Raises:
            SchemaError: a key, shape or dtype differs from the recording's schema.
        """
        self.append_transition(step, check_row(step), episode_metadata=episode_metadata)

    def append_transition(
        self,
        root: TensorDictBase,
        next_: TensorDictBase,
        *,
        episode_metadata: dict | Sequence[dict | None] | None = None,
    ) -> None:
        """Append one transition given as its two parts, as a transform's ``_step`` sees them.

        ``root`` holds the step's inputs (observation, action...; a ``"next"`` entry in
        it is ignored) and ``next_`` its outputs. Same rules as :meth:`append`.
        """
        capture = self._rec.capture
        if capture is not None and episode_metadata is None:
            staged = capture.append(root, next_)  # checked, staged and counted, or -1
            if not staged:
                return
            if staged > 0:
                with self._lock:
                    self._staged(0, staged == 1)
                return
        self._check_open()
        check_pair(root, next_)
        with self._lock:
            self._append(root, next_, episode_metadata)

    def _append(self, root: TensorDictBase, next_: TensorDictBase, episode_metadata: Any) -> None:
        """Stage one checked transition; write a block and commit when due."""
        rec = self._rec
        if rec.schema is None:
            rec.init_schema(root, next_)
            if rec.capture is not None:
                rec.capture.hold()  # new, unheld: held as StagingLock holds it
        staging = rec.staging
        meta = episode_metadata
        if meta is not None:
            meta = check_episode_metadata(meta, staging.num_streams)
        done = staging.stage(root, next_, self._pending_force, meta)
        if self._pending_force is not None:
            self._pending_force = None
            self._gate()
        self._staged(1, done)

    def _staged(self, steps: int, ended: bool) -> None:
        """Tick the clock (``steps`` not counted by the capture); write and commit when due."""
        due = self.clock.tick(steps, ended)
        if due or self._rec.staging.full():
            self._rec.submit(due)

    def end_episode(self, streams: torch.Tensor | Sequence[bool] | None = None) -> None:
        """Mark that the next transition of these streams starts a new episode (a reset).

        Args:
            streams: a bool mask over the streams (the env's batch), or None for all.
        """
        self._check_open()
        schema = self._rec.schema
        if schema is None:
            return
        mask = stream_mask(streams, schema.num_streams)
        with self._lock:
            pending = self._pending_force
            self._pending_force = mask if pending is None else pending | mask
            self._gate()

    def extend(
        self,
        batch: TensorDictBase,
        *,
        episode_metadata: Sequence[dict | Sequence[dict | None] | None] | None = None,
    ) -> None:
        """Append many transitions: ``[T]`` or ``[B, T]`` (time last, as collectors give).

        Args:
            batch: the transitions, time last.
            episode_metadata: ``None``, or one entry per time index ``t`` (``T`` of them),
                each as :meth:`append`'s argument for the transitions at ``t``.

        Raises:
            SchemaError: a key, shape or dtype differs from the recording's schema.
        """
        self._check_open()
        T = check_batch(batch)
        if T == 0:
            return
        with self._lock:
            closed = self._rec.extend(batch, episode_metadata, self._pending_force)
            self._pending_force = None
            self._gate()
            if self.clock.tick(self._rec.staging.num_streams * T, closed):
                self._rec.commit()

    def commit_if_idle(self) -> bool:
        """The idle committer's call: commit if the clock says so; False if busy appending.

        A failure is kept and raised by the writer's next call.
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if not self._closed and self._rec.schema is not None and self.clock.pending > 0:
                self._rec.submit(True)
        except (StoreWriteError, OSError) as err:
            self._error = err
            if not isinstance(err, StoreWriteError):  # an I/O error is counted by check_io
                self._rec.note_error(err)
        finally:
            self._gate()  # a roll back's new capture too
            self._lock.release()
        return True

    def stats(self) -> dict[str, float | int | str | None]:
        """Health of this writer: a lock-free snapshot in the shape ``LoggerMonitor`` polls.

        Keys: ``steps`` (a ``[B]`` step counts B), ``steps_committed``, ``steps_pending``,
        ``episodes_committed`` (finished), ``bytes_written`` (committed rows,
        uncompressed), ``seconds_since_commit``, ``shards`` (1), ``errors`` (write errors
        met, each also raised) and ``last_error`` (its text, or None). Each count is
        exact at its moment; a monitor logs the numbers and drops the text.

        Examples:
            >>> import tempfile, torch
            >>> from tensordict import TensorDict
            >>> from trlrec import TrajectoryWriter
            >>> w = TrajectoryWriter(tempfile.mkdtemp() + "/run")
            >>> w.append(TensorDict(observation=torch.zeros(2), next=TensorDict(
            ...     observation=torch.ones(2), done=torch.tensor([True]))))
            >>> w.flush()
            >>> s = w.stats()
            >>> s["steps"], s["steps_committed"], s["episodes_committed"], s["last_error"]
            (1, 1, 1, None)
            >>> w.close()
        """
        return self._rec.stats(self.num_transitions, self.clock.last)

    def flush(self) -> None:
        """Write staged steps and commit: everything appended so far survives a crash."""
        self._check_open()
        with self._lock:
            if self._rec.schema is not None:
                self._rec.submit(True)
                self._rec.drain()

    def forked(self) -> None:
        """This process was just forked from the writer's: leave the shard to its owner.

        The copy in the child neither writes, commits nor removes anything (its staged
        steps are the parent's, which goes on with them); each call raises a
        :class:`~trlrec.errors.ClosedError` saying so, and ``close()`` does nothing.
        Called by the fork hook of :mod:`~trlrec.storage.commit_clock`, in the child,
        where no other thread exists (the lock is not taken: a thread of the parent
        may have held it).
        """
        self._closed = True
        self._error = None
        self._pending_force = None
        self._gate()

    def close(self) -> None:
        """Commit, end the open episodes (flagged as cut) and release the shard."""
        if self._closed:
            return
        IdleCommitter.get().discard(self)
        try:
            with self._lock:
                self._rec.finish()
        finally:
            self._closed = True
            self._gate()
            self._rec.release()

    def __repr__(self) -> str:
        shard = self.shard_path.name
        return f"TrajectoryWriter({str(self.path)!r}, shard={shard!r}, steps={self.num_steps})"
