"""One writer per shard, and readers that run while a writer appends in another process."""

from __future__ import annotations

import time

import pytest

from tests.reliability._worker import check_store, rollout
from trlrec.errors import NotAStoreError, ShardLockedError
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.writer import TrajectoryWriter


def test_second_writer_on_the_same_shard(tmp_path):
    roll = rollout(0, 10)
    with TrajectoryWriter(tmp_path / "s", shard="a") as w:
        w.append(roll[0])
        w.flush()
        with pytest.raises(ShardLockedError, match="shards/a"):
            TrajectoryWriter(tmp_path / "s", shard="a")
        for t in range(1, 10):
            w.append(roll[t])
    # Nothing of the first writer was disturbed by the refused one.
    assert check_store(str(tmp_path / "s"), roll, 0)["steps"] == 10
    with TrajectoryWriter(tmp_path / "s", shard="a"):  # released at close
        pass


def test_reader_follows_a_writer_in_another_process(worker, tmp_path):
    """refresh() shows a growing committed prefix, every step exact, never garbage."""
    path = str(tmp_path / "s")
    cfg = dict(
        path=path, num_envs=2, lengths=[3, 4], steps=150, chunk_rows=8,
        commit_every_steps=5, pixels=[4, 4, 3], sleep=0.002, shard="shard-000000",
    )  # fmt: skip
    expected = rollout(2, 150, (3, 4), pixels=(4, 4, 3))
    pid = worker.call({"op": "spawn", "cfg": cfg})["pid"]
    try:
        deadline = time.monotonic() + 30
        reader, seen, locked = None, [], False
        while time.monotonic() < deadline:
            try:
                if reader is None:
                    reader = TrajectoryReader(path)
                else:
                    reader.refresh()
            except NotAStoreError:  # not created yet; any other error fails the test
                time.sleep(0.005)
                continue
            got = check_store(path, expected, 2)
            seen.append(got["steps"])
            if not locked and got["steps"]:
                with pytest.raises(ShardLockedError):
                    TrajectoryWriter(path, shard="shard-000000")
                locked = True
            if got["steps"] == 300:
                break
            time.sleep(0.01)
    finally:
        res = worker.call({"op": "reap", "pid": pid})
    assert res["code"] == 0, res
    assert seen == sorted(seen), f"the committed prefix shrank: {seen}"
    assert len(set(seen)) >= 3, f"the reader saw too few commits: {seen}"
    assert check_store(path, expected, 2)["steps"] == 300
