"""``trlrec verify``: check a store end to end and list what is damaged, shard by shard.

Checked: every shard's commit record, schema and episode index parse; every chunk a
commit counts exists with files of exactly the size their shape and dtype need;
episodes lie inside their stream's committed rows, do not overlap, and account for
every committed transition; every episode's metadata parses; every committed byte
of every chunk can be read (in bounded blocks: the memory used does not grow with
the chunks); done flags agree with how each episode ended. A shard without a
``COMMIT`` is fine when its writer never committed, and damage when its episode
index holds records (they are only ever written by a commit). Not checked: the
values themselves (the format has no checksums), so a flipped bit in an
observation goes unnoticed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from trlrec.cli.progress import Progress
from trlrec.errors import CorruptStoreError
from trlrec.storage.dataset import open_dataset, shard_dirs
from trlrec.storage.format import (
    COMMIT_FILE,
    EPISODE_META_FILE,
    EPISODE_RECORD_BYTES,
    EPISODES_FILE,
    FLAG_CUT,
    FLAG_DONE,
    FLAG_OPEN,
    NEXT,
    SHARD_FILE,
    EpisodeRecord,
)
from trlrec.storage.jsonio import read_json
from trlrec.storage.shard_reader import ShardReader, worker_label

__all__ = ["VerifyReport", "ShardCheck", "verify_store", "OK", "DAMAGED", "UNCOMMITTED"]

_BLOCK = 8 * 2**20  # bytes read at a time when reading every committed byte

OK, DAMAGED, UNCOMMITTED = "ok", "damaged", "never committed"


@dataclass
class ShardCheck:
    """What ``verify_store`` found in one shard."""

    name: str
    state: str = OK  # OK, DAMAGED or UNCOMMITTED (a writer that has not committed: empty)
    worker: str = "unknown writer"  # who wrote it (shard.json): host, pid, rank
    episodes: int = 0
    steps: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, what: str) -> None:
        """Record a problem: the shard is damaged."""
        self.problems.append(what)
        self.state = DAMAGED


@dataclass
class VerifyReport:
    """What ``verify_store`` found: counts of what was checked, per shard, and the problems."""

    path: Path
    files: int = 0
    shard_checks: list[ShardCheck] = field(default_factory=list)
    store_problems: list[str] = field(default_factory=list)  # of the store, not of a shard

    @property
    def shards(self) -> int:
        """Shards holding a commit record (checked)."""
        return sum(s.state != UNCOMMITTED for s in self.shard_checks)

    @property
    def episodes(self) -> int:
        """Episodes checked, all shards together."""
        return sum(s.episodes for s in self.shard_checks)

    @property
    def steps(self) -> int:
        """Transitions checked, all shards together."""
        return sum(s.steps for s in self.shard_checks)

    @property
    def problems(self) -> list[str]:
        """Every problem, each naming its shard (``<shard>: ...``) unless it is the store's."""
        return self.store_problems + [
            f"{s.name}: {p}" for s in self.shard_checks for p in s.problems
        ]

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def by_worker(self) -> dict[str, list[ShardCheck]]:
        """The shard checks grouped by the worker that wrote them, in shard order."""
        out: dict[str, list[ShardCheck]] = {}
        for s in self.shard_checks:
            out.setdefault(s.worker, []).append(s)
        return out


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
        report.store_problems.append(str(err))
        return report
    root = Path(os.path.realpath(path))
    for directory in shard_dirs(path):
        # printable even when the name is not UTF-8 (shown with \x escapes)
        check = ShardCheck(os.fsencode(directory.name).decode("utf-8", "backslashreplace"))
        report.shard_checks.append(check)
        check.worker = _worker_of(directory)
        if not (directory / COMMIT_FILE).exists():
            _check_uncommitted(directory, check)
            continue
        try:
            shard = ShardReader(root, directory)
        except (CorruptStoreError, OSError, ValueError) as err:
            check.problem(str(err))
            continue
        _check_shard(shard, check, report, progress)
    return report


def _worker_of(directory: Path) -> str:
    """Who wrote the shard, from its ``shard.json`` (``unknown writer`` if it does not say)."""
    try:
        data = read_json(directory / SHARD_FILE)
    except (CorruptStoreError, OSError, ValueError):
        return worker_label({})
    if not isinstance(data, dict):
        return worker_label({})
    return worker_label({k: data[k] for k in ("host", "pid", "rank") if k in data})


def _check_uncommitted(directory: Path, check: ShardCheck) -> None:
    """A shard without COMMIT: a writer that never committed, or a commit record lost."""
    check.state = UNCOMMITTED
    for name in (EPISODES_FILE, EPISODE_META_FILE):
        try:
            size = os.stat(directory / name).st_size
        except OSError:
            continue
        if size:
            records = (
                f" ({size // EPISODE_RECORD_BYTES} episode records)"
                if name == EPISODES_FILE
                else ""
            )
            check.problem(
                f"{str(directory / COMMIT_FILE)!r} is missing, but {name} holds {size} bytes"
                f"{records}, which only a commit writes: the commit record was deleted or "
                "lost, and none of the shard can be read"
            )
            return


def _check_shard(
    shard: ShardReader, check: ShardCheck, report: VerifyReport, progress: bool
) -> None:
    report.files += sum(1 for _ in shard.column_files())
    for problem in shard.check_files():
        check.problem(problem)
    if check.problems:
        return  # reading a short file through a memory map would crash; stop here
    episodes: list[tuple[int, EpisodeRecord]] = []
    for j in range(shard.num_episodes):
        try:
            rec = shard.record(j)
            shard.episode_metadata(j)
        except CorruptStoreError as err:
            check.problem(str(err))
            continue
        episodes.append((j, rec))
        closed = j < shard.num_closed
        if closed and rec.flags not in (FLAG_DONE, FLAG_CUT):
            check.problem(
                f"episode {j} has flags {rec.flags}, expected done (1) or cut (2); the index "
                "is damaged"
            )
    _check_layout(shard, episodes, check)
    _read_all(shard, check, progress)
    _check_done_flags(shard, episodes, check)
    check.episodes = shard.num_episodes
    check.steps = shard.num_steps


def _check_layout(
    shard: ShardReader, episodes: list[tuple[int, EpisodeRecord]], check: ShardCheck
) -> None:
    for b, stream in enumerate(shard.streams):
        mine = sorted((e for e in episodes if e[1].stream == b), key=lambda e: e[1].start_row)
        end = -1
        for j, rec in mine:
            if rec.start_row <= end:
                check.problem(
                    f"episode {j} (stream {b}) starts at row {rec.start_row}, inside the "
                    "previous episode; the index is damaged"
                )
            end = rec.end_row
        total = sum(rec.num_steps for _j, rec in mine)
        if len(episodes) == shard.num_episodes and total != stream.transitions:
            check.problem(
                f"stream {b} has {stream.transitions} committed transitions but its episodes "
                f"hold {total}; the index is damaged"
            )


def _read_all(shard: ShardReader, check: ShardCheck, progress: bool) -> None:
    """Read every committed byte of every column file (every block of a compressed one)."""
    files = list(shard.column_files())
    with Progress(f"reading {shard.name}", len(files)) as bar:
        for i, (b, c, e, file) in enumerate(files):
            try:
                shard.check_column(b, c, e)
            except CorruptStoreError as err:
                check.problem(f"stream {b} chunk {c}: {str(file)!r} is unreadable: {err}")
            if progress:
                bar.update(i + 1)


def _check_done_flags(
    shard: ShardReader, episodes: list[tuple[int, EpisodeRecord]], check: ShardCheck
) -> None:
    entry = next((e for e in shard.schema.entries if e.is_done), None)
    if entry is None:
        return
    for j, rec in episodes:
        rows = rec.column_rows(entry.role, NEXT)  # the done flag each transition ended with
        values = shard.rows(rec.stream, rows.start, len(rows), [entry.stored_key])
        done = values[entry.stored_key].reshape(len(rows), -1).any(1)
        ended = bool(rec.flags & FLAG_DONE)
        early = bool(done[:-1].any())
        last = bool(done[-1])
        if early or last != ended:
            what = "cut" if rec.flags & FLAG_CUT else "open" if rec.flags & FLAG_OPEN else "done"
            check.problem(
                f"episode {j} is marked {what} but its done flags are "
                f"{'set before its last step' if early else f'{last} at its last step'}; "
                "the index or the data is damaged"
            )
