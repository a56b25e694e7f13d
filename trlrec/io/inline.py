"""The inline backend: each job done at once, in the caller's thread."""

from __future__ import annotations

import os

from trlrec.errors import StoreWriteError
from trlrec.io.backend import Buffer, IOBackend, drop_from, replace_file, write_error
from trlrec.io.fdcache import FdCache

__all__ = ["InlineBackend"]


def pwrite_all(fd: int, data: Buffer, offset: int, keep: bool = False) -> None:
    """``pwrite`` all of ``data`` at ``offset``; a big write also drops older pages."""
    view = memoryview(data).cast("B")
    end = offset + len(view)
    behind = drop_from(offset, len(view), keep)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    if behind >= 0:
        os.posix_fadvise(fd, behind, end - behind, os.POSIX_FADV_DONTNEED)


class InlineBackend(IOBackend):
    """Does each job when it is submitted; a failure is kept for :meth:`error`.

    The job functions (:meth:`_do_write`, :meth:`_do_replace`) are the thread
    backend's too: it runs them on its thread.
    """

    name = "inline"

    def __init__(self) -> None:
        super().__init__()
        self._fds = FdCache()
        self._errors: dict[int, StoreWriteError] = {}
        self._done = 0

    def _run(self, group: int, path: str, job: tuple) -> None:
        """Do a job unless its group failed; keep the first failure of the group."""
        if group not in self._errors:
            try:
                if job[0] == "write":
                    self._do_write(path, job[1], job[2], job[3])
                else:
                    self._do_replace(path, job[1], job[2])
            except OSError as err:
                self._errors[group] = write_error(path, err.errno)
        self._done += 1

    def _do_write(self, path: str, data: Buffer, offset: int, keep: bool) -> None:
        pwrite_all(self._fds.get(path), data, offset, keep)

    def _do_replace(self, path: str, data: bytes, durable: bool) -> None:
        replace_file(path, data, durable)

    def write(self, path: str, data: Buffer, offset: int, group: int, keep: bool = False) -> int:
        """Write ``data`` at ``offset`` of ``path`` now; its token."""
        self.submitted += 1
        self._run(group, path, ("write", data, offset, keep))
        return self.submitted

    def replace(self, path: str, data: bytes, group: int, durable: bool = False) -> int:
        """Replace ``path`` now; its token."""
        self.submitted += 1
        self._run(group, path, ("replace", data, durable))
        return self.submitted

    def wait(self, token: int) -> None:
        """Nothing to wait for: every job is done when submitted."""

    def done(self) -> int:
        """Every job submitted."""
        return self._done

    def error(self, group: int) -> StoreWriteError | None:
        """The group's first failure."""
        return self._errors.get(group)

    def close_files(self) -> None:
        """Close the descriptors opened for writes."""
        self._fds.close()

    def close(self) -> None:
        """Close the descriptors."""
        self._fds.close()
