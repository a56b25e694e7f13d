"""Creating a store: from several processes at once, durably; giving back an empty shard."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from tests.reliability._worker import check_store, rollout
from trlrec.errors import ShardLockedError
from trlrec.storage import dataset, recording
from trlrec.storage.dataset import create_dataset
from trlrec.storage.writer import TrajectoryWriter


def test_store_created_meanwhile_by_another_process_is_opened(tmp_path, monkeypatch):
    """The race, made certain: another process creates the store (marker, specs, a shard)
    between this one's ``exists()`` check and its listing of the directory."""
    path = tmp_path / "s"
    listed = Path.iterdir

    def other_process_first(self):
        if self == path:
            monkeypatch.setattr(Path, "iterdir", listed)
            pid = os.fork()
            if pid == 0:  # the other process: creates the store and records into it
                try:
                    with TrajectoryWriter(path, io="inline") as w:
                        w.append(rollout(0, 1)[0])
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        return listed(self)

    monkeypatch.setattr(Path, "iterdir", other_process_first)
    info = create_dataset(path, {})
    assert info["format"] == "trlrec"
    assert sorted(p.name for p in path.iterdir()) == ["dataset.json", "shards"]


def _create(path: str, barrier, queue) -> None:
    barrier.wait()
    try:
        create_dataset(Path(path), {})
        dataset.new_shard_dir(Path(path), None)
        queue.put("ok")
    except BaseException as err:  # reported to the test
        queue.put(f"{type(err).__name__}: {err}")
    finally:
        queue.close()
        queue.join_thread()
        os._exit(0)


def test_processes_creating_one_store_at_once_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = str(tmp_path / f"s{round_}")
        n = 6
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_create, args=(path, barrier, queue)) for _ in range(n)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert results == ["ok"] * n
        assert len(os.listdir(Path(path) / "shards")) == n


def test_closing_an_empty_writer_keeps_the_lock_until_its_shard_is_gone(tmp_path, monkeypatch):
    """A second writer of the same named shard cannot slip in between (and lose its steps)."""
    path = tmp_path / "s"
    attempts = []
    rmtree = shutil.rmtree

    def remove(p, *args, **kwargs):
        if Path(p).name == "a":
            with pytest.raises(ShardLockedError, match="held by another writer"):
                TrajectoryWriter(path, shard="a")
            attempts.append(p)
        return rmtree(p, *args, **kwargs)

    monkeypatch.setattr(recording.shutil, "rmtree", remove)
    TrajectoryWriter(path, shard="a").close()  # recorded nothing: its shard goes
    assert attempts
    assert not (path / "shards" / "a").exists()
    roll = rollout(0, 6)
    with TrajectoryWriter(path, shard="a") as w:
        for t in range(6):
            w.append(roll[t])
    assert check_store(str(path), roll, 0)["steps"] == 6


def test_durable_commit_fsyncs_every_new_directory_entry(tmp_path, monkeypatch):
    """The store, ``shards/``, the shard, ``streams/``, each stream and each chunk directory."""
    synced: list[str] = []
    fsync = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    store = tmp_path / "new" / "s"
    roll = rollout(2, 12, (3, 5))
    with TrajectoryWriter(store, durable=True, chunk_rows=4, io="inline", shard="x") as w:
        w.extend(roll)
        w.flush()
        shard = store / "shards" / "x"
        chunks = sorted(str(p) for p in shard.glob("streams/*/chunk-*"))
        assert len(chunks) == 8  # 2 streams, 13+ rows of 4 each
        want = {str(tmp_path), str(tmp_path / "new"), str(store), str(store / "shards"),
                str(shard), str(shard / "streams"), str(shard / "streams/0"),
                str(shard / "streams/1"), *chunks}  # fmt: skip
        assert want - set(synced) == set()
    # the marker's bytes were fsync'ed before it was linked (its temp file)
    assert any(os.path.basename(p).startswith(".dataset.json.") for p in synced)
    assert check_store(str(store), roll, 2)["steps"] == 24
    assert dataset.open_dataset(store)["format"] == "trlrec"
