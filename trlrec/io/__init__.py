"""The I/O layer: ordered file writes, handed over by the store and the video spool.

It knows files, offsets and bytes, and nothing of what they hold. One interface
(:class:`~trlrec.io.backend.IOBackend`), three backends chosen once when a writer
opens (:func:`open_backend`: inline, a Python thread, the native thread), and a
fault-injecting one for tests (:class:`~trlrec.io.fault.FaultBackend`).
"""

from __future__ import annotations

from trlrec.errors import ConfigError
from trlrec.io.backend import IOBackend
from trlrec.io.inline import InlineBackend
from trlrec.io.native import NativeBackend
from trlrec.io.thread import ThreadBackend
from trlrec.native import extension

__all__ = ["IOBackend", "open_backend"]


def open_backend(kind: str = "auto", *, max_pending: int = 0) -> IOBackend:
    """The backend ``kind``: "inline", "thread", "native", or "auto" (native where built).

    Args:
        kind: which backend. "auto" takes the native thread where the extension is
            built (and not turned off with ``TRLREC_NATIVE=0``), else a Python thread.
        max_pending: with a thread, how many jobs may wait for it before a submit
            blocks (0: no bound; the caller bounds its buffers itself).

    Raises:
        ConfigError: an unknown kind, or "native" where the extension is not built.
    """
    if kind == "auto":
        kind = "native" if extension("pwrite") is not None else "thread"
    if kind == "inline":
        return InlineBackend()
    if kind == "thread":
        return ThreadBackend(max_pending)
    if kind == "native":
        native = extension("pwrite")
        if native is None:
            raise ConfigError(
                "the native I/O backend is not built (or TRLREC_NATIVE=0 turned it off); use "
                "'auto', 'thread' or 'inline', or reinstall trlrec where a C compiler is found"
            )
        return NativeBackend(native.Writer(), max_pending)
    raise ConfigError(
        f"unknown I/O backend {kind!r}; expected 'auto', 'inline', 'thread', 'native'"
    )
