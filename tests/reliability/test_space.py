"""Running out of room: RLIMIT_FSIZE (EFBIG), a full filesystem (ENOSPC), read-only targets.

Each scenario runs in a forked child of the worker (limits and mounts stay there).
The recorder must raise a ``StoreWriteError`` naming a file of the store; what was
committed before stays exact; once room is back, recording resumes (a new shard,
and the failed shard continued after its last commit).
"""

from __future__ import annotations

import os

import pytest

from tests.reliability._worker import record


def _check_session(out: dict, path: str) -> None:
    assert out["error"] is not None, f"the writer never hit the limit: {out}"
    name, message, is_write_error = out["error"]
    assert is_write_error, f"expected StoreWriteError, got {name}: {message}"
    assert path in message, f"the error does not name a file of the store: {message}"
    assert isinstance(out["check_after_error"], dict), out["check_after_error"]
    counts = out["check_after_error"]["counts"]
    assert counts.get("lim/0", 0) >= out["acked"], (counts, out["acked"])
    assert counts["shard-000000/0"] == out["before"]
    assert out["resume"] == "ok", out["resume"]
    final = out["check_final"]
    assert isinstance(final, dict), final
    assert final["steps"] >= out["before"] + out["acked"] + 7


@pytest.mark.parametrize(
    ("where", "retry"),
    [("chunk", False), ("chunk", True), ("index", False), ("index", True)],
)
def test_file_size_limit(worker, tmp_path, where, retry):
    path = str(tmp_path / "s")
    if where == "chunk":  # a 100 KiB chunk file cannot be created under a 64 KiB limit
        cfg = dict(path=path, steps=300, warmup=20, obs_shape=[64], chunk_rows=400, limit=2**16)
    else:  # episodes.bin outgrows 4 KiB after 64 episodes
        cfg = dict(path=path, steps=600, warmup=20, chunk_rows=8, limit=4096 + 40)
    cfg["retry"] = retry
    res = worker.call({"op": "fsize", "cfg": cfg})
    assert res["raw"]["signal"] == 0, res["raw"]
    assert res["result"] is not None, res["raw"]
    _check_session(res["result"], path)


@pytest.mark.parametrize(
    ("retry", "obs"),
    [(False, 64), (True, 64), (False, 16384), (True, 16384)],
    ids=["small", "small-retry", "big-rows", "big-rows-retry"],
)
def test_disk_full_on_a_small_tmpfs(worker, tmp_path, retry, obs):
    """ENOSPC on a small tmpfs: an error, not a SIGBUS, and nothing committed is lost.

    With 64 KiB rows, every block's writes go through the writer's I/O thread: the
    error reaches the step loop at the next flush, after a roll-back to the last commit.
    """
    mount = tmp_path / "mnt"
    mount.mkdir()
    path = str(mount / "s")
    cfg = dict(
        kind="full",
        mount=str(mount),
        size="1m" if obs == 64 else "8m",
        leave=40_000,
        path=path,
        steps=3000,
        warmup=20,
        obs_shape=[obs],
        chunk_rows=64 if obs == 64 else 8,
        retry=retry,
    )
    res = worker.call({"op": "fs", "cfg": cfg})
    assert res["raw"]["signal"] == 0, f"the recorder died of signal {res['raw']['signal']}"
    out = res["result"]
    assert out is not None, res["raw"]["exc"] or res["raw"]
    if "skip" in out:
        pytest.skip(f"cannot make a private mount namespace here: {out['skip']}")
    _check_session(out, path)


def test_dump_to_a_full_logger_directory_is_a_logger_write_error(worker, tmp_path):
    """The CSV logger's directory fills up: dump() names the file, the store keeps its data,
    and once there is room again the next dump() logs."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    cfg = dict(kind="logger_full", mount=str(mount), path=str(tmp_path / "store"))
    res = worker.call({"op": "fs", "cfg": cfg})
    out = res["result"]
    assert out is not None, res["raw"]["exc"] or res["raw"]
    if "skip" in out:
        pytest.fail(f"no private mount namespace here: {out['skip']}")
    name, message, is_os_error, errno = out["error"]
    assert name == "LoggerWriteError", message
    assert is_os_error, out["error"]  # code written against the builtin works
    assert errno == 28, out["error"]  # ENOSPC
    assert str(mount / "exp" / "scalars") in message, message
    assert "CSVLogger could not write the" in message, message
    assert out["probe_after_error"] == {"status": "ok", "episodes": 8, "steps": 40}
    assert out["probe_final"] == {"status": "ok", "episodes": 10, "steps": 50}
    assert out["logged_after_room"], "nothing was logged once there was room again"


def test_read_only_target(worker, tmp_path):
    """A read-only directory: writers get StoreWriteError, the reader still reads."""
    mount = tmp_path / "ro"
    mount.mkdir()
    path = str(mount / "s")
    record(dict(path=path, steps=12))
    res = worker.call({"op": "fs", "cfg": dict(kind="readonly", mount=str(mount), path=path)})
    out = res["result"]
    assert out is not None, res["raw"]["exc"] or res["raw"]
    if "skip" in out:
        pytest.skip(f"cannot make a private mount namespace here: {out['skip']}")
    for name, (kind, message, is_write_error) in out["writers"].items():
        assert is_write_error, f"{name}: expected StoreWriteError, got {kind}: {message}"
        assert str(mount) in message, message
    assert out["probe"]["status"] == "ok", out["probe"]
    assert out["probe"]["steps"] == 12


def test_store_directory_removed_while_recording(tmp_path):
    """The store vanishes under a writer: the next commit raises StoreWriteError."""
    import shutil

    from tests.reliability._worker import rollout
    from trlrec.errors import StoreWriteError
    from trlrec.storage.writer import TrajectoryWriter

    roll = rollout(0, 40)
    path = tmp_path / "s"
    w = TrajectoryWriter(path, chunk_rows=4)
    for t in range(10):
        w.append(roll[t])
    w.flush()
    shutil.rmtree(path)

    def keep_recording() -> None:
        for t in range(10, 40):
            w.append(roll[t])
        w.flush()

    with pytest.raises(StoreWriteError, match=str(path)):
        keep_recording()
    with pytest.raises(StoreWriteError):
        w.close()
    # The lock is released: the path can be recorded to again from scratch.
    record(dict(path=str(path), steps=6))
    assert os.path.exists(path / "dataset.json")


def test_torn_index_tail_of_a_failed_append_is_dropped_on_the_next_commit(tmp_path):
    """A short write to episodes.bin (EFBIG/ENOSPC mid-record) must not shift later records."""
    from tests.reliability._worker import check_store, rollout
    from trlrec.storage.writer import TrajectoryWriter

    roll = rollout(0, 40)
    path = tmp_path / "s"
    w = TrajectoryWriter(path, shard="a")
    for t in range(12):
        w.append(roll[t])
    w.flush()
    for name, junk in (("episodes.bin", b"\x07" * 40), ("episode_meta.jsonl", b'{"to')):
        with open(path / "shards" / "a" / name, "ab") as f:
            f.write(junk)  # what a failed append leaves behind
    for t in range(12, 40):
        w.append(roll[t])
    w.close()
    assert check_store(str(path), roll, 0)["steps"] == 40
