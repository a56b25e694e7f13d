"""trlrec's optional C extensions, and the switch that turns them off.

- ``trlrec.storage._capture`` (``_capture.c``): a step's leaves found, checked and
  copied into the staging row in one call, and the writer's whole step (checked,
  staged and counted for the commit clock) in one call (:mod:`trlrec.storage.staging`).
- ``trlrec.io._pwrite`` (``_pwrite.c``): ``Writer``, a thread doing the store's and the
  video spool's writes without ever taking the GIL (:mod:`trlrec.io.native`).

Both use the CPython C API only (no torch headers) and are built at install where a C
compiler is found (``pyproject.toml``'s ``ext-modules``, optional). Without them trlrec
takes its Python paths, which store the same bytes and raise the same errors, slower.
``TRLREC_NATIVE=0`` in the environment turns them off (read when a writer opens).
Nothing is imported until asked for: reading a store loads no extension.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["extension"]

_MODULES = {"capture": "trlrec.storage._capture", "pwrite": "trlrec.io._pwrite"}


def extension(name: str) -> ModuleType | None:
    """The extension ``name`` ("capture" or "pwrite"), or None: not built, or turned off."""
    if os.environ.get("TRLREC_NATIVE", "1") == "0":
        return None
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:  # not built: the Python path does the work
        return None
