"""A shard: one writer's directory, its lock, episode index and commit record.

Commit protocol: rows are written to the chunks, then the new episode records and
metadata lines are appended, then ``COMMIT`` is replaced atomically. Everything a
reader uses is bounded by the counts in ``COMMIT``, so a torn tail is never seen.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

from trlrec.errors import CorruptStoreError, ShardLockedError, StoreWriteError
from trlrec.storage.format import (
    COMMIT_FILE,
    EPISODE_META_FILE,
    EPISODE_RECORD_BYTES,
    EPISODES_FILE,
    LOCK_FILE,
    CommitRecord,
    EpisodeRecord,
    StreamEntry,
)
from trlrec.storage.jsonio import dumps, fsync_dir, write_json_atomic
from trlrec.storage.stream import Episode

__all__ = ["ShardFiles", "read_commit"]

PreparedCommit = tuple[list[bytes], int, list[bytes], int, dict[str, Any]]
"""Episode-metadata lines, their offset, episode records, their index, the COMMIT record."""


def read_commit(path: Path) -> dict[str, Any]:
    """Read and check a shard's COMMIT record (:meth:`CommitRecord.parse`), as its JSON dict."""
    return CommitRecord.parse(path).to_json()


class ShardFiles:
    """The files of a shard that a writer appends to, under an exclusive lock."""

    def __init__(self, directory: Path, *, durable: bool):
        self.directory = directory
        self.durable = durable
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

    def _append(self, path: Path, data: bytes, committed: int) -> None:
        if data:
            with open(path, "ab") as f:
                if f.tell() != committed:  # a torn tail of a failed append: drop it first
                    f.truncate(committed)
                f.write(data)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
        return len(data)

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

    def commit(self, streams: list[list[int]], open_meta: dict[str, Any], chunk_rows: int) -> None:
        """Append queued episodes, then atomically replace COMMIT.

        On a failure nothing changes: the queued episodes stay queued for the next try.
        """
        prepared = self.prepare_commit(streams, open_meta, chunk_rows)
        try:
            self.write_commit(prepared)
        except BaseException:
            metas, meta_at, records, episodes_at, _ = prepared
            self._pending_meta[:0] = metas
            self._pending[:0] = records
            self.meta_bytes, self.num_episodes = meta_at, episodes_at
            self.seq -= 1
            raise

    def prepare_commit(
        self, streams: list[list[int]], open_meta: dict[str, Any], chunk_rows: int
    ) -> PreparedCommit:
        """Take the queued episodes into a commit record, to write with :meth:`write_commit`.

        Done in the writer's thread (the counts advance at once, so episodes queued
        meanwhile go to the next commit); the writing may happen on another thread.
        """
        self._check_present()
        metas, records = self._pending_meta, self._pending
        self._pending_meta, self._pending = [], []
        meta_at, episodes_at = self.meta_bytes, self.num_episodes
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
        ).to_json()
        return metas, meta_at, records, episodes_at, record

    def commit_appends(self, prepared: PreparedCommit) -> list[tuple[Path, bytes, int]]:
        """A prepared commit's appends to the index, ``(file, data, offset)``.

        Both files are listed, an empty ``data`` where nothing is appended. The commit
        record (``prepared[-1]``) replaces COMMIT once they are written.
        """
        metas, meta_at, records, episodes_at, _ = prepared
        return [
            (self.directory / EPISODE_META_FILE, b"".join(metas), meta_at),
            (self.directory / EPISODES_FILE, b"".join(records), episodes_at * EPISODE_RECORD_BYTES),
        ]

    def write_commit(self, prepared: PreparedCommit) -> None:
        """Append a prepared commit's episodes to the index, then replace COMMIT atomically."""
        try:
            for path, data, offset in self.commit_appends(prepared):
                self._append(path, data, offset)
        except OSError as err:
            raise StoreWriteError(
                err.errno, f"could not append to the index of {str(self.directory)!r}: {err}"
            ) from err
        write_json_atomic(self.directory / COMMIT_FILE, prepared[-1], durable=self.durable)

    def release(self) -> None:
        """Release the lock."""
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
            if self.durable:
                fsync_dir(self.directory)
