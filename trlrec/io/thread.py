"""The thread backend: jobs done in order on a Python daemon thread.

Only system calls run there (``pwrite``, ``fadvise``, a small file's write and
rename), each releasing the GIL. The native backend does the same without ever taking
the GIL back, which the step loop feels less (see docs/PERFORMANCE.md); this one is
what a machine without a C compiler gets.
"""

from __future__ import annotations

import queue
import threading

from trlrec.errors import ClosedError, StoreWriteError
from trlrec.io.backend import Buffer
from trlrec.io.inline import InlineBackend

__all__ = ["ThreadBackend"]


class ThreadBackend(InlineBackend):
    """:class:`~trlrec.io.inline.InlineBackend`'s jobs, on a thread, in order.

    Args:
        max_pending: how many jobs may wait before a submit blocks (0: no bound).
    """

    name = "thread"

    def __init__(self, max_pending: int = 0) -> None:
        super().__init__()
        self._jobs: queue.Queue[tuple | None] = queue.Queue(max(0, max_pending))
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._main, name="trlrec-io", daemon=True)
        self._closed = False
        self._thread.start()

    def _main(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                self._fds.close()
                return
            group, path, job = item
            if job[0] == "close_files":
                self._fds.close()
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()
                continue
            try:
                self._run(group, path, job)  # counts it done
            finally:
                with self._cond:
                    self._cond.notify_all()

    def _submit(self, item: tuple) -> int:
        if self._closed:
            raise ClosedError("this I/O backend is closed; open a new writer")
        self.submitted += 1
        self._jobs.put(item)
        return self.submitted

    def write(self, path: str, data: Buffer, offset: int, group: int, keep: bool = False) -> int:
        """Queue a write; its token."""
        return self._submit((group, path, ("write", data, offset, keep)))

    def replace(self, path: str, data: bytes, group: int, durable: bool = False) -> int:
        """Queue a replacement; its token."""
        return self._submit((group, path, ("replace", data, durable)))

    def wait(self, token: int) -> None:
        """Block until job ``token`` is done."""
        with self._cond:
            while self._done < token and self._thread.is_alive():
                self._cond.wait(0.5)

    def done(self) -> int:
        """Jobs done so far."""
        return self._done

    def error(self, group: int) -> StoreWriteError | None:
        """The group's first failure among the finished jobs."""
        return self._errors.get(group)

    def close_files(self) -> None:
        """Wait for the jobs, then close the thread's descriptors."""
        self.wait(self._submit((0, "", ("close_files",))))

    def close(self) -> None:
        """Do what is queued, then end the thread."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join()
