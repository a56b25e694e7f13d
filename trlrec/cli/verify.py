"""``trlrec verify``: check a store end to end and list what is damaged.

Checked: every shard's commit record, schema and episode index parse; every chunk a
commit counts exists with files of exactly the size their shape and dtype need;
episodes lie inside their stream's committed rows, do not overlap, and account for
every committed transition; every episode's metadata parses; every committed byte
of every chunk can be read; done flags agree with how each episode ended. Not
checked: the values themselves (the format has no checksums), so a flipped bit in
an observation goes unnoticed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trlrec.cli.progress import Progress
from trlrec.errors import CorruptStoreError
from trlrec.storage.dataset import open_dataset
from trlrec.storage.format import (
    COMMIT_FILE,
    FLAG_CUT,
    FLAG_DONE,
    FLAG_OPEN,
    NEXT,
    SHARDS_DIR,
    EpisodeRecord,
    chunk_count,
    chunk_path,
    column_file,
)
from trlrec.storage.shard_reader import ShardReader

__all__ = ["VerifyReport", "verify_store"]


@dataclass
class VerifyReport:
    """What ``verify_store`` found: counts of what was checked and the problems."""

    path: Path
    shards: int = 0
    episodes: int = 0
    steps: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def verify_store(path: str | os.PathLike[str], *, progress: bool = True) -> VerifyReport:
    """Check the store at ``path`` (see the module docstring for what is checked).

    Raises:
        NotAStoreError: the path is missing or not a store.
        FormatVersionError: the store's format version is not readable here.
    """
    path = Path(path)
    report = VerifyReport(path)
    try:
        open_dataset(path)
    except CorruptStoreError as err:
        report.problems.append(str(err))
        return report
    root = Path(os.path.realpath(path))
    shards_dir = path / SHARDS_DIR
    names = sorted(p.name for p in shards_dir.iterdir()) if shards_dir.is_dir() else []
    for name in names:
        directory = shards_dir / name
        if not (directory / COMMIT_FILE).exists():
            continue  # a writer that never committed: nothing to read, nothing damaged
        try:
            shard = ShardReader(root, directory)
        except (CorruptStoreError, OSError, ValueError) as err:
            report.problems.append(f"{name}: {err}")
            continue
        report.shards += 1
        _check_shard(shard, report, progress)
    return report


def _check_shard(shard: ShardReader, report: VerifyReport, progress: bool) -> None:
    before = len(report.problems)
    _check_chunks(shard, report)
    if len(report.problems) > before:
        return  # reading a short file through a memory map would crash; stop here
    episodes: list[tuple[int, EpisodeRecord]] = []
    for j in range(shard.num_episodes):
        try:
            rec = shard.record(j)
            shard.episode_metadata(j)
        except CorruptStoreError as err:
            report.problems.append(f"{shard.name}: {err}")
            continue
        episodes.append((j, rec))
        closed = j < shard.num_closed
        if closed and rec.flags not in (FLAG_DONE, FLAG_CUT):
            report.problems.append(
                f"{shard.name}: episode {j} has flags {rec.flags}, expected done (1) or "
                "cut (2); the index is damaged"
            )
    _check_layout(shard, episodes, report)
    _read_all(shard, report, progress)
    _check_done_flags(shard, episodes, report)
    report.episodes += shard.num_episodes
    report.steps += shard.num_steps


def _check_chunks(shard: ShardReader, report: VerifyReport) -> None:
    for b, stream in enumerate(shard.streams):
        for c in range(chunk_count(stream.next_row, shard.chunk_rows)):
            directory = chunk_path(shard.directory, b, c)
            for e in shard.schema.entries:
                file = column_file(directory, e.stored_key)
                need = shard.chunk_rows * e.nbytes
                report.files += 1
                if not file.is_file():
                    report.problems.append(f"{shard.name}: {str(file)!r} is missing")
                elif file.stat().st_size != need:
                    report.problems.append(
                        f"{shard.name}: {str(file)!r} is {file.stat().st_size} bytes, expected "
                        f"{need} ({shard.chunk_rows} rows of {e.shape} {e.dtype})"
                    )


def _check_layout(
    shard: ShardReader, episodes: list[tuple[int, EpisodeRecord]], report: VerifyReport
) -> None:
    for b, stream in enumerate(shard.streams):
        mine = sorted((e for e in episodes if e[1].stream == b), key=lambda e: e[1].start_row)
        end = -1
        for j, rec in mine:
            if rec.start_row <= end:
                report.problems.append(
                    f"{shard.name}: episode {j} (stream {b}) starts at row "
                    f"{rec.start_row}, inside the previous episode; the index is damaged"
                )
            end = rec.end_row
        total = sum(rec.num_steps for _j, rec in mine)
        if len(episodes) == shard.num_episodes and total != stream.transitions:
            report.problems.append(
                f"{shard.name}: stream {b} has {stream.transitions} committed transitions but "
                f"its episodes hold {total}; the index is damaged"
            )


def _read_all(shard: ShardReader, report: VerifyReport, progress: bool) -> None:
    chunks = [
        (b, c)
        for b, s in enumerate(shard.streams)
        for c in range(chunk_count(s.next_row, shard.chunk_rows))
    ]
    with Progress(f"reading {shard.name}", len(chunks)) as bar:
        for i, (b, c) in enumerate(chunks):
            rows = min(shard.chunk_rows, shard.streams[b].next_row - c * shard.chunk_rows)
            try:
                for leaf in shard.chunk(b, c).values():
                    part = leaf[:rows].contiguous()
                    if part.numel():
                        part.view(-1).view(torch.uint8).sum()
            except (OSError, RuntimeError, CorruptStoreError) as err:
                report.problems.append(f"{shard.name}: stream {b} chunk {c} unreadable: {err}")
            if progress:
                bar.update(i + 1)


def _check_done_flags(
    shard: ShardReader, episodes: list[tuple[int, EpisodeRecord]], report: VerifyReport
) -> None:
    entry = next((e for e in shard.schema.entries if e.is_done), None)
    if entry is None:
        return
    for j, rec in episodes:
        rows = rec.column_rows(entry.role, NEXT)  # the done flag each transition ended with
        values = shard.rows(rec.stream, rows.start, len(rows))[entry.stored_key]
        done = values.reshape(len(rows), -1).any(1)
        ended = bool(rec.flags & FLAG_DONE)
        early = bool(done[:-1].any())
        last = bool(done[-1])
        if early or last != ended:
            what = "cut" if rec.flags & FLAG_CUT else "open" if rec.flags & FLAG_OPEN else "done"
            report.problems.append(
                f"{shard.name}: episode {j} is marked {what} but its done flags are "
                f"{'set before its last step' if early else f'{last} at its last step'}; "
                "the index or the data is damaged"
            )
