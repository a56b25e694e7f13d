"""A shard: one writer's directory, its lock, episode index and commit record.

The commit protocol, in one place (:meth:`ShardFiles.commit`): rows are written to
the chunks, then the new episode records and metadata lines are appended, then
``COMMIT`` is replaced atomically, all as ordered jobs of the writer's I/O backend.
Everything a reader uses is bounded by the counts in ``COMMIT``, so a torn tail is
never seen.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from trlrec.errors import CorruptStoreError, ShardLockedError, StoreWriteError
from trlrec.io.backend import IOBackend, write_fix
from trlrec.storage.format import (
    COMMIT_FILE,
    COMPRESSED_VERSION,
    EPISODE_META_FILE,
    EPISODE_RECORD_BYTES,
    EPISODES_FILE,
    FORMAT_VERSION,
    LOCK_FILE,
    SCHEMA_FILE,
    SHARD_FILE,
    STREAMS_DIR,
    CommitRecord,
    EpisodeRecord,
    StreamEntry,
)
from trlrec.storage.identity import worker_identity
from trlrec.storage.jsonio import dumps, fsync_path, read_json, write_json_atomic
from trlrec.storage.schema import Schema
from trlrec.storage.stream import Episode

__all__ = ["ShardFiles", "read_commit"]


def read_commit(path: Path) -> dict[str, Any]:
    """Read and check a shard's COMMIT record (:meth:`CommitRecord.parse`), as its JSON dict."""
    return CommitRecord.parse(path).to_json()


def _file_op(path: Path, what: str, op: Any) -> None:
    """Run ``op()``, a file operation of a commit; an OSError is a StoreWriteError naming it."""
    try:
        op()
    except OSError as err:
        raise StoreWriteError(
            err.errno,
            f"cannot {what} {str(path)!r} for a commit: {err.strerror}; "
            f"{write_fix(err.errno)}. What was committed before stays readable",
        ) from err


class ShardFiles:
    """The files of a shard that a writer appends to, under an exclusive lock."""

    def __init__(self, directory: Path, *, durable: bool, compressed: bool = False):
        self.directory = directory
        self.durable = durable
        # COMMIT's version: 2 once the shard may hold compressed columns
        self.version = COMPRESSED_VERSION if compressed else FORMAT_VERSION
        try:
            self._lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreWriteError(
                err.errno, f"cannot open {str(directory / LOCK_FILE)!r}: {err.strerror}"
            ) from err
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ShardLockedError(
                f"shard {str(directory)!r} is held by another writer; give this writer another "
                "shard (shard=None picks a new one) or close the other writer first"
            ) from None
        st = os.fstat(self._lock_fd)
        self._lock_id = (st.st_dev, st.st_ino)
        self.seq = 0
        self.num_episodes = 0
        self.meta_bytes = 0
        self._pending: list[bytes] = []
        self._pending_meta: list[bytes] = []

    def open(self, metadata: dict[str, Any]) -> tuple[dict[str, Any] | None, Schema | None]:
        """Write ``shard.json``; the last commit and the schema to continue after, if any.

        A shard without a commit starts afresh: rows left without one are removed.
        """
        write_json_atomic(
            self.directory / SHARD_FILE,
            {"version": FORMAT_VERSION, "metadata": metadata, **worker_identity()},
            durable=self.durable,
        )
        commit = self.last_commit()
        if commit is None:
            return None, None
        schema = Schema.from_json(read_json(self.directory / SCHEMA_FILE), self.directory)
        return commit, schema

    def last_commit(self) -> dict[str, Any] | None:
        """The commit on disk, or None: then the shard starts afresh (its rows are removed)."""
        path = self.directory / COMMIT_FILE
        if path.exists():
            commit = read_commit(path)
            self.version = max(self.version, commit["version"])
            return commit
        self.resume({"seq": 0, "episodes": 0, "episode_meta_bytes": 0})
        shutil.rmtree(self.directory / STREAMS_DIR, ignore_errors=True)
        return None

    def resume(self, commit: dict[str, Any]) -> None:
        """Continue after ``commit``: drop any uncommitted tail of the index files."""
        self.seq = commit["seq"]
        self.num_episodes = commit["episodes"]
        self.meta_bytes = commit["episode_meta_bytes"]
        for name, size in (
            (EPISODES_FILE, self.num_episodes * EPISODE_RECORD_BYTES),
            (EPISODE_META_FILE, self.meta_bytes),
        ):
            path = self.directory / name
            if path.exists():
                if path.stat().st_size < size:
                    raise CorruptStoreError(
                        f"{str(path)!r} is {path.stat().st_size} bytes, shorter than the "
                        f"{size} its commit record counts; the shard is damaged"
                    )
                os.truncate(path, size)

    def discard_pending(self) -> None:
        """Forget the episodes queued since the last commit (the writer rolls back to it)."""
        self._pending.clear()
        self._pending_meta.clear()

    def add_episode(self, ep: Episode) -> None:
        """Queue a finished episode for the next commit."""
        offset, length = -1, 0
        if ep.meta is not None:
            line = dumps(ep.meta, "episode metadata").encode()
            offset = self.meta_bytes + sum(len(x) for x in self._pending_meta)
            length = len(line)
            self._pending_meta.append(line + b"\n")
        self._pending.append(
            EpisodeRecord(
                ep.stream, ep.start_row, ep.num_steps, ep.flags, ep.first_transition, offset, length
            ).pack()
        )

    def _check_present(self) -> None:
        """Refuse to commit into a shard directory that was removed or replaced meanwhile."""
        try:
            st = os.stat(self.directory / LOCK_FILE)
            present = (st.st_dev, st.st_ino) == self._lock_id
        except OSError:
            present = False
        if not present:
            raise StoreWriteError(
                errno.ENOENT,
                f"shard {str(self.directory)!r} was removed or replaced while this writer was "
                "recording; what it recorded since its last commit is lost. Open a new writer",
            )

    def commit(
        self,
        io: IOBackend,
        group: int,
        streams: list[list[int]],
        open_meta: dict[str, Any],
        chunk_rows: int,
    ) -> int:
        """Queue a commit on ``io``: the episode appends, then COMMIT replaced; its token.

        The counts advance at once (episodes added meanwhile go to the next commit);
        the bytes are written by the backend, in order, after the rows before them, and
        COMMIT is skipped if any write of the group failed. A durable commit fsyncs the
        index files and COMMIT (the caller fsyncs the chunk files first).
        """
        self._check_present()
        metas, records = self._pending_meta, self._pending
        self._pending_meta, self._pending = [], []
        appends = [
            (self.directory / EPISODE_META_FILE, b"".join(metas), self.meta_bytes),
            (
                self.directory / EPISODES_FILE,
                b"".join(records),
                self.num_episodes * EPISODE_RECORD_BYTES,
            ),
        ]
        self.meta_bytes += sum(len(x) for x in metas)
        self.num_episodes += len(records)
        self.seq += 1
        record = CommitRecord(
            seq=self.seq,
            episodes=self.num_episodes,
            episode_meta_bytes=self.meta_bytes,
            chunk_rows=chunk_rows,
            streams=tuple(StreamEntry(*s) for s in streams),
            open_meta=open_meta,
            version=self.version,
        ).to_json()
        for path, data, offset in appends:
            if not path.exists():  # the backend writes into existing files only
                _file_op(path, "create", path.touch)
            if data:
                io.write(str(path), memoryview(data), offset, group)
        if self.durable:
            io.barrier()
            if io.error(group) is None:
                for path, _, _ in appends:
                    _file_op(path, "fsync", lambda path=path: fsync_path(path))
        text = dumps(record, COMMIT_FILE).encode()
        return io.replace(str(self.directory / COMMIT_FILE), text, group, durable=self.durable)

    def release(self) -> None:
        """Release the lock."""
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
            if self.durable:
                fsync_path(self.directory)
