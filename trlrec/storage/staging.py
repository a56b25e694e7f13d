"""The staging buffer: a few preallocated steps in RAM, filled with one fused copy per step.

State columns (stored once per timestep) are packed side by side in one byte row,
so the continuity check of a whole block (is each root state the previous
``"next"`` state?) is a single comparison instead of one per key.
"""

from __future__ import annotations

from typing import Any

import torch

from trlrec.storage.schema import Entry, Key, Schema

__all__ = ["Stager", "StateLayout"]

_ALIGN = 16


def _nbytes(e: Entry) -> int:
    return torch.Size(e.shape).numel() * torch.empty((), dtype=e.dtype).element_size()


class StateLayout:
    """Where each state column sits in a packed byte row (16-byte aligned, zero padded)."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.offsets: list[int] = []
        off = 0
        for e in entries:
            self.offsets.append(off)
            off += -(-_nbytes(e) // _ALIGN) * _ALIGN
        self.row_bytes = max(off, _ALIGN)

    def views(self, packed: torch.Tensor) -> dict[Key, torch.Tensor]:
        """Typed views ``[..., *shape]`` of the columns in ``packed`` (``[..., row_bytes]``)."""
        lead = packed.shape[:-1]
        out = {}
        for e, off in zip(self.entries, self.offsets, strict=True):
            part = packed[..., off : off + _nbytes(e)]
            out[e.key] = (
                part.view(e.dtype).view(torch.Size((*lead, *e.shape)))
                if part.shape[-1]
                else torch.empty((*lead, *e.shape), dtype=e.dtype)
            )
        return out

    def pack(self, columns: dict[Key, torch.Tensor]) -> torch.Tensor:
        """The packed rows of per-key ``[n, *shape]`` columns."""
        n = next(iter(columns.values())).shape[0]
        packed = torch.zeros((n, self.row_bytes), dtype=torch.uint8)
        for key, view in self.views(packed).items():
            view.copy_(columns[key])
        return packed


def words(packed: torch.Tensor) -> torch.Tensor:
    """View packed byte rows as int64 words (8x fewer elements to compare)."""
    return packed.view(torch.int64)


class Stager:
    """Holds up to ``capacity`` steps of a ``[*batch]`` recording, root and ``"next"`` leaves.

    Buffers are ``[capacity, *batch, *shape]``; the per-step destination views are
    built once, so staging a step is a single ``torch._foreach_copy_``.
    """

    def __init__(self, schema: Schema, capacity: int, pin_memory: bool = False):
        self.capacity = capacity
        self.batch_shape = torch.Size(schema.batch_shape)
        self.num_streams = n = schema.num_streams
        self.root_entries: list[Entry] = [e for e in schema.entries if e.role != "next"]
        self.next_entries: list[Entry] = [e for e in schema.entries if e.role != "root"]
        self.entries = self.root_entries + self.next_entries
        self.layout = StateLayout([e for e in schema.entries if e.role == "state"])
        size = (capacity, n, self.layout.row_bytes)
        self.packed_root = torch.zeros(size, dtype=torch.uint8, pin_memory=pin_memory)
        self.packed_next = torch.zeros(size, dtype=torch.uint8, pin_memory=pin_memory)
        root_views = self.layout.views(self.packed_root)
        next_views = self.layout.views(self.packed_next)
        self.buffers = []
        for i, e in enumerate(self.entries):
            if e.role == "state":
                view = (root_views if i < len(self.root_entries) else next_views)[e.key]
            else:
                view = torch.empty((capacity, n, *e.shape), dtype=e.dtype, pin_memory=pin_memory)
            self.buffers.append(view)
        self._rows = [
            [
                b[i].view(torch.Size((*self.batch_shape, *e.shape)))
                for b, e in zip(self.buffers, self.entries, strict=True)
            ]
            for i in range(capacity)
        ]
        self.force_new = torch.zeros(capacity, n, dtype=torch.bool)
        self.metas: dict[int, list[Any]] = {}
        self.count = 0

    @property
    def full(self) -> bool:
        """Whether no step fits any more."""
        return self.count >= self.capacity

    def put(self, leaves: list[torch.Tensor], force_new: torch.Tensor | None, metas: Any) -> None:
        """Stage one step's leaves (in ``entries`` order)."""
        i = self.count
        torch._foreach_copy_(self._rows[i], leaves, non_blocking=True)
        if force_new is not None:
            self.force_new[i] = force_new
        if metas is not None:
            self.metas[i] = metas
        self.count = i + 1

    def columns(self) -> list[torch.Tensor]:
        """The staged leaves as ``[n, N, *shape]`` tensors (N streams), time-major."""
        n = self.count
        return [b[:n] for b in self.buffers]

    def clear(self) -> None:
        """Forget the staged steps (after they were written)."""
        self.count = 0
        self.force_new.zero_()
        self.metas.clear()
