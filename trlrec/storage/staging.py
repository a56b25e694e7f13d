"""Staging: a few preallocated steps in RAM, each step copied in with one call.

Buffers are stream-major, ``[N, capacity, *shape]``: a stream's staged block is one
contiguous slice, compared and written to its chunk files without another copy.
:class:`StepStaging` owns the buffers (two, when an I/O thread writes one while the
step loop fills the other) and picks, once, how a step is copied in: the native
capture (``_capture.c``: find, check and ``memcpy`` every leaf in one call) where it
is built and applies, else torch's ``_foreach_copy_``. Both store the same bytes; a
step the native capture cannot take (a mismatch, another device, a view) goes to the
Python copy, which copies it or raises the error naming the key.

The native capture also takes the writer's whole step (:meth:`StepStaging.capture`'s
``append``: checked, copied and counted for the commit clock in one call) and then owns
the count of staged steps; without it a small Python object holds the count.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from trlrec.native import extension
from trlrec.storage.checks import StepChecker, fast_get, raise_mismatch, raise_missing
from trlrec.storage.schema import Entry, Schema
from trlrec.storage.stream import SMALL_ROW

__all__ = ["StagingLock", "Stager", "StepStaging"]


class _Rows:
    """The staged-step count of the current buffer, where no native capture owns it."""

    __slots__ = ("base", "count")

    def __init__(self) -> None:
        self.base = 0  # the current buffer's first row
        self.count = 0


_STAGE_BYTES = 8 * 2**20  # a staging buffer holds about this much (at most 1024 steps):
_STAGE_STEPS = 1024  # a block costs ~0.5-1 ms of fixed work, spread over its steps


class Stager:
    """Holds up to ``capacity`` steps of a ``[*batch]`` recording, root and ``"next"`` leaves.

    The per-step destination views (:attr:`rows`, and :attr:`rows_aliased` without the
    root-state slots) are built once, so a step is staged with a single copy into
    ``rows[count]``.
    """

    def __init__(
        self, schema: Schema, capacity: int, entries: list[Entry], num_state: int, base: int
    ):
        self.capacity = capacity
        self.batch_shape = torch.Size(schema.batch_shape)
        n = schema.num_streams
        # zeros, not empty: the pages are faulted in here, once, not in the step loop
        self.buffers = [torch.zeros((n, capacity, *e.shape), dtype=e.dtype) for e in entries]
        columns = [self._row_views(b, e) for b, e in zip(self.buffers, entries, strict=True)]
        self.rows = [list(row) for row in zip(*columns, strict=True)]
        # steps whose root state is the previous step's "next" state (the same tensors,
        # unmodified) skip copying it: their root-state slots (the first) are left stale
        self.rows_aliased = [row[num_state:] for row in self.rows]
        self.alias = bytearray(capacity)  # 1: the root state was not copied (aliased)
        self.force_new = torch.zeros(n, capacity, dtype=torch.bool)
        self.metas: dict[int, list[Any]] = {}
        self.base = base  # this buffer's first row in the native capture's rows
        self.written_at = 0  # the I/O token after which this buffer's writes are done
        self.rows_count: Any = _Rows()  # shared by the stagers: see count

    @property
    def count(self) -> int:
        """Steps staged in this buffer (only the current one holds any)."""
        rows = self.rows_count
        return rows.count if rows.base == self.base else 0

    @count.setter
    def count(self, n: int) -> None:
        if self.rows_count.base == self.base:
            self.rows_count.count = n

    def _row_views(self, buffer: torch.Tensor, entry: Entry) -> tuple[torch.Tensor, ...]:
        """``buffer``'s steps as views of the step's full shape (``[*batch, *shape]``)."""
        if not self.batch_shape:
            return buffer[0].unbind(0)
        if len(self.batch_shape) == 1:
            return buffer.unbind(1)
        shape = torch.Size((*self.batch_shape, *entry.shape))
        return tuple(buffer[:, i].view(shape) for i in range(self.capacity))

    def columns(self) -> list[torch.Tensor]:
        """The staged leaves as ``[N, n, *shape]`` tensors (N streams, n steps)."""
        return [b[:, : self.count] for b in self.buffers]

    def clear(self) -> None:
        """Forget the staged steps (after they were written)."""
        self.count = 0
        self.force_new.zero_()
        self.metas.clear()


class StepStaging:
    """The staging buffers of a recording and the copy of a step into them.

    Args:
        schema: the recording's schema.
        capacity: steps per buffer (None: up to 1024, ~8 MiB).
        buffers: 1, or 2 to fill one while the other is written.
    """

    def __init__(self, schema: Schema, capacity: int | None, buffers: int):
        if capacity is None:
            row = max(1, schema.row_bytes()) * schema.num_streams
            capacity = max(1, min(_STAGE_STEPS, _STAGE_BYTES // row))
        self.schema = schema
        self.num_streams = schema.num_streams
        # root-state entries first: a step whose root state is aliased copies a tail slice
        root = [e for e in schema.entries if e.role == "state"]
        root += [e for e in schema.entries if e.role == "root"]
        self.num_state = sum(e.role == "state" for e in schema.entries)
        self.root_entries = root
        self.next_entries = [e for e in schema.entries if e.role != "root"]
        self.entries = root + self.next_entries
        self.checker = ck = StepChecker(schema, root, self.next_entries)
        self.stagers = [
            Stager(schema, capacity, self.entries, self.num_state, k * capacity)
            for k in range(buffers)
        ]
        self.current = self.stagers[0]
        nr = len(root)
        self.done_slots = [i for i, e in enumerate(self.entries) if e.is_done and i >= nr]
        # one-element done flags (an unbatched env's [1]) are read with .item(): 0.2 us, not 2
        scalar = all(ck.next_slots[i - nr][1].numel() == 1 for i in self.done_slots)
        self._done_scalar = scalar
        self._done_item = self.done_slots[0] if len(self.done_slots) == 1 and scalar else None
        self._next_state = [nr + i for i, e in enumerate(self.next_entries) if e.role == "state"]
        self._plan = self._native_plan()
        rows = _Rows() if self._plan is None else self._plan
        for st in self.stagers:
            st.rows_count = rows
        self._rows = rows
        # aliasing on the Python path pays off for big states (pixels) only
        big = any(e.role == "state" and e.nbytes > SMALL_ROW for e in self.entries)
        self._alias = self._plan is None and big
        self._prev_next: list[tuple[torch.Tensor, int]] | None = None

    @property
    def native(self) -> bool:
        """Whether steps are copied by the native capture."""
        return self._plan is not None

    @property
    def capture(self) -> Any:
        """The native capture of the writer's steps, or None (the Python path).

        ``append(root, next_)`` checks a plain step, copies it into the current buffer's
        next row and counts it for the commit clock, in one call: 0 done with it; 1 it
        ends an episode, 2 the buffer is full or the clock must see it (the writer acts);
        -1 nothing was staged (the writer's Python path stages it or raises the error).
        Its ``count`` is the current buffer's; ``take``/``arm``/``pending``/``ticked`` are
        the clock's counter (:meth:`~trlrec.storage.commit_clock.CommitClock.attach`);
        ``hold``/``release``/``blocked`` keep steps on the Python path (the writer's).
        """
        return self._plan

    def swap(self) -> Stager:
        """Stage into the other buffer (with two); the one to fill next."""
        if len(self.stagers) == 2:
            a, b = self.stagers
            self.current = b if self.current is a else a
            self._rows.base = self.current.base
        return self.current

    def forget(self) -> None:
        """The next step's root state is copied, not aliased (after a reset or a batch)."""
        self._prev_next = None
        if self._plan is not None:
            self._plan.forget()

    def full(self) -> bool:
        """Whether the current buffer is full (it is to be written)."""
        return self.current.count >= self.current.capacity

    def stage(
        self,
        root: TensorDictBase,
        next_: TensorDictBase,
        force: torch.Tensor | None,
        metas: list[Any] | None,
    ) -> bool:
        """Copy a step into the current buffer's next row; whether a done flag is set.

        Args:
            root: the step's root.
            next_: its "next".
            force: the streams where a new episode starts at this step (a reset), or None.
            metas: the checked episode metadata of each stream, or None.

        Raises:
            SchemaError: a key of the schema is missing or extra, or a shape or dtype differs.
        """
        st = self.current
        rows = self._rows
        i = rows.count
        self.checker.check_step_keys(root, next_)
        done = -1
        if self._plan is not None:
            rtop = root._tensordict if type(root) is TensorDict else None  # plain: a dict
            ntop = next_._tensordict if type(next_) is TensorDict else None
            done = self._plan.step(rtop, ntop, st.base + i, force is None)
        if done < 0:
            done = self._stage_python(root, next_, st, force is not None, i)
        if force is not None:
            st.force_new[:, i] = force
        if metas is not None:
            st.metas[i] = metas
        rows.count = i + 1
        if done:
            self.forget()
        return bool(done)

    def _stage_python(
        self, root: TensorDictBase, next_: TensorDictBase, st: Stager, force: bool, i: int
    ) -> bool:
        """Find, check and copy a step's leaves into row ``i`` with torch; whether it is done."""
        ck = self.checker
        # TorchRL's step_mdp hands the next state over as the following root: the same
        # tensors, unmodified (version counters), within an episode are not restaged.
        prev = None if force else self._prev_next
        leaves: list[torch.Tensor] = []
        aliased = prev is not None
        if prev is not None:
            for (key, _, _), (t, version) in zip(ck.root_state, prev, strict=True):
                v = fast_get(root, key)
                if v is not t or v._version != version:
                    aliased = False
                    leaves.clear()
                    break
                leaves.append(v)
        for td, slots, where in (
            (root, ck.root_rest if aliased else ck.root_slots, "root"),
            (next_, ck.next_slots, "next"),
        ):
            for key, shape, dtype in slots:
                v = fast_get(td, key)
                if v is None:
                    raise_missing(where, key, shape, dtype)
                if not isinstance(v, torch.Tensor) or v.dtype is not dtype or v.shape != shape:
                    raise_mismatch(where, key, shape, dtype, v)
                leaves.append(v)
        rows = st.rows_aliased[i] if aliased else st.rows[i]
        with torch.no_grad():  # a policy's outputs may require grad: record their values
            torch._foreach_copy_(
                rows, leaves[self.num_state :] if aliased else leaves, non_blocking=True
            )
        st.alias[i] = aliased
        slot = self._done_item
        if slot is not None:
            done = bool(leaves[slot].item())
        else:
            done = any(
                leaves[j].item() if self._done_scalar else leaves[j].any() for j in self.done_slots
            )
        if self._alias and not done:
            self._prev_next = [(leaves[j], leaves[j]._version) for j in self._next_state]
        else:
            self._prev_next = None
        return done

    def done(self, cols: list[torch.Tensor], n: int) -> torch.Tensor:
        """Whether a done flag ended each transition: ``[n]``, or ``[N, n]`` for staged steps."""
        lead = cols[0].shape[: cols[0].dim() - len(self.entries[0].shape)]
        done = torch.zeros(lead, dtype=torch.bool)
        for i in self.done_slots:
            done |= cols[i].reshape(*lead, -1).any(-1)
        return done

    def _native_plan(self) -> Any:
        """The native capture of a step into the stagers' rows, or None where it does not apply.

        It applies when no dtype is complex (a conjugate view's bytes are not its
        values), each row's destination views are contiguous and the done flags are
        bool; nested keys are found through their sub-TensorDicts. Stager ``k``'s row
        ``i`` is the plan's row ``k * capacity + i``. ``plan.step(root, next, row,
        may_alias)`` returns 1/0 (done or not) or -1 (take the Python path);
        ``plan.append`` is :attr:`capture`'s.
        """
        native = extension("capture")
        ck = self.checker
        slots = ck.root_slots + ck.next_slots
        if native is None:
            return None
        if any(dtype.is_complex for _, _, dtype in slots):
            return None
        if any(slots[i][2] is not torch.bool for i in self.done_slots):
            return None
        rows = [row for st in self.stagers for row in st.rows]
        if not all(v.is_contiguous() for row in rows for v in row):
            return None
        nr = len(ck.root_slots)
        next_index = {key: nr + j for j, (key, _, _) in enumerate(ck.next_slots)}
        sides = [0] * nr + [1] * len(ck.next_slots)
        # nested keys: each sub-tensordict prefix once, after its parent (checker order)
        prefix_at = {(side, prefix): k for k, (side, prefix, _) in enumerate(ck.nested)}
        nested = [
            (side, prefix_at.get((side, prefix[:-1]), -1), prefix[-1], count)
            for side, prefix, count in ck.nested
        ]
        keys = [key for key, _, _ in slots]
        parents = [prefix_at.get((s, k[:-1]), -1) for s, k in zip(sides, keys, strict=True)]
        plan = native.Plan(
            torch.Tensor,
            [key[-1] for key in keys],
            sides,
            [dtype for _, _, dtype in slots],
            [shape for _, shape, _ in slots],
            [shape.numel() * dtype.itemsize for _, shape, dtype in slots],
            [[v.data_ptr() for v in row] for row in rows],
            self.done_slots,
            [next_index[key] for key, _, _ in ck.root_state],
            [st.alias for st in self.stagers],
            [st.buffers for st in self.stagers],
            parents,
            nested,
        )
        plan.bind(TensorDict, ck.root_top, ck.next_top, self.current.capacity)
        return plan


class StagingLock:
    """A writer's lock, which also holds the native capture: no step is staged meanwhile.

    The capture's steps do not take the lock (at ~0.1 us a step): held, they take the
    writer's locked path instead. Holding fails while a step is half-staged (by another
    thread: a leaf's attribute ran Python code); it then finishes first.

    Args:
        rec: what holds the capture (its ``capture`` attribute, None without one; a roll
            back replaces it).
    """

    __slots__ = ("_lock", "_rec")

    def __init__(self, rec: Any) -> None:
        self._lock = threading.Lock()
        self._rec = rec

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock and hold the capture; False if not ``blocking`` and busy."""
        if not self._lock.acquire(blocking):
            return False
        capture = self._rec.capture
        while capture is not None and not capture.hold():
            if not blocking:
                self._lock.release()
                return False
            time.sleep(0)
        return True

    def release(self) -> None:
        """Release the capture (the current one: a roll back made a new one) and the lock."""
        capture = self._rec.capture
        if capture is not None:
            capture.release()
        self._lock.release()

    def __enter__(self) -> None:  # acquire(), one call less (the Python path's every step)
        self._lock.acquire()
        capture = self._rec.capture
        while capture is not None and not capture.hold():
            time.sleep(0)

    def __exit__(self, *exc: object) -> None:
        self.release()
