"""The writer's I/O thread: chunk writes and commits, in order, off the step loop.

Only system calls run here (``pwrite``, ``fadvise``, the commit's appends and atomic
rename), each releasing the GIL, so the thread takes the GIL back a few times per
block, not per step. The step loop keeps all the Python work (checks, staging, the
episode logic of a block): a thread running that too would trade the GIL with the
loop at every tensor operation and cost more than it saves.

The queue is bounded: a producer faster than the disk waits instead of piling up.
Where the native extension is built, the chunk writes and the commits go to its
GIL-free thread instead (:mod:`trlrec.storage.native_io`), and this thread stays idle.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BlockWorker"]


class BlockWorker:
    """Runs submitted jobs one at a time, in submission order, on one daemon thread.

    The first exception a job raises is kept, the jobs after it are skipped (except
    those submitted with ``always=True``), and :meth:`take_error` hands it to the
    caller's thread.
    """

    def __init__(self, name: str, depth: int = 8):
        self._jobs: queue.Queue[tuple[Callable[[], None], bool] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            try:
                if item is None:
                    return
                job, always = item
                if always or self.error is None:
                    job()
            except BaseException as err:  # handed to the caller's thread by take_error()
                if self.error is None:
                    self.error = err
            finally:
                self._jobs.task_done()

    def submit(self, job: Callable[[], None], always: bool = False) -> None:
        """Queue ``job`` (blocks while the queue is full); ``always``: run it after an error too."""
        self._jobs.put((job, always))

    def wait(self) -> None:
        """Block until every submitted job has run (or was skipped)."""
        self._jobs.join()

    def take_error(self) -> BaseException | None:
        """The error a job raised (if any), once all jobs are done; the worker is then reset."""
        if self.error is None:
            return None
        self.wait()
        err, self.error = self.error, None
        return err

    def stop(self) -> None:
        """Finish the queued jobs and end the thread."""
        self._jobs.put(None)
        self._thread.join()
