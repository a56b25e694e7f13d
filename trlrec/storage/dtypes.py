"""The dtypes a store can hold, by name (never parsed with eval)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from trlrec.errors import OutOfRangeError, UnsupportedDataError

__all__ = ["DTYPES", "dtype_name", "dtype_from_name", "bits_view", "row_bytes_view", "take_rows"]

DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
    "uint64": torch.uint64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}
_NAMES = {v: k for k, v in DTYPES.items()}
# Same-size integer types: comparing bit patterns makes NaN == NaN and -0.0 != 0.0.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def dtype_name(dtype: torch.dtype, key: str = "") -> str:
    """The store's name of ``dtype``; refuses dtypes it cannot store."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise UnsupportedDataError(
            f"key {key!r} has dtype {dtype}, which trlrec cannot store; supported: "
            f"{', '.join(DTYPES)}. Convert it or leave the key out with in_keys"
        ) from None


def dtype_from_name(name: object) -> torch.dtype | None:
    """The dtype called ``name``, or None when unknown."""
    return DTYPES.get(name) if isinstance(name, str) else None


def bits_view(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as integers of the same width, for bit-exact comparisons."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.view(_BITS[t.element_size()])


def row_bytes_view(t: torch.Tensor, rows: int) -> np.ndarray:
    """A contiguous tensor of ``rows`` rows as a ``[rows, bytes a row]`` uint8 array (a view).

    The gathers of the read side copy rows as bytes: one code path for every dtype,
    numpy's included or not (``bool``, ``bfloat16``, ``uint16``...). ``rows`` and the
    bytes of a row are not 0 (a caller has nothing to copy then).

    Examples:
        >>> row_bytes_view(torch.zeros(3, 2, dtype=torch.bfloat16), 3).shape
        (3, 4)
    """
    return t.reshape(-1).view(torch.uint8).view(rows, -1).numpy()


def take_rows(
    take_bytes: Callable[[np.ndarray, np.ndarray], None],
    offsets: torch.Tensor,
    out: torch.Tensor,
    where: str,
) -> torch.Tensor:
    """Rows ``offsets`` (an int64 tensor of any shape) into ``out``, by ``take_bytes``.

    The tensor face of a byte gather: ``take_bytes(rows, dst)`` copies rows (1-D int64,
    >= 0) into ``dst`` (``[n, bytes a row]`` uint8, a view of ``out``).

    Raises:
        OutOfRangeError: an offset is negative (``where`` says what it indexes).
    """
    n = offsets.numel()
    if n:
        flat = offsets.reshape(-1).numpy()
        if flat.min() < 0:  # numpy would count them from the end
            raise OutOfRangeError(
                f"row offsets must be >= 0, got {int(flat.min())}; a row of {where} is its "
                "offset in the chunk"
            )
        if out.numel():
            take_bytes(flat, row_bytes_view(out, n))
    return out
