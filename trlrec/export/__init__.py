"""Exporters: a trlrec store to the dataset formats people train from, and back.

``to_minari`` / ``from_minari`` (extra ``trlrec[minari]``) and ``to_lerobot``
(extra ``trlrec[lerobot]``). Each streams the store episode by episode (memory
bounded by the longest episode), draws a progress line on a terminal, and returns
an :class:`ExportResult` whose ``notes`` say what, if anything, was not exact.
"""

from __future__ import annotations

import importlib
from typing import Any

from trlrec.export.result import ExportResult

__all__ = ["ExportResult", "to_minari", "from_minari", "to_lerobot"]

_EXPORTS = {
    "to_minari": "trlrec.export.minari",
    "from_minari": "trlrec.export.minari",
    "to_lerobot": "trlrec.export.lerobot",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trlrec.export' has no attribute {name!r}")
