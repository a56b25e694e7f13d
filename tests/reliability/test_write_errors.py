"""OS errors of a commit are trlrec errors naming the file (issue 18)."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import pytest

from tests.reliability._worker import check_store, in_child, rollout
from trlrec.errors import StoreWriteError
from trlrec.io.fault import FaultBackend
from trlrec.native import extension
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


def _no_free_descriptor() -> int:
    """Lower RLIMIT_NOFILE so that every descriptor below it is in use; the old soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    while True:  # fill the gaps below the highest open descriptor
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd > top:
            os.close(fd)
            break
        fillers.append(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd, hard))
    return soft


@pytest.mark.skipif(
    extension("pwrite") is None, reason="the native backend needs the C extension (on)"
)
def test_emfile_in_the_native_backends_commit_is_a_store_write_error(tmp_path):
    """A real EMFILE inside the native I/O thread's commit: a trlrec error naming the file,
    the last commit intact, and a new writer continues the shard once descriptors are back."""
    roll = rollout(0, 30, (5,))

    def child() -> str:
        w = TrajectoryWriter(tmp_path / "s", io="native", chunk_rows=64, durable=False)
        for t in range(10):
            w.append(roll[t])
        w.flush()
        for t in range(10, 20):  # rows of the same chunk: its file is open already
            w.append(roll[t])
        soft = _no_free_descriptor()
        try:
            w.flush()
            return "no error"
        except StoreWriteError as err:
            got = f"{isinstance(err, OSError)} {err.errno} {err}"
        finally:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )
        committed = check_store(str(tmp_path / "s"), roll, 0)["steps"]
        w.close()
        w = TrajectoryWriter(tmp_path / "s", shard=w.shard_path.name, io="native")
        for t in range(committed, 30):
            w.append(roll[t])
        w.close()
        return f"{got}\n{committed} {check_store(str(tmp_path / 's'), roll, 0)['steps']}"

    out = in_child(child)
    first, _, counts = out.partition("\n")
    assert first.startswith(f"True {errno.EMFILE} "), out
    assert str(tmp_path / "s") in first, out
    assert "ulimit -n" in first, out
    assert counts == "10 30", out
