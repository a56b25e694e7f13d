"""Native step capture: the writer's per-step fast path, where the C extension is built.

``trlrec.storage._capture`` (``_capture.c``; see :mod:`trlrec.storage.native`) stages
a plain step in one call: it finds each leaf in the step's top-level dicts, checks it
is a contiguous CPU tensor of the schema's dtype and shape, and copies its bytes into
the staging row. Anything else falls back to the writer's Python path, which copies
with torch or raises the error naming the key; so the two paths store the same bytes.
In TorchRL's step loop it saves ~10 us a step (see BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import torch

from trlrec.storage.checks import StepChecker
from trlrec.storage.native import extension
from trlrec.storage.staging import Stager

__all__ = ["native_capture"]


def native_capture(stagers: list[Stager], checker: StepChecker, done_slots: list[int]) -> Any:
    """The native capture of a step into the stagers' rows, or None where it does not apply.

    It applies when every leaf is a top-level key of the step's root or ``"next"``,
    no dtype is complex (a conjugate view's bytes are not its values), each staging
    row's destination views are contiguous (an unbatched recording) and the done flags
    are bool. The plan's rows are the stagers' rows in order (stager ``k``'s row ``i``
    is ``k * capacity + i``); ``plan.step(root_dict, next_dict, row, may_alias)`` stages
    a step and returns 1 if a done flag is set, 0 if not, -1 to take the Python path;
    ``plan.forget()`` makes the next step's root states be copied, not aliased.

    Args:
        stagers: the staging buffers (the plan keeps them alive: it holds addresses).
        checker: the schema's slots in staging order (root, then ``"next"``).
        done_slots: the indices of the done flags among the slots.
    """
    native = extension("capture")
    slots = checker.root_slots + checker.next_slots
    if native is None or any(name is None for name, _, _, _ in slots):
        return None
    if any(dtype.is_complex for _, _, _, dtype in slots):
        return None
    if any(slots[i][3] is not torch.bool for i in done_slots):
        return None
    rows = [row for st in stagers for row in st.rows]
    if not all(v.is_contiguous() for row in rows for v in row):
        return None
    names = [name for name, _, _, _ in slots]
    nr = len(checker.root_slots)
    sides = [0] * nr + [1] * len(checker.next_slots)
    # root states are the stager's first slots; each one's "next" slot has the same key
    next_index = {key: nr + j for j, (_, key, _, _) in enumerate(checker.next_slots)}
    next_state = [next_index[key] for _, key, _, _ in checker.root_state]
    return native.Plan(
        torch.Tensor,
        names,
        sides,
        [dtype for _, _, _, dtype in slots],
        [shape for _, _, shape, _ in slots],
        [shape.numel() * dtype.itemsize for _, _, shape, dtype in slots],
        [[v.data_ptr() for v in row] for row in rows],
        done_slots,
        next_state,
        [st.alias for st in stagers],
        [st.buffers for st in stagers],
    )
