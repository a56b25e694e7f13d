"""OS errors of a commit are trlrec errors naming the file (issue 18)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.reliability._worker import check_store, rollout
from trlrec.errors import StoreWriteError
from trlrec.io.fault import FaultBackend
from trlrec.storage.writer import TrajectoryWriter


def test_emfile_replacing_commit_is_a_store_write_error(tmp_path):
    roll = rollout(2, 12, (3, 5))
    io = FaultBackend(fail_replace=lambda p: p.endswith("COMMIT"), code=errno.EMFILE)
    w = TrajectoryWriter(tmp_path / "s", io=io)
    w.extend(roll[:, :6])
    with pytest.raises(StoreWriteError, match="COMMIT") as info:
        w.flush()
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EMFILE
    io.heal()
    w.close()


@pytest.mark.parametrize("durable", [False, True])
def test_emfile_creating_or_syncing_the_index_is_a_store_write_error(
    tmp_path, monkeypatch, durable
):
    """The commit's own file operations (creating episodes.bin, fsyncs) name the file."""
    roll = rollout(0, 12, (3,))
    w = TrajectoryWriter(tmp_path / "s", shard="shard-000000", io="inline", durable=durable)
    for t in range(6):
        w.append(roll[t])
    w.flush()
    real_touch = Path.touch

    def emfile(self, *args, **kwargs):
        if self.name == "episode_meta.jsonl":
            raise OSError(errno.EMFILE, "Too many open files", str(self))
        return real_touch(self, *args, **kwargs)

    (tmp_path / "s/shards/shard-000000/episode_meta.jsonl").unlink(missing_ok=True)
    monkeypatch.setattr(Path, "touch", emfile)
    with pytest.raises(StoreWriteError, match=r"episode_meta\.jsonl'.*ulimit -n") as info:
        w.flush()
    assert info.value.errno == errno.EMFILE
    monkeypatch.undo()
    w.close()
    assert check_store(str(tmp_path / "s"), roll[:6], 0)["steps"] >= 6
