"""trlrec's optional C extensions, and the switch that turns them off.

- ``_capture.c`` (:mod:`trlrec.storage.capture`): a step's leaves found, checked and
  copied into the staging row in one call.
- ``_pwrite.c``: a block's chunk writes with the GIL released once
  (:func:`trlrec.storage.chunks.run_writes`), and ``Writer``, a thread doing the
  store's and the video spool's writes without ever taking the GIL
  (:mod:`trlrec.storage.native_io`, :mod:`trlrec.video.writer`).

Both use the CPython C API only (no torch headers) and are built at install where a C
compiler is found (``pyproject.toml``'s ``ext-modules``, optional). Without them trlrec
takes its Python paths, which store the same bytes and raise the same errors, slower.
``TRLREC_NATIVE=0`` in the environment turns them off (read when a writer sets up its
staging, and at each block write).
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["extension"]

try:
    from trlrec.storage import _capture
except ImportError:  # not built: the Python path does the work
    _capture = None
try:
    from trlrec.storage import _pwrite
except ImportError:  # not built: the Python path does the work
    _pwrite = None

_EXTENSIONS = {"capture": _capture, "pwrite": _pwrite}


def extension(name: str) -> ModuleType | None:
    """The extension ``name`` ("capture" or "pwrite"), or None: not built, or turned off."""
    if os.environ.get("TRLREC_NATIVE", "1") == "0":
        return None
    return _EXTENSIONS[name]
