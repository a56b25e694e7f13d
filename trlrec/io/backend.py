"""The I/O backend interface: ordered writes, off the caller's thread or on it.

A backend does the jobs it is given in the order they were given: a write of bytes at
an offset of an existing file, or the atomic replacement of a small file (write a
temporary, rename it over). Each job gets a token (1, 2, 3...); :meth:`IOBackend.wait`
blocks until a token's job and all before it are done, and the caller keeps a write's
buffer unchanged until then. Jobs belong to a *group* (a store, or one file): once a
job of a group failed, its later jobs are skipped, so nothing lands after a torn write,
and :meth:`IOBackend.error` names the file of the first failure. A group that failed
stays failed: take a new one (:meth:`IOBackend.new_group`) to go on.
"""

from __future__ import annotations

import abc
import errno
import itertools
import os

from trlrec.errors import StoreWriteError

Buffer = memoryview | bytes
"""What a write takes: a C-contiguous buffer of bytes."""

__all__ = ["Buffer", "IOBackend", "drop_from", "replace_file", "write_error"]

_DROP_BEHIND = 1 << 16  # writes of at least this many bytes are dropped from the cache
_DROP_LAG = 4  # ... together with the ~4 writes before them (written back meanwhile)


def drop_from(offset: int, size: int, keep: bool = False) -> int:
    """Where a write's drop from the page cache starts, or -1 (the pages are kept).

    Dropping the pages of big writes behind the write position lets the next writes
    reuse them rather than take fresh ones (see docs/PERFORMANCE.md). Small writes are
    kept, and so is a write with ``keep``: a file read back soon and then removed (a
    column compressed when its chunk is sealed), whose pages, never written back, then
    need not reach the disk at all.
    """
    return max(0, offset - _DROP_LAG * size) if size >= _DROP_BEHIND and not keep else -1


def write_fix(code: int | None) -> str:
    """What to do about a failed write with errno ``code`` (for the error message)."""
    if code in (errno.EMFILE, errno.ENFILE):
        return "raise the open files limit (ulimit -n)"
    return "check the disk's space and permissions"


def write_error(path: str, code: int | None) -> StoreWriteError:
    """The error of a failed job, naming its file and what to do."""
    reason = os.strerror(code) if code else "unknown error"
    return StoreWriteError(
        code,
        f"could not write {path!r}: {reason}; {write_fix(code)}. What was committed before "
        "stays readable",
    )


def replace_file(path: str, data: bytes, durable: bool) -> None:
    """Replace ``path`` by a file holding ``data``: a temporary, then a rename (raises OSError).

    With ``durable``, the data and the rename are fsync'ed.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dir_fd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class IOBackend(abc.ABC):
    """Ordered file writes (see the module's docstring). Used by one thread at a time."""

    name = "abstract"

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.submitted = 0  # the token of the last job submitted
        self._groups = itertools.count(1)

    def new_group(self) -> int:
        """A group no job was submitted to yet."""
        return next(self._groups)

    @abc.abstractmethod
    def write(self, path: str, data: Buffer, offset: int, group: int, keep: bool = False) -> int:
        """Queue writing ``data`` at ``offset`` of the existing file ``path``; its token.

        ``keep``: leave the written pages in the page cache (see :func:`drop_from`).
        """

    @abc.abstractmethod
    def replace(self, path: str, data: bytes, group: int, durable: bool = False) -> int:
        """Queue replacing ``path`` by a file holding ``data``, after the jobs before it."""

    @abc.abstractmethod
    def wait(self, token: int) -> None:
        """Block until job ``token`` and every job before it are done (or skipped)."""

    @abc.abstractmethod
    def done(self) -> int:
        """How many jobs are done so far (jobs finish in order: tokens up to this one)."""

    @abc.abstractmethod
    def error(self, group: int) -> StoreWriteError | None:
        """The first failure among the group's finished jobs, naming its file, or None."""

    @abc.abstractmethod
    def close_files(self) -> None:
        """Wait for every job, then close the descriptors the backend opened."""

    @abc.abstractmethod
    def close(self) -> None:
        """Do what is queued, close the files, and stop (no job is taken after)."""

    def barrier(self) -> None:
        """Block until every job submitted so far is done."""
        self.wait(self.submitted)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(submitted={self.submitted}, done={self.done()})"
