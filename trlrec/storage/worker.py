"""A background thread that runs a writer's block writes and commits in order.

Copying blocks into chunk files (``pwrite``) and comparing states (``torch.equal``)
release the GIL, so on a machine with a spare core the step loop barely sees them.
The queue is bounded: a producer faster than the disk waits instead of piling up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BlockWorker"]


class BlockWorker:
    """Runs submitted jobs one at a time, in submission order, on one daemon thread.

    The first exception a job raises is kept (jobs check :attr:`error` to skip their
    work after a failure) and :meth:`raise_error` re-raises it in the caller's thread.
    """

    def __init__(self, name: str, depth: int = 2):
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except BaseException as err:  # handed to the caller's thread by raise_error()
                if self.error is None:
                    self.error = err
            finally:
                self._jobs.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (blocks while the queue is full)."""
        self._jobs.put(job)

    def wait(self) -> None:
        """Block until every submitted job has run."""
        self._jobs.join()

    def raise_error(self) -> None:
        """Re-raise, in the caller's thread, the error a job raised (if any)."""
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Finish the queued jobs and end the thread."""
        self._jobs.put(None)
        self._thread.join()
