"""The native backend: jobs done in order on ``_pwrite.Writer``'s pthread (never the GIL).

A Python I/O thread takes the GIL back after each write and between jobs; the step
loop holds it nearly all the time, so each take waits up to the switch interval and
then forces a switch in the step loop. The native thread never asks for it: the
caller's thread reaps finished jobs (their buffers released, their errors read) with
the GIL held, at its next submit, wait or check.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from trlrec.errors import ClosedError, StoreWriteError
from trlrec.io.backend import Buffer, IOBackend, drop_from, replace_file, write_error

__all__ = ["NativeBackend"]


class NativeBackend(IOBackend):
    """Jobs on a ``_pwrite.Writer``.

    Args:
        writer: a ``trlrec.io._pwrite.Writer``.
        max_pending: how many jobs may be unfinished before a submit blocks (0: no bound).
    """

    name = "native"

    def __init__(self, writer: Any, max_pending: int = 0) -> None:
        super().__init__()
        self._writer = writer
        self._max_pending = max_pending
        self._paths: dict[int, tuple[str, int]] = {}  # unreaped jobs: token -> (file, group)
        self._errors: dict[int, StoreWriteError] = {}
        self._done = 0
        self._closed = False

    def _token(self, path: str, group: int) -> int:
        if self._closed:
            raise ClosedError("this I/O backend is closed; open a new writer")
        if self._max_pending:
            self._writer.wait(self._max_pending - 1)  # GIL released
        self.submitted += 1
        self._paths[self.submitted] = (path, group)
        return self.submitted

    def _reap(self) -> None:
        for token, code in self._writer.reap():
            path, group = self._paths.pop(token, ("", 0))
            if code and code != errno.ECANCELED and group not in self._errors:
                self._errors[group] = write_error(path, code)
            self._done = max(self._done, token)

    def write(self, path: str, data: Buffer, offset: int, group: int, keep: bool = False) -> int:
        """Queue a write (the thread opens ``path`` and keeps it open); its token."""
        token = self._token(path, group)
        behind = drop_from(offset, memoryview(data).nbytes, keep)
        self._writer.submit_path(path, data, offset, behind, group, token)
        return token

    def replace(self, path: str, data: bytes, group: int, durable: bool = False) -> int:
        """Queue a replacement; a durable one is done here, after the jobs before it."""
        if durable:  # fsync'ed here, once the jobs before it are done
            self.barrier()
            if group not in self._errors:
                try:
                    replace_file(path, data, durable=True)
                except OSError as err:
                    self._errors[group] = write_error(path, err.errno)
            return self.submitted
        token = self._token(path, group)
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.tmp")
        self._writer.submit_replace(tmp, path, data, group, token)
        return token

    def wait(self, token: int) -> None:
        """Block (GIL released) until job ``token`` is done."""
        if token > self._done:
            self._writer.wait_done(token)
        self._reap()

    def done(self) -> int:
        """Jobs done so far."""
        self._reap()
        return self._done

    def error(self, group: int) -> StoreWriteError | None:
        """The group's first failure among the finished jobs."""
        self._reap()
        return self._errors.get(group)

    def close_files(self) -> None:
        """Wait for the jobs, then close the thread's descriptors."""
        token = self._token("", 0)
        self._paths.pop(token)
        self._writer.close_files(token)
        self.wait(token)

    def close(self) -> None:
        """Do what is queued, then end the thread."""
        if self._closed:
            return
        self._closed = True
        if self.pid == os.getpid():
            self._writer.stop()
            self._reap()
