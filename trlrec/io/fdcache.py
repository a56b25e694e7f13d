"""Write descriptors of chunk files, shared by a writer's streams and bounded in number."""

from __future__ import annotations

import os
from collections import OrderedDict

__all__ = ["FdCache"]


class FdCache:
    """Keeps at most ``capacity`` files open for writing, closing the least recently used.

    A writer of 64 sub-envs with 12 keys would otherwise hold ~1500 descriptors,
    past the usual limit of 1024.
    """

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, path: str) -> int:
        """A descriptor of ``path`` open for writing (raises ``OSError``)."""
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_WRONLY)
            self._fds[path] = fd
            if len(self._fds) > self.capacity:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(path)
        return fd

    def close(self) -> None:
        """Close every descriptor."""
        while self._fds:
            os.close(self._fds.popitem()[1])
