"""The store's chunk writes on the native writer thread, which never takes the GIL.

A Python I/O thread takes the GIL back after each block's writes and between jobs;
the step loop holds it nearly all the time, so each take waits up to the switch
interval (5 ms) and then forces a switch in the step loop (see ``_pwrite.c``). Here
the step's thread hands a block's writes to ``_pwrite.Writer`` (the thread opens the
chunk files itself and keeps them open) and reaps the results at the next block.

Writes belong to a *group*; after a failed write the rest of its group is skipped, so
nothing lands after a torn write. :meth:`NativeWrites.reset` (the writer's roll back
to its last commit) starts a new group.
"""

from __future__ import annotations

import errno
import itertools
import os
from typing import Any

from trlrec.errors import StoreWriteError
from trlrec.storage.chunks import PendingWrite, drop_from
from trlrec.storage.format import COMMIT_FILE
from trlrec.storage.jsonio import atomic_tmp, dumps
from trlrec.storage.shard import PreparedCommit, ShardFiles

__all__ = ["NativeWrites"]


class NativeWrites:
    """A writer's chunk writes, in order, on a native thread.

    Args:
        writer: a ``_pwrite.Writer``.
    """

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._groups = itertools.count()
        self.group = next(self._groups)
        self._tokens = itertools.count()
        self.submitted = 0  # jobs handed to the thread so far
        self._paths: dict[int, str] = {}  # unreaped writes: token -> file
        self._error: StoreWriteError | None = None

    def _job(self, path: str | None) -> int:
        """The token of the next job (``path``: the file an error of it names)."""
        token = next(self._tokens)
        if path is not None:
            self._paths[token] = path
        self.submitted += 1
        return token

    def submit(self, writes: list[PendingWrite]) -> None:
        """Queues ``writes``; their buffers must stay unchanged until they are done."""
        writer, group = self._writer, self.group
        for w in writes:
            drop = drop_from(w.offset, len(w.data))
            writer.submit_path(w.path, w.data, w.offset, drop, group, self._job(w.path))

    def commit(self, files: ShardFiles, prepared: PreparedCommit) -> None:
        """Queues a commit after the writes before it: the index appends, then COMMIT.

        Skipped, like every later write of the group, if a write before it failed.
        """
        writes = []
        for path, data, offset in files.commit_appends(prepared):
            if not path.exists():  # the thread opens files without creating them
                path.touch()
            if data:
                writes.append(PendingWrite(str(path), memoryview(data), offset))
        self.submit(writes)
        final = files.directory / COMMIT_FILE
        record = dumps(prepared[-1], COMMIT_FILE).encode()
        token = self._job(str(final))
        self._writer.submit_replace(str(atomic_tmp(final)), str(final), record, self.group, token)

    def wait(self, mark: int) -> None:
        """Blocks (GIL released) until the first ``mark`` jobs are done."""
        self._writer.wait_done(mark)

    def check(self) -> StoreWriteError | None:
        """Reaps the finished writes; the first failure, naming its file, or None."""
        for token, code in self._writer.reap():
            path = self._paths.pop(token, None)
            if code and code != errno.ECANCELED and self._error is None and path is not None:
                self._error = StoreWriteError(
                    code,
                    f"could not write {path!r}: {os.strerror(code)}; what was committed "
                    "before stays readable",
                )
        return self._error

    def reset(self) -> None:
        """After a failure: waits for the thread, closes its files, starts a new group."""
        self._writer.close_files(self._job(None))  # queued after every write before it
        self._writer.wait(0)
        self.check()
        self._paths.clear()
        self._error = None
        self.group = next(self._groups)

    def stop(self) -> None:
        """Writes what is queued, closes the thread's files and ends it."""
        self._writer.stop()
        self.check()
