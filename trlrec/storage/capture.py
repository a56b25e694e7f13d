"""Native step capture: the writer's per-step fast path, where the C extension is built.

``trlrec.storage._capture`` (``_capture.c``, built at install when a C compiler is
there) stages a plain step in one call: it finds each leaf in the step's top-level
dicts, checks it is a contiguous CPU tensor of the schema's dtype and shape, and
copies its bytes into the staging row. Anything else falls back to the writer's Python
path, which copies with torch or raises the error naming the key; so the two paths
store the same bytes, and without the extension trlrec works the same, only slower
(~5-10 us a step in TorchRL's step loop: see BENCHMARKS.md).

``TRLREC_NATIVE=0`` in the environment turns the native path off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from trlrec.storage.checks import StepChecker
from trlrec.storage.staging import Stager

try:
    from trlrec.storage._capture import Plan
except ImportError:  # not built (no C compiler at install): the Python path does the work
    Plan = None

__all__ = ["native_available", "native_capture"]

Capture = Callable[[dict[str, Any], dict[str, Any], int], int]
"""``capture(root_dict, next_dict, row)``: 1 a done flag is set, 0 not, -1 fall back."""


def native_available() -> bool:
    """Whether the native capture is built and not turned off (``TRLREC_NATIVE=0``)."""
    return Plan is not None and os.environ.get("TRLREC_NATIVE", "1") != "0"


def native_capture(stager: Stager, checker: StepChecker, done_slots: list[int]) -> Capture | None:
    """The native capture of a step into ``stager``'s rows, or None where it does not apply.

    It applies when every leaf is a top-level key of the step's root or ``"next"``,
    no dtype is complex (a conjugate view's bytes are not its values), each staging
    row's destination views are contiguous (an unbatched recording) and the done flags
    are bool.

    Args:
        stager: the staging buffers (the plan keeps them alive: it holds their addresses).
        checker: the schema's slots in staging order (root, then ``"next"``).
        done_slots: the indices of the done flags among the slots.
    """
    slots = checker.root_slots + checker.next_slots
    if not native_available() or any(name is None for name, _, _, _ in slots):
        return None
    if any(dtype.is_complex for _, _, _, dtype in slots):
        return None
    if any(slots[i][3] is not torch.bool for i in done_slots):
        return None
    if not all(v.is_contiguous() for row in stager.rows for v in row):
        return None
    names = [name for name, _, _, _ in slots]
    sides = [0] * len(checker.root_slots) + [1] * len(checker.next_slots)
    dtypes = [dtype for _, _, _, dtype in slots]
    shapes = [shape for _, _, shape, _ in slots]
    nbytes = [shape.numel() * dtype.itemsize for _, _, shape, dtype in slots]
    rows = [[v.data_ptr() for v in row] for row in stager.rows]
    plan = Plan(
        torch.Tensor, names, sides, dtypes, shapes, nbytes, rows, done_slots, stager.buffers
    )
    return plan.step
