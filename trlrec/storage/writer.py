"""TrajectoryWriter: append rollout transitions to a memory-mapped, crash-safe store."""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from trlrec.closing import Closeable
from trlrec.errors import ClosedError, ConfigError, SchemaError
from trlrec.storage.capture import native_capture
from trlrec.storage.checks import StepChecker, fast_get, raise_mismatch, raise_missing
from trlrec.storage.chunks import ChunkSeries, PendingWrite, run_writes
from trlrec.storage.dataset import check_metadata, create_dataset, new_shard_dir
from trlrec.storage.fdcache import FdCache
from trlrec.storage.jsonio import read_json, write_json_atomic
from trlrec.storage.layout import (
    COMMIT_FILE,
    FLAG_CUT,
    FORMAT_VERSION,
    SCHEMA_FILE,
    SHARD_FILE,
    STREAMS_DIR,
)
from trlrec.storage.native import extension
from trlrec.storage.native_io import NativeWrites
from trlrec.storage.schema import Key, Schema
from trlrec.storage.shard import ShardFiles, read_commit
from trlrec.storage.staging import Stager
from trlrec.storage.stream import SMALL_ROW, Block, Episode, StreamWriter
from trlrec.storage.worker import BlockWorker

__all__ = ["TrajectoryWriter"]

_CHUNK_BYTES = 128 * 2**20
_OPEN_WRITERS: weakref.WeakSet[TrajectoryWriter] = weakref.WeakSet()


# A forked child inherits the parent's open writers but not their I/O thread: it must
# neither close nor commit them at its exit (the shard is the parent's).
os.register_at_fork(after_in_child=_OPEN_WRITERS.clear)


@atexit.register
def _close_open_writers() -> None:
    """Commit and close writers still open when the interpreter exits (a forgotten close())."""
    for writer in list(_OPEN_WRITERS):
        try:
            writer.close()
        except Exception:  # at exit there is no caller left to raise to: log it
            logging.getLogger(__name__).exception("closing %r at exit failed", writer)


# Staged bytes and steps per block: a block costs ~0.5-1 ms of fixed work (episode
# logic, one write per key), so blocks of several hundred steps keep it under ~2 us a step.
_STAGE_BYTES = 8 * 2**20
_STAGE_STEPS = 1024


class TrajectoryWriter(Closeable):
    """Writes transitions of TorchRL rollouts to a store directory.

    A transition is a rollout row: root keys (observation, action, done flags...)
    and a ``"next"`` sub-tensordict. Steps are staged in a small preallocated
    buffer and written to memory-mapped chunks as slices; data becomes durable
    against a crash at each commit (episode ends, every ``commit_every_steps``
    transitions and ``commit_every_seconds``, ``flush()`` and ``close()``).

    Args:
        path: the store directory; created if missing. An existing store is
            appended to (a new shard), never overwritten.
        metadata: JSON-serialisable dict stored once with the recording.
        shard: name of the shard to write. ``None`` creates a new shard; the
            name of an existing shard continues it after its last commit.
        chunk_rows: rows per chunk (default: about 128 MiB of data, at most 65536).
        stage_steps: steps staged in RAM between writes (default: up to 1024, ~8 MiB).
        commit_every_steps: commit after this many transitions.
        commit_every_seconds: commit when this much time passed since the last one.
        commit_on_done: commit at the step where an episode ends (but no more often
            than every ``min_commit_interval`` seconds; a later step commits it).
        min_commit_interval: the least time between two episode-end commits, so a
            batch of 16 short-episode envs does not commit at every step.
        durable: fsync data, index and commit record at each commit (survives
            power loss, not only a killed process).
        episode_key: a root key whose change starts a new episode (collectors'
            trajectory ids), used when present.
        background: do the chunk writes and the commits on an I/O thread, so the
            step loop does not wait for the disk (on by default). The
            step loop keeps the checks, staging and episode logic. An I/O error is
            raised by the next ``append``/``flush``/``close``, after the writer rolled
            back to its last commit (what came after it is dropped; ``flush()`` waits
            for the disk, so everything flushed is kept). ``False`` writes and commits
            in the calling thread, raising an error at the call that hit it.
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
        episode_key: Key | str | None = ("collector", "traj_ids"),
        specs: Any = None,
    ):
        for name, value in (
            ("chunk_rows", chunk_rows),
            ("stage_steps", stage_steps),
            ("commit_every_steps", commit_every_steps),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not commit_every_seconds > 0:
            raise ConfigError(f"commit_every_seconds must be > 0, got {commit_every_seconds!r}")
        if not min_commit_interval >= 0:
            raise ConfigError(f"min_commit_interval must be >= 0, got {min_commit_interval!r}")
        self.path = Path(path)
        self.metadata = check_metadata(metadata)
        self._chunk_rows = chunk_rows
        self._stage_steps = stage_steps
        self._commit_steps = commit_every_steps
        self._commit_seconds = float(commit_every_seconds)
        self._commit_on_done = commit_on_done
        self._min_commit_interval = float(min_commit_interval)
        self._background = background
        self._worker: BlockWorker | None = None
        self._native: NativeWrites | None = None  # writes and commits on the native thread
        self._fds = FdCache()
        self._io_fds = FdCache()  # used by the I/O thread only (closed once it is idle)
        self._durable = durable
        self._episode_key = (episode_key,) if isinstance(episode_key, str) else episode_key
        create_dataset(self.path, self.metadata)
        if specs is not None:  # the env's specs (env.specs), see trlrec.specs
            from trlrec.specs import write_specs

            write_specs(self.path, specs, durable=durable)
        self.shard_path = new_shard_dir(self.path, shard)
        self._files = ShardFiles(self.shard_path, durable=durable)
        self.schema: Schema | None = None
        self._streams: list[StreamWriter] = []
        self._stager: Stager | None = None
        self._pending_force: torch.Tensor | None = None
        self._since_commit = 0
        self._last_commit = time.monotonic()
        # when a commit is due by time: commit_every_seconds after the last one, or
        # min_commit_interval after it once an episode has ended (see _commit_due)
        self._commit_deadline = self._last_commit + self._commit_seconds
        self._last_ids: torch.Tensor | None = None
        self._closed = False
        self.num_steps = 0
        try:
            self._open_shard()
        except BaseException:
            self._files.release()
            raise
        _OPEN_WRITERS.add(self)

    @property
    def background(self) -> bool:
        """Whether blocks are written on a background thread."""
        return self._background

    # ----------------------------------------------------------------- set-up
    def _open_shard(self) -> None:
        write_json_atomic(
            self.shard_path / SHARD_FILE,
            {"version": FORMAT_VERSION, "metadata": self.metadata, "pid": os.getpid()},
            durable=self._durable,
        )
        commit_path = self.shard_path / COMMIT_FILE
        if not commit_path.exists():
            shutil.rmtree(self.shard_path / STREAMS_DIR, ignore_errors=True)
            return
        commit = read_commit(commit_path)
        schema = Schema.from_json(read_json(self.shard_path / SCHEMA_FILE), self.shard_path)
        self._chunk_rows = commit["chunk_rows"]
        self._setup(schema)
        self._resume(commit)

    def _resume(self, commit: dict[str, Any]) -> None:
        """Continue the streams after ``commit``; its open episodes end there (cut)."""
        commit_path = self.shard_path / COMMIT_FILE
        self._files.resume(commit)
        if len(commit["streams"]) != len(self._streams):
            raise SchemaError(
                f"{str(commit_path)!r} lists {len(commit['streams'])} streams, its schema "
                f"{len(self._streams)}"
            )
        for stream, (next_row, transitions, start, steps, first) in zip(
            self._streams, commit["streams"], strict=True
        ):
            # Continue on a fresh chunk: anything past the commit is a torn tail.
            chunk = math.ceil(next_row / self._chunk_rows)
            stream.chunks.discard_from(chunk)
            stream.next_row = chunk * self._chunk_rows
            stream.transitions = transitions
            if start >= 0:
                meta = commit["open_meta"].get(str(stream.index))
                self._files.add_episode(Episode(stream.index, start, first, steps, FLAG_CUT, meta))
        self._commit(sync=True)

    def _setup(self, schema: Schema) -> None:
        self.schema = schema
        row_bytes = max(1, schema.row_bytes())
        if self._chunk_rows is None:
            self._chunk_rows = max(16, min(2**16, _CHUNK_BYTES // row_bytes))
        n = schema.num_streams
        stage = self._stage_steps or max(1, min(_STAGE_STEPS, _STAGE_BYTES // (row_bytes * n)))
        # a second buffer to stage into while the I/O thread writes the first
        self._stagers = [Stager(schema, stage) for _ in range(2 if self._background else 1)]
        self._stager = self._stagers[0]
        self._entries = self._stager.entries
        self._root_entries = self._stager.root_entries
        self._next_entries = self._stager.next_entries
        if self._background and self._worker is None:
            self._worker = BlockWorker(f"trlrec-writer-{self.shard_path.name}")
            native = extension("pwrite")
            if native is not None:  # the chunk writes and commits go there; the worker idles
                self._native = NativeWrites(native.Writer())
        root = self.shard_path / STREAMS_DIR
        self._streams = [
            StreamWriter(b, ChunkSeries(root / str(b), schema, self._chunk_rows, self._fds), schema)
            for b in range(n)
        ]
        entries = self._entries
        self._checker = StepChecker(schema, self._root_entries, self._next_entries)
        nr = len(self._root_entries)
        self._done_slots = [i for i, e in enumerate(entries) if e.is_done and i >= nr]
        # one-element done flags (an unbatched env's [1]) read with .item(): 0.2 us, not 2
        next_shapes = [shape for _, _, shape, _ in self._checker.next_slots]
        self._done_scalar = all(next_shapes[i - nr].numel() == 1 for i in self._done_slots)
        self._id_slot = next(
            (i for i, e in enumerate(self._root_entries) if e.key == self._episode_key), None
        )
        self._check_keys_at = 0
        self._next_state_idx = [nr + i for i, e in enumerate(entries[nr:]) if e.role == "state"]
        self._plan = native_capture(self._stagers, self._checker, self._done_slots)
        for k, st in enumerate(self._stagers):
            st.capture = None if self._plan is None else self._plan.step
            st.base = k * st.capacity
        # Aliasing (not restaging a root state that is the previous "next" state) pays
        # off on the Python path for big states (pixels); small ones cost less to copy
        # than to track. The native capture aliases states itself.
        big = any(e.role == "state" and e.nbytes > SMALL_ROW for e in entries)
        self._alias = self._plan is None and big
        # the one done flag of an unbatched env, read with a single .item()
        single = len(self._done_slots) == 1 and self._done_scalar
        self._done_item = self._done_slots[0] if single else None
        self._prev_next: list[tuple[torch.Tensor, int]] | None = None

    def _init_schema(self, root: TensorDictBase, next_: TensorDictBase) -> None:
        schema = Schema.from_transition(root, next_)
        path = self.shard_path / SCHEMA_FILE
        write_json_atomic(path, schema.to_json(), durable=self._durable)
        self._setup(schema)

    # -------------------------------------------------------------- validation
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the writer of {str(self.shard_path)!r} is closed; open a new one")

    # ------------------------------------------------------------------ append
    def append(
        self, step: TensorDictBase, *, episode_metadata: dict | Sequence[dict | None] | None = None
    ) -> None:
        """Append one transition: a rollout row with root keys and ``"next"``.

        Args:
            step: unbatched, or ``[B]`` for a batched env (one stream per sub-env).
            episode_metadata: a dict (per stream: a sequence) to attach to the
                episode this transition belongs to; the last one given is kept.

        Raises:
            SchemaError: a key, shape or dtype differs from the recording's schema.
        """
        self._check_open()
        if not isinstance(step, TensorDictBase):
            raise SchemaError(f"append takes a TensorDict, got {type(step).__name__}")
        next_ = step.get("next", None)
        if not isinstance(next_, TensorDictBase):
            raise SchemaError(
                "the step has no 'next' sub-tensordict; append takes a rollout row (root keys "
                "plus 'next'), as env.rollout(..., break_when_any_done=False) returns"
            )
        self.append_step(step, next_, episode_metadata)

    def append_transition(
        self,
        root: TensorDictBase,
        next_: TensorDictBase,
        *,
        episode_metadata: dict | Sequence[dict | None] | None = None,
    ) -> None:
        """Append one transition given as its two parts, as a transform's ``_step`` sees them.

        ``root`` holds the step's inputs (observation, action...; a ``"next"`` entry
        in it is ignored) and ``next_`` its outputs. Same rules as :meth:`append`.
        """
        self._check_open()
        if not isinstance(root, TensorDictBase) or not isinstance(next_, TensorDictBase):
            raise SchemaError(
                f"append_transition takes two TensorDicts, got {type(root).__name__} and "
                f"{type(next_).__name__}"
            )
        self.append_step(root, next_, episode_metadata)

    def append_step(
        self, root: TensorDictBase, next_: TensorDictBase, episode_metadata: Any = None
    ) -> None:
        """:meth:`append_transition` for a transform's ``_step``: no argument checks.

        The recorders' hot path (TorchRL passes TensorDicts); the step's keys, shapes
        and dtypes are checked as always. Finding, checking and staging the leaves is
        one function on purpose: inside TorchRL's step loop each Python call costs
        ~0.5 us, and this runs once per step (a split version measured ~2.5 us slower).
        """
        if self._closed:
            self._check_open()
        if self.schema is None:
            self._init_schema(root, next_)
        st = self._stager
        ck = self._checker
        # Extra top-level keys are caught every step (two len() calls); extra nested
        # keys at block starts, where the full key walk (~10 us) is amortised.
        if st.count == 0 and self._check_keys_at <= self.num_steps:
            ck.check_keys(root, next_)
            self._check_keys_at = self.num_steps + 16 * st.capacity
        rtop = root._tensordict if type(root) is TensorDict else None  # plain: a dict
        ntop = next_._tensordict if type(next_) is TensorDict else None
        rkeys = root.keys() if rtop is None else rtop
        nkeys = next_.keys() if ntop is None else ntop
        if len(rkeys) != ck.root_top + ("next" in rkeys) or len(nkeys) != ck.next_top:
            ck.check_keys(root, next_)  # an extra key; a missing one is named below
        force = self._pending_force
        i = st.count
        capture = st.capture
        # the native path (capture.py): 1/0 whether a done flag is set, -1 to do it here
        # (it aliases the root states as _stage_python does, unless a new episode is forced)
        done = -1 if capture is None else capture(rtop, ntop, st.base + i, force is None)
        if done < 0:
            done = self._stage_python(root, next_, rtop, ntop, st, ck, force, i)
        if episode_metadata is not None:
            episode_metadata = self._check_episode_metadata(episode_metadata)
        if force is not None:
            st.force_new[:, i] = force
            self._pending_force = None
        if episode_metadata is not None:
            st.metas[i] = episode_metadata
        st.count = i + 1
        self.num_steps += 1
        self._since_commit += 1
        if done:
            self._ended_by_done()
        # _commit_due(), inlined: a call costs ~1 us in TorchRL's step loop
        commit = (
            self._since_commit >= self._commit_steps or time.monotonic() >= self._commit_deadline
        )
        if commit or st.count >= st.capacity:
            self._submit(commit)

    def _ended_by_done(self) -> None:
        """A staged step ended an episode (append_step's, or the native lane's)."""
        self._prev_next = None
        self._episode_ended()

    def step_lane(self) -> Callable[[TensorDictBase, TensorDictBase], TensorDictBase] | None:
        """A native transform ``_step`` doing :meth:`append_step`, or None where not built.

        ``lane(root, next_)`` stages a plain step as :meth:`append_step` does, with the
        writer's bookkeeping, in one C call (``_capture.Lane``); any other step goes to
        :meth:`append_step` itself. It returns ``next_``. Valid once a step was appended.
        """
        native = extension("capture")
        st = self._stager
        if native is None or st is None or st.capture is None:
            return None
        ck = self._checker
        return native.Lane(self, TensorDict, self.append_step, ck.root_top, ck.next_top)

    def _stage_python(
        self,
        root: TensorDictBase,
        next_: TensorDictBase,
        rtop: dict | None,
        ntop: dict | None,
        st: Stager,
        ck: StepChecker,
        force: torch.Tensor | None,
        i: int,
    ) -> bool:
        """Find, check and copy a step's leaves into row ``i`` with torch; whether it is done."""
        # TorchRL's step_mdp hands the next state over as the following root: the same
        # tensors, unmodified (version counters), within an episode are not restaged.
        prev = self._prev_next if force is None else None
        leaves: list[torch.Tensor] = []
        aliased = prev is not None
        if aliased:
            for (name, key, _, _), (t, version) in zip(ck.root_state, prev, strict=True):
                v = rtop.get(name) if name is not None and rtop is not None else None
                if v is None:
                    v = fast_get(root, key)
                if v is not t or v._version != version:
                    aliased = False
                    leaves.clear()
                    break
                leaves.append(v)
        for td, top, slots, where in (
            (root, rtop, ck.root_rest if aliased else ck.root_slots, "root"),
            (next_, ntop, ck.next_slots, "next"),
        ):
            for name, key, shape, dtype in slots:
                v = top.get(name) if name is not None and top is not None else None
                if v is None:
                    v = fast_get(td, key)
                    if v is None:
                        raise_missing(where, key, shape, dtype)
                if v.dtype is not dtype or v.shape != shape:
                    raise_mismatch(where, key, shape, dtype, v)
                leaves.append(v)
        if aliased:
            torch._foreach_copy_(st.rows_aliased[i], leaves[st.num_state :], non_blocking=True)
        else:
            torch._foreach_copy_(st.rows[i], leaves, non_blocking=True)
        st.alias[i] = aliased
        slot = self._done_item
        if slot is not None:
            done = leaves[slot].item()
        else:
            done = any(
                leaves[j].item() if self._done_scalar else leaves[j].any() for j in self._done_slots
            )
        if self._alias and not done:
            self._prev_next = [(leaves[j], leaves[j]._version) for j in self._next_state_idx]
        return done

    def _check_episode_metadata(self, meta: Any) -> list[dict | None]:
        n = self.schema.num_streams
        metas = [meta] * n if isinstance(meta, dict) else list(meta)
        if len(metas) != n:
            raise SchemaError(
                f"episode_metadata has {len(metas)} entries, expected {n} (one per stream)"
            )
        return [check_metadata(m, "episode metadata") if m is not None else None for m in metas]

    def _commit_due(self) -> bool:
        """Whether to commit: every N steps, every S seconds, and after an episode end.

        After an episode end, no sooner than ``min_commit_interval`` after the last commit.
        """
        return self._since_commit >= self._commit_steps or time.monotonic() >= self._commit_deadline

    def _episode_ended(self) -> None:
        """An episode ended: with ``commit_on_done``, a commit is due once the interval is over."""
        if self._commit_on_done:
            self._commit_deadline = min(
                self._commit_deadline, self._last_commit + self._min_commit_interval
            )

    def _reset_commit_clock(self) -> None:
        self._since_commit = 0
        self._last_commit = time.monotonic()
        self._commit_deadline = self._last_commit + self._commit_seconds

    def _submit(self, commit: bool) -> None:
        """Write the staged steps as a block (and commit); stage into the other buffer.

        With the I/O thread, the block's writes and the commit are queued to it and
        the next steps go to the other staging buffer, once the thread is done with it.
        """
        self._check_io()
        st = self._stager
        try:
            self._write_staged(st)
            if commit:
                self._commit()
        finally:
            st.clear()
        worker = self._worker
        if worker is not None:
            other = self._stagers[1] if st is self._stagers[0] else self._stagers[0]
            native = self._native
            if native is not None:
                st.written_at = native.submitted
                native.wait(other.written_at)
            else:
                st.idle.clear()
                worker.submit(st.idle.set, always=True)
                other.idle.wait()
            self._stager = other

    def _check_io(self) -> None:
        """Raise the I/O threads' error, if any, after rolling back to the last commit.

        A failed chunk write comes first: a commit after it fails for that reason.
        """
        if self._worker is None:
            return
        failed = None if self._native is None else self._native.check()
        if failed is None and self._worker.error is None:
            return
        self._worker.wait()  # a queued commit job fails too: none runs after the roll back
        err = self._worker.take_error()
        self._roll_back()
        raise failed or err

    def _wait_io(self) -> None:
        """Wait until the I/O threads have done everything submitted."""
        self._worker.wait()
        if self._native is not None:
            self._native.wait(self._native.submitted)

    def _roll_back(self) -> None:
        """Continue from the last commit on disk, as a writer reopening the shard would.

        What was recorded since is dropped (a failed write may have torn it); the
        episodes open at that commit end there, flagged as cut.
        """
        if self._native is not None:
            self._native.reset()  # its files closed: chunks past the commit are deleted
        self._fds.close()
        self._io_fds.close()  # the worker is idle: take_error() waited for it
        self._files.discard_pending()
        self._pending_force = None
        self._last_ids = None
        self._reset_commit_clock()
        self._setup(self.schema)
        commit_path = self.shard_path / COMMIT_FILE
        if commit_path.exists():
            self._resume(read_commit(commit_path))
        else:
            self._files.resume({"seq": 0, "episodes": 0, "episode_meta_bytes": 0})
            shutil.rmtree(self.shard_path / STREAMS_DIR, ignore_errors=True)

    def _drain(self) -> None:
        """Write everything staged and wait for the I/O: the caller may then write directly."""
        if self._stager is not None and self._stager.count:
            self._submit(False)
        if self._worker is not None:
            self._wait_io()
            self._check_io()

    def end_episode(self, streams: torch.Tensor | Sequence[bool] | None = None) -> None:
        """Mark that the next transition of these streams starts a new episode (a reset).

        Args:
            streams: a bool mask over the streams (the env's batch), or None for all.
        """
        self._check_open()
        if self.schema is None:
            return
        n = self.schema.num_streams
        mask = torch.ones(n, dtype=torch.bool) if streams is None else torch.as_tensor(streams)
        mask = mask.reshape(-1).to(torch.bool)
        if mask.numel() != n:
            raise SchemaError(f"end_episode got a mask of {mask.numel()} entries, expected {n}")
        self._pending_force = mask if self._pending_force is None else self._pending_force | mask

    # ------------------------------------------------------------------ extend
    def extend(
        self,
        batch: TensorDictBase,
        *,
        episode_metadata: Sequence[dict | Sequence[dict | None] | None] | None = None,
    ) -> None:
        """Append many transitions: ``[T]`` or ``[B, T]`` (time last, as collectors give).

        Args:
            batch: the transitions, time last.
            episode_metadata: ``None``, or one entry per time index ``t`` (``T`` of
                them), each as :meth:`append`'s argument for the transitions at ``t``.

        Raises:
            SchemaError: a key, shape or dtype differs from the recording's schema.
        """
        self._check_open()
        if not isinstance(batch, TensorDictBase) or batch.batch_dims < 1:
            raise SchemaError(
                "extend takes a TensorDict with a time dimension last ([T] or [B, T]), got "
                f"{type(batch).__name__} of batch size {getattr(batch, 'batch_size', None)}"
            )
        next_ = batch.get("next", None)
        if not isinstance(next_, TensorDictBase):
            raise SchemaError("the batch has no 'next' sub-tensordict; extend takes rollout rows")
        T = batch.batch_size[-1]
        if T == 0:
            return
        if self.schema is None:
            first = batch[..., 0]
            self._init_schema(first, first.get("next"))
        if tuple(batch.batch_size[:-1]) != self.schema.batch_shape:
            raise SchemaError(
                f"extend got batch size {tuple(batch.batch_size)}; the recording's steps have "
                f"batch size {self.schema.batch_shape}, so expected {(*self.schema.batch_shape, T)}"
            )
        self._checker.check_keys(batch, next_)
        metas = self._extend_metadata(episode_metadata, T)
        n = self.schema.num_streams
        cols = self._checker.columns(batch, next_)
        self._drain()
        self._prev_next = None
        if self._plan is not None:
            self._plan.forget()
        force = torch.zeros(n, T, dtype=torch.bool)
        if self._pending_force is not None:
            force[:, 0] = self._pending_force
            self._pending_force = None
        if self._id_slot is not None:
            ids = cols[self._id_slot].reshape(n, T, -1)
            force[:, 1:] |= (ids[:, 1:] != ids[:, :-1]).any(-1)
            if self._last_ids is not None:
                force[:, 0] |= (ids[:, 0] != self._last_ids).any(-1)
            self._last_ids = ids[:, -1].clone()
        closed = False
        step = max(1, self._stager.capacity * 16)
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            for b, stream in enumerate(self._streams):
                block_metas = {
                    t - t0: metas[t][b]
                    for t in range(t0, t1)
                    if metas[t] is not None and metas[t][b] is not None
                }
                closed |= self._write_block(
                    stream, [c[b, t0:t1] for c in cols], force[b, t0:t1], block_metas
                )
        self.num_steps += n * T
        self._since_commit += n * T
        if closed:
            self._episode_ended()
        if self._commit_due():
            self._commit()

    def _extend_metadata(self, metas: Any, T: int) -> list[list[dict | None] | None]:
        if metas is None:
            return [None] * T
        if isinstance(metas, dict | str) or len(metas) != T:
            raise SchemaError(
                f"extend's episode_metadata must hold one entry per time step ({T}), got "
                f"{type(metas).__name__}"
            )
        return [None if m is None else self._check_episode_metadata(m) for m in metas]

    # ------------------------------------------------------------------ writing
    def _write_block(
        self,
        stream: StreamWriter,
        cols: list[torch.Tensor],
        force: torch.Tensor,
        metas: dict,
        done: torch.Tensor | None = None,
        aliased: torch.Tensor | None = None,
        later: list[PendingWrite] | None = None,
    ) -> bool:
        nr = len(self._root_entries)
        roots, nexts = cols[:nr], cols[nr:]
        if done is None:
            done = self._done(cols, force.shape[0])
        block = Block(
            state_root={
                e.key: c
                for e, c in zip(self._root_entries, roots, strict=True)
                if e.role == "state"
            },
            state_next={
                e.key: c
                for e, c in zip(self._next_entries, nexts, strict=True)
                if e.role == "state"
            },
            root={
                e.key: c for e, c in zip(self._root_entries, roots, strict=True) if e.role == "root"
            },
            next={
                e.key: c for e, c in zip(self._next_entries, nexts, strict=True) if e.role == "next"
            },
            done=done,
            force_new=force,
            metas=metas,
            aliased=aliased,
        )
        episodes = stream.write_block(block, later)
        for ep in episodes:
            self._files.add_episode(ep)
        return bool(episodes)

    def _write_staged(self, st: Stager) -> None:
        if st.count == 0:
            return
        n = st.count
        cols = st.columns()
        done = self._done(cols, n)
        aliased = torch.tensor(list(st.alias[:n]), dtype=torch.bool)
        later: list[PendingWrite] | None = None if self._worker is None else []
        try:
            for b, stream in enumerate(self._streams):
                metas = {i: m[b] for i, m in st.metas.items() if m[b] is not None}
                self._write_block(
                    stream,
                    [c[b] for c in cols],
                    st.force_new[b, :n],
                    metas,
                    done[b],
                    aliased,
                    later,
                )
        finally:
            if later:  # also after a failure: the streams before it counted these rows
                if self._native is not None:
                    self._native.submit(later)
                else:
                    self._worker.submit(functools.partial(run_writes, later, self._io_fds))

    def _done(self, cols: list[torch.Tensor], n: int) -> torch.Tensor:
        """Whether a done flag ended each transition: ``[n]``, or ``[N, n]`` for staged steps."""
        lead = cols[0].shape[: cols[0].dim() - len(self._entries[0].shape)]
        done = torch.zeros(lead, dtype=torch.bool)
        for i in self._done_slots:
            done |= cols[i].reshape(*lead, -1).any(-1)
        return done

    def _commit(self, sync: bool = False) -> None:
        """Commit what was written; on the I/O thread unless ``sync`` (or ``durable``)."""
        self._reset_commit_clock()
        worker = self._worker
        if worker is not None and (sync or self._durable):
            self._wait_io()  # the queued writes first
            self._check_io()
        if self._durable:
            for s in self._streams:
                s.chunks.sync()
        streams, open_meta = [], {}
        for s in self._streams:
            ep = s.open
            if ep is None:
                streams.append([s.next_row, s.transitions, -1, -1, -1])
            else:
                streams.append(
                    [s.next_row, s.transitions, ep.start_row, ep.num_steps, ep.first_transition]
                )
                if ep.meta is not None:
                    open_meta[str(s.index)] = ep.meta
        if worker is None or sync or self._durable:
            self._files.commit(streams, open_meta, self._chunk_rows or 1)
        else:
            prepared = self._files.prepare_commit(streams, open_meta, self._chunk_rows or 1)
            if self._native is not None:
                self._native.commit(self._files, prepared)
            else:
                worker.submit(functools.partial(self._files.write_commit, prepared))

    def flush(self) -> None:
        """Write staged steps and commit: everything appended so far survives a crash."""
        self._check_open()
        if self.schema is None:
            return
        self._submit(True)
        if self._worker is not None:
            self._wait_io()
            self._check_io()

    def close(self) -> None:
        """Commit, end the open episodes (flagged as cut) and release the shard."""
        if self._closed:
            return
        try:
            if self.schema is not None:
                self._drain()
                for s in self._streams:
                    ep = s.cut()
                    if ep is not None:
                        self._files.add_episode(ep)
                self._commit(sync=True)
        finally:
            self._closed = True
            _OPEN_WRITERS.discard(self)
            if self._worker is not None:
                self._worker.stop()
            if self._native is not None:
                self._native.stop()
            self._fds.close()
            self._io_fds.close()
            self._files.release()
            if self.schema is None and not (self.shard_path / COMMIT_FILE).exists():
                shutil.rmtree(self.shard_path, ignore_errors=True)

    def __repr__(self) -> str:
        shard = self.shard_path.name
        return f"TrajectoryWriter({str(self.path)!r}, shard={shard!r}, steps={self.num_steps})"
