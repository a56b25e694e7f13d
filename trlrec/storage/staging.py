"""The staging buffer: a few preallocated steps in RAM, filled with one fused copy per step.

Buffers are stream-major, ``[N, capacity, *shape]``: a stream's staged block is one
contiguous slice, compared and written to its chunk files without another copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from trlrec.storage.schema import Entry, Schema

__all__ = ["Stager"]


class Stager:
    """Holds up to ``capacity`` steps of a ``[*batch]`` recording, root and ``"next"`` leaves.

    The per-step destination views (:attr:`rows`, and :attr:`rows_aliased` without the
    root-state slots) are built once, so the writer stages a step with a single
    ``torch._foreach_copy_`` into ``rows[count]``, then sets ``alias``, ``force_new``
    and ``metas`` at ``count`` and increments it.
    """

    def __init__(self, schema: Schema, capacity: int, pin_memory: bool = False):
        self.capacity = capacity
        self.batch_shape = torch.Size(schema.batch_shape)
        self.num_streams = n = schema.num_streams
        # root-state entries first: a step whose root state is aliased copies a tail slice
        self.root_entries: list[Entry] = [e for e in schema.entries if e.role == "state"]
        self.root_entries += [e for e in schema.entries if e.role == "root"]
        self.num_state = sum(e.role == "state" for e in schema.entries)
        self.next_entries: list[Entry] = [e for e in schema.entries if e.role != "root"]
        self.entries = self.root_entries + self.next_entries
        # zeros, not empty: the pages are faulted in here, once, rather than inside the
        # step loop while the first blocks fill (measured -2.7 us a step over the first
        # 2000 steps of 84x84x3 pixels, whose staging buffer is 8 MiB)
        self.buffers = [
            torch.zeros((n, capacity, *e.shape), dtype=e.dtype, pin_memory=pin_memory)
            for e in self.entries
        ]
        # Per-step destination views, built once (with unbind: ~1 us a step and key).
        columns = [self._row_views(b, e) for b, e in zip(self.buffers, self.entries, strict=True)]
        self.rows = [list(row) for row in zip(*columns, strict=True)]
        # Steps whose root state is the previous step's "next" state (the same tensors,
        # unmodified) skip copying it: their root-state slots (the first) are left stale.
        self.rows_aliased = [row[self.num_state :] for row in self.rows]
        self.alias = bytearray(capacity)  # 1: the root state was not copied (aliased)
        self.force_new = torch.zeros(n, capacity, dtype=torch.bool)
        self.metas: dict[int, list[Any]] = {}
        self.count = 0
        # the native capture (capture.py) and this buffer's first row in it, if it applies
        self.capture: Callable[[dict | None, dict | None, int, bool], int] | None = None
        self.base = 0
        self.idle = threading.Event()  # set while no background job is writing this buffer
        self.idle.set()
        self.written_at = 0  # with native writes: this buffer's are done at that job count

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
        n = self.count
        return [b[:, :n] for b in self.buffers]

    def clear(self) -> None:
        """Forget the staged steps (after they were written)."""
        self.count = 0
        self.force_new.zero_()
        self.metas.clear()
