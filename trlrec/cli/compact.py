"""``trlrec compact``: compress an existing store's committed chunks in place, and trim them.

Each shard is compacted under its writer's lock (a shard being recorded is refused).
Its COMMIT is marked version 2 first (a trlrec that cannot read compressed columns
then refuses the shard rather than misreads it), then each committed column of the
chosen keys is compressed by :func:`~trlrec.storage.sealing.seal_column`: a whole
``.zst`` renamed into place, fsync'ed, before its raw file is removed. A kill at any
instant leaves the store readable and exact; running the command again finishes the
work. The last chunk of each stream is trimmed to its committed rows.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trlrec.cli.progress import Progress
from trlrec.cli.stats import disk_usage
from trlrec.storage.compression import DEFAULT_LEVEL
from trlrec.storage.format import (
    COMMIT_FILE,
    COMPRESSED_VERSION,
    SCHEMA_FILE,
    CommitRecord,
    chunk_count,
    chunk_path,
    chunk_rows_needed,
    column_file,
)
from trlrec.storage.jsonio import read_json, write_json_atomic
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Schema
from trlrec.storage.sealing import compression_plan, retag_rows, seal_column, trim_column
from trlrec.storage.shard import ShardFiles

__all__ = ["CompactReport", "compact_store"]


@dataclass
class CompactReport:
    """What ``compact`` did: shards, column files compressed, bytes on disk before/after."""

    shards: int = 0
    compressed: int = 0
    before: int = 0
    after: int = 0


def compact_store(
    path: str | os.PathLike[str],
    *,
    codec: str = "zstd",
    level: int = DEFAULT_LEVEL,
    keys: list[str] | None = None,
    progress: bool = True,
) -> CompactReport:
    """Compress the committed chunks of every shard of the store at ``path``, in place.

    Args:
        path: the store.
        codec: the codec (``"zstd"``).
        level: its level.
        keys: the keys to compress (as ``trlrec info`` names them: ``pixels``,
            ``next/reward``), or None for every key.
        progress: show a progress bar on a terminal.

    Raises:
        NotAStoreError, CorruptStoreError: the store cannot be read.
        ShardLockedError: a writer is recording a shard (close it first).
        ConfigError: an unknown codec, level or key.
    """
    reader = TrajectoryReader(path)
    report = CompactReport(before=disk_usage(reader.path)[0])
    choice: Any = (codec, level)
    compression = choice if not keys else {k: choice for k in keys}
    jobs = []
    for shard in reader.shards:
        schema = Schema.from_json(read_json(shard.directory / SCHEMA_FILE), shard.directory)
        jobs.append((shard.directory, schema, compression_plan(compression, schema)))
    total = sum(
        len(plan) * sum(chunk_count(s.next_row, sh.chunk_rows) for s in sh.streams)
        for sh, (_, _, plan) in zip(reader.shards, jobs, strict=True)
    )
    done = 0
    with Progress("compacting", total) as bar:
        for directory, schema, plan in jobs:
            files = ShardFiles(directory, durable=True)  # the writer's lock
            try:
                commit = CommitRecord.parse(directory / COMMIT_FILE)
                if plan and commit.version < COMPRESSED_VERSION:
                    new = dataclasses.replace(commit, version=COMPRESSED_VERSION)
                    write_json_atomic(directory / COMMIT_FILE, new.to_json(), durable=True)
                C = commit.chunk_rows
                nbytes = {e.stored_key: e.nbytes for e in schema.entries}
                for b, s in enumerate(commit.streams):
                    last = chunk_count(s.next_row, C)
                    for c in range(last):
                        d = chunk_path(directory, b, c)
                        for key, (cod, lev) in plan.items():
                            rows = chunk_rows_needed(s.next_row, c, C)
                            if seal_column(d, key, rows, nbytes[key], cod, lev):
                                report.compressed += 1
                            done += 1
                            if progress:
                                bar.update(done)
                    if last:
                        need = chunk_rows_needed(s.next_row, last - 1, C)
                        d = chunk_path(directory, b, last - 1)
                        raw = [k for k in nbytes if k not in plan]
                        for key in raw:
                            trim_column(column_file(d, key), need * nbytes[key])
                        if raw:
                            retag_rows(d, need)
            finally:
                files.release()
            report.shards += 1
    report.after = disk_usage(Path(reader.path))[0]
    return report
