"""The I/O layer: ordered file writes, handed over by the store and the video spool.

It knows files, offsets and bytes, and nothing of what they hold. One interface
(:class:`~trlrec.io.backend.IOBackend`), three backends chosen once when a writer
opens (:func:`open_backend`), and a fault-injecting one for tests.
"""

from trlrec.io.backend import IOBackend, open_backend

__all__ = ["IOBackend", "open_backend"]
