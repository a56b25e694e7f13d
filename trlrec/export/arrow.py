"""The part of pyarrow the exporters use, as ``Protocol`` s, and its import.

pyarrow is an optional dependency (``pip install 'trlrec[lerobot]'``) that ships no
type information: these protocols say which of its functions trlrec calls, and how,
so that the type checker checks those calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from trlrec.export.layout import require

__all__ = ["ArrowTable", "ParquetWriter", "PyArrow", "PyArrowParquet", "load_pyarrow"]


class ArrowTable(Protocol):
    """A ``pyarrow.Table``."""

    @property
    def schema(self) -> Any:
        """The column names and types."""

    def replace_schema_metadata(self, metadata: Mapping[bytes, bytes]) -> ArrowTable:
        """The same table with ``metadata`` as its schema's key-value metadata."""


class FixedSizeListArrays(Protocol):
    """The class ``pyarrow.FixedSizeListArray``."""

    def from_arrays(self, values: Any, list_size: int) -> Any:
        """Rows of ``list_size`` consecutive ``values``."""


class ParquetWriter(Protocol):
    """A ``pyarrow.parquet.ParquetWriter``: row groups appended to one file."""

    @property
    def where(self) -> str:
        """The file written."""

    def write_table(self, table: ArrowTable) -> None:
        """Append ``table``'s rows (its schema must be the writer's)."""

    def close(self) -> None:
        """Write the footer and close the file."""


class PyArrow(Protocol):
    """The module ``pyarrow``."""

    @property
    def __version__(self) -> str:
        """The version of pyarrow."""

    @property
    def FixedSizeListArray(self) -> FixedSizeListArrays:
        """The class of fixed-size list columns."""

    def array(self, obj: Any, type: Any = None) -> Any:
        """A column from a numpy array or a list (of type ``type``, else inferred)."""

    def table(self, data: Mapping[str, Any]) -> ArrowTable:
        """A table of the named columns (arrays or lists)."""

    def int64(self) -> Any:
        """The 64-bit integer type."""


class PyArrowParquet(Protocol):
    """The module ``pyarrow.parquet``."""

    def ParquetWriter(self, where: str, schema: Any) -> ParquetWriter:
        """A writer of the parquet file ``where`` (the class, called)."""

    def write_table(self, table: ArrowTable, where: str) -> None:
        """Write ``table`` as the parquet file ``where``."""


def load_pyarrow(extra: str) -> tuple[PyArrow, PyArrowParquet]:
    """``pyarrow`` and ``pyarrow.parquet``.

    Raises:
        MissingDependencyError: pyarrow is not installed (the message names ``extra``).
    """
    require("pyarrow", extra)
    require("pyarrow.parquet", extra, "pyarrow")
    import pyarrow
    import pyarrow.parquet

    return pyarrow, pyarrow.parquet
