"""TrajectoryWriter: appending, extending, batching, commits and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from tests.storage.helpers import IO_KINDS, assert_store_matches, assert_td_identical, record_rows
from trlrec import TrajectoryReader, TrajectoryWriter
from trlrec.errors import (
    ClosedError,
    ConfigError,
    NotAStoreError,
    SchemaError,
    ShardLockedError,
    StoreWriteError,
    UnsupportedDataError,
)
from trlrec.io.fault import FaultBackend

ROOT = Path(__file__).resolve().parents[2]


def test_single_env_round_trip_is_bit_exact(tmp_path, stub_env):
    rollout = stub_env.rollout(23, break_when_any_done=False)
    r = record_rows(tmp_path / "s", rollout)
    assert_store_matches(r, rollout)
    assert [r.episode_info(i)["flags"] for i in range(r.num_episodes)] == [1, 1, 1, 1, 2]


@pytest.mark.parametrize(("stage_steps", "chunk_rows"), [(None, None), (3, 16), (1, 7)])
def test_batched_streams_with_different_episode_lengths(
    tmp_path, stub_env_cls, stage_steps, chunk_rows
):
    env = stub_env_cls(episode_lengths=(3, 7, 4), batch_size=(3,), pixels=(6, 5, 3))
    rollout = env.rollout(40, break_when_any_done=False)
    r = record_rows(tmp_path / "b", rollout, stage_steps=stage_steps, chunk_rows=chunk_rows)
    assert_store_matches(r, rollout)


def test_extend_stitches_episodes_across_batches(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(3, 7, 4), batch_size=(3,))
    rollout = env.rollout(40, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "e", chunk_rows=16) as w:
        w.extend(rollout[:, :17])
        w.extend(rollout[:, 17:17])  # empty batch: nothing happens
        w.extend(rollout[:, 17:])
    assert_store_matches(TrajectoryReader(tmp_path / "e"), rollout)


def test_extend_of_one_stream(tmp_path, stub_env):
    rollout = stub_env.rollout(12, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "e") as w:
        w.extend(rollout[:8])
        w.extend(rollout[8:])
    assert_store_matches(TrajectoryReader(tmp_path / "e"), rollout)


def test_rollout_cut_then_new_rollout_starts_a_new_episode(tmp_path, stub_env):
    first = stub_env.rollout(3, break_when_any_done=False)  # cut mid-episode
    second = stub_env.rollout(5, break_when_any_done=False)  # starts with a reset
    with TrajectoryWriter(tmp_path / "c") as w:
        w.extend(first)
        w.extend(second)
    r = TrajectoryReader(tmp_path / "c")
    assert [len(e) for e in r.episodes] == [3, 5]
    assert [r.episode_info(i)["flags"] for i in range(2)] == [2, 1]
    assert_td_identical(r.episodes[0], first)
    assert_td_identical(r.episodes[1], second)


def test_end_episode_splits_even_when_states_continue(tmp_path, stub_env):
    rollout = stub_env.rollout(4, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "x") as w:
        w.append(rollout[0])
        w.append(rollout[1])
        w.end_episode()
        w.append(rollout[2])
        w.append(rollout[3])
    r = TrajectoryReader(tmp_path / "x")
    assert [len(e) for e in r.episodes] == [2, 2]


def test_collector_traj_ids_start_new_episodes(tmp_path, stub_env):
    rollout = stub_env.rollout(6, break_when_any_done=False)
    ids = torch.tensor([0, 0, 1, 1, 1, 2])
    rollout.set(("collector", "traj_ids"), ids)
    with TrajectoryWriter(tmp_path / "t") as w:
        w.extend(rollout)
    r = TrajectoryReader(tmp_path / "t")
    assert [len(e) for e in r.episodes] == [2, 3, 1]


def test_commits_at_episode_end_are_visible_before_close(tmp_path, stub_env):
    rollout = stub_env.rollout(7, break_when_any_done=False)
    w = TrajectoryWriter(
        tmp_path / "l", commit_every_seconds=3600, min_commit_interval=0, background=False
    )
    for t in range(7):
        w.append(rollout[t])
    live = TrajectoryReader(tmp_path / "l")
    assert live.num_episodes == 1
    assert live.num_steps == 5
    w.flush()
    assert live.refresh().num_steps == 7
    assert live.episode_info(1)["flags"] == 4  # still open
    w.close()
    assert live.refresh().episode_info(1)["flags"] == 2


def test_background_commit_at_episode_end_becomes_visible(tmp_path, stub_env):
    rollout = stub_env.rollout(5, break_when_any_done=False)
    w = TrajectoryWriter(
        tmp_path / "bg", commit_every_seconds=3600, min_commit_interval=0, background=True
    )
    for t in range(5):
        w.append(rollout[t])
    deadline = time.monotonic() + 10
    r = TrajectoryReader(tmp_path / "bg") if (tmp_path / "bg" / "dataset.json").exists() else None
    while time.monotonic() < deadline and (r is None or r.refresh().num_steps < 5):
        time.sleep(0.01)
        r = TrajectoryReader(tmp_path / "bg")
    assert r.num_episodes == 1
    assert_td_identical(r.episodes[0], rollout)
    w.close()


def test_episode_end_commits_are_rate_limited(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(1,))
    rollout = env.rollout(6, break_when_any_done=False)
    w = TrajectoryWriter(
        tmp_path / "rl", commit_every_seconds=3600, min_commit_interval=3600, background=False
    )
    for t in range(6):
        w.append(rollout[t])
    assert not (w.shard_path / "COMMIT").exists()  # six episode ends, no commit yet
    w.close()
    assert TrajectoryReader(tmp_path / "rl").num_episodes == 6


def test_commit_every_steps(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(100,))
    rollout = env.rollout(10, break_when_any_done=False)
    w = TrajectoryWriter(
        tmp_path / "n", commit_every_steps=4, commit_every_seconds=3600, background=False
    )
    for t in range(10):
        w.append(rollout[t])
    assert TrajectoryReader(tmp_path / "n").num_steps == 8
    w.close()


def test_metadata_and_episode_metadata(tmp_path, stub_env):
    rollout = stub_env.rollout(8, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "m", metadata={"agent": "random", "seed": 3}) as w:
        for t in range(8):
            w.append(rollout[t], episode_metadata={"t": t} if t in (1, 3, 6) else None)
    r = TrajectoryReader(tmp_path / "m")
    assert r.metadata == {"agent": "random", "seed": 3}
    assert [r.episode_metadata(i) for i in range(2)] == [{"t": 3}, {"t": 6}]


def test_reopening_appends_a_new_shard(tmp_path, stub_env):
    a = stub_env.rollout(5, break_when_any_done=False)
    b = stub_env.rollout(5, break_when_any_done=False)
    record_rows(tmp_path / "r", a)
    r = record_rows(tmp_path / "r", b)
    assert len(r.shards) == 2
    assert r.num_steps == 10
    assert_td_identical(r.episodes[0], a)
    assert_td_identical(r.episodes[1], b)


def test_named_shard_continues_after_its_last_commit(tmp_path, stub_env):
    a = stub_env.rollout(5, break_when_any_done=False)
    b = stub_env.rollout(5, break_when_any_done=False)
    record_rows(tmp_path / "r", a, shard="worker0", chunk_rows=4)
    r = record_rows(tmp_path / "r", b, shard="worker0")
    assert len(r.shards) == 1
    assert r.num_episodes == 2
    assert_td_identical(r.episodes[1], b)


def test_second_writer_on_a_shard_is_refused(tmp_path):
    with (
        TrajectoryWriter(tmp_path / "k", shard="w"),
        pytest.raises(ShardLockedError, match="held by another writer"),
    ):
        TrajectoryWriter(tmp_path / "k", shard="w")


def test_schema_change_is_refused_and_committed_data_survives(tmp_path, stub_env):
    rollout = stub_env.rollout(6, break_when_any_done=False)
    w = TrajectoryWriter(tmp_path / "bad")
    for t in range(5):
        w.append(rollout[t])
    bad = rollout[5].clone()
    bad["observation"] = torch.zeros(5)
    with pytest.raises(SchemaError, match=r"'observation'.*\(4,\).*got shape \(5,\)"):
        w.append(bad)
    bad = rollout[5].clone()
    bad["next", "reward"] = bad["next", "reward"].double()
    with pytest.raises(SchemaError, match=r"\('next', 'reward'\).*torch.float32.*torch.float64"):
        w.append(bad)
    with pytest.raises(SchemaError, match="'action' is missing"):
        w.append(rollout[5].exclude("action"))
    extra = rollout[5].clone()
    extra["other"] = torch.zeros(1)
    w.flush()
    with pytest.raises(SchemaError, match=r"keys \['other'\] are not in the recording"):
        w.append(extra)
    w.append(rollout[5])
    w.close()
    r = TrajectoryReader(tmp_path / "bad")
    assert r.num_steps == 6
    assert_td_identical(r.episodes[0], rollout[:5])


def test_non_tensor_data_is_refused_with_the_key(tmp_path, stub_env):
    step = stub_env.rollout(1, break_when_any_done=False)[0]
    step["note"] = "hello"
    with (
        TrajectoryWriter(tmp_path / "nt") as w,
        pytest.raises(UnsupportedDataError, match=r"'note'.*non-tensor"),
    ):
        w.append(step)


def test_bad_calls(tmp_path, stub_env):
    rollout = stub_env.rollout(2, break_when_any_done=False)
    w = TrajectoryWriter(tmp_path / "c")
    with pytest.raises(SchemaError, match="no 'next'"):
        w.append(rollout[0].exclude("next"))
    with pytest.raises(SchemaError, match="takes a TensorDict"):
        w.append({"observation": 1})
    with pytest.raises(SchemaError, match="time dimension last"):
        w.extend(rollout[0])
    w.append(rollout[0])
    with pytest.raises(SchemaError, match=r"batch size \(2, 2\)"):
        w.extend(rollout.expand(2, 2))
    with pytest.raises(SchemaError, match="episode_metadata has 2 entries"):
        w.append(rollout[1], episode_metadata=[{}, {}])
    with pytest.raises(UnsupportedDataError, match="JSON"):
        w.append(rollout[1], episode_metadata={"x": object()})
    w.close()
    with pytest.raises(ClosedError, match="closed"):
        w.append(rollout[1])
    with pytest.raises(ConfigError, match="chunk_rows must be a positive int"):
        TrajectoryWriter(tmp_path / "d", chunk_rows=0)
    with pytest.raises(UnsupportedDataError, match="metadata must be JSON"):
        TrajectoryWriter(tmp_path / "e", metadata={"f": lambda: 0})


def test_refuses_a_non_empty_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotAStoreError, match="not a trlrec store"):
        TrajectoryWriter(tmp_path)


def test_nothing_on_disk_is_pickled(tmp_path, stub_env):
    record_rows(tmp_path / "p", stub_env.rollout(7, break_when_any_done=False))
    for f in (tmp_path / "p").rglob("*"):
        if f.suffix == ".json" or f.name == "COMMIT":
            json.loads(f.read_text())
        if f.is_file():
            assert not f.read_bytes().startswith(b"\x80"), f"{f} looks like a pickle"


def test_chunks_open_with_plain_tensordict(tmp_path, stub_env):
    rollout = stub_env.rollout(7, break_when_any_done=False)
    record_rows(tmp_path / "p", rollout)
    chunk = next((tmp_path / "p").rglob("chunk-000000"))
    td = TensorDict.load_memmap(chunk)
    assert set(td.keys(True, True)) == {
        "observation", "action", "done", "terminated", "truncated", ("next", "reward")
    }  # fmt: skip
    # T + 1 state rows per episode: 5 transitions then the final observation, then episode 2.
    assert torch.equal(td["observation"][:5], rollout["observation"][:5])
    assert torch.equal(td["observation"][5], rollout["next", "observation"][4])
    assert torch.equal(td["observation"][6:8], rollout["observation"][5:7])
    assert torch.equal(td["action"][:5], rollout["action"][:5])
    assert torch.equal(td["next", "reward"][6:8], rollout["next", "reward"][5:7])


def test_many_streams_stay_under_the_open_file_limit(tmp_path, stub_env_cls):
    import resource

    env = stub_env_cls(episode_lengths=(2, 3), batch_size=(60,))
    rollout = env.rollout(4, break_when_any_done=False)  # 60 streams x 6 keys = 360 files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(200, hard), hard))
    try:
        with TrajectoryWriter(tmp_path / "fd", chunk_rows=8) as w:
            for t in range(4):
                w.append(rollout[:, t])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert_store_matches(TrajectoryReader(tmp_path / "fd"), rollout)


# a small state is restaged every step; a big one (> 256 bytes) is aliased when unmodified
@pytest.mark.parametrize("size", [2, 128])
def test_root_modified_in_place_after_append_is_not_taken_for_the_previous_next(tmp_path, size):
    def step(obs, nxt, done=False):
        return TensorDict(
            {
                "observation": obs,
                "action": torch.zeros(1),
                "next": {"observation": nxt, "reward": torch.ones(1), "done": torch.tensor([done])},
            },
            batch_size=[],
        )

    x = torch.full((size,), 1.0)
    with TrajectoryWriter(tmp_path / "v", background=False) as w:
        w.append(step(torch.zeros(size), x))
        y = torch.full((size,), 2.0)
        w.append(step(x, y))  # the same tensor, unmodified: continues the episode
        y.add_(10)  # modified in place after it was recorded as a "next" state
        w.append(step(y, torch.full((size,), 3.0)))
    r = TrajectoryReader(tmp_path / "v")
    assert [len(e) for e in r.episodes] == [2, 1]
    assert r.episodes[0]["next", "observation"][:, 0].tolist() == [1.0, 2.0]
    assert r.episodes[1]["observation"][0, 0].item() == 12.0


def test_a_commit_restarts_the_step_count_to_the_next_one(tmp_path, stub_env_cls):
    batch = stub_env_cls(episode_lengths=(50,)).rollout(600, break_when_any_done=False)
    path = tmp_path / "c"
    committed = []
    with TrajectoryWriter(
        path,
        background=False,
        commit_every_steps=1000,
        commit_every_seconds=3600,
        commit_on_done=False,
    ) as w:
        for _ in range(4):
            w.extend(batch)
            committed.append(TrajectoryReader(path).num_steps)
    assert committed == [0, 1200, 1200, 2400]


def test_background_io_is_the_default_and_records_the_same(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(3, 4), batch_size=(2,), pixels=(84, 84, 3))
    rollout = env.rollout(9, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "default") as w:
        assert w.background is True
    for background in (False, True):
        path = tmp_path / f"bg{background}"
        # 2 steps of 84x84x3 pixels are 42 KiB a stream: 4 steps make deferred writes
        with TrajectoryWriter(path, background=background, stage_steps=4) as w:
            assert w.background is background
            for t in range(9):
                w.append(rollout[:, t])
            assert w._rec.io.name in (("thread", "native") if background else ("inline",))
        assert_store_matches(TrajectoryReader(path), rollout)


def assert_goes_on_from_the_commit_at_10(w, path, rollout):
    """After a roll back to the commit at step 10 (5-step episodes), steps 20-30 are
    recorded: the store holds episodes 0-10 and 20-30, bit for bit."""
    for t in range(20, 30):
        w.append(rollout[t])
    w.close()
    r = TrajectoryReader(path)
    assert [len(e) for e in r.episodes] == [5, 5, 5, 5]
    for i, start in enumerate((0, 5, 20, 25)):
        assert_td_identical(r.episodes[i], rollout[start : start + 5])


@pytest.mark.parametrize("kind", IO_KINDS)
def test_a_commit_failing_on_the_io_backend_rolls_back_and_names_commit(
    tmp_path, stub_env_cls, kind
):
    env = stub_env_cls(episode_lengths=(5,), pixels=(6, 5, 3))
    rollout = env.rollout(30, break_when_any_done=False)
    path = tmp_path / "c"
    w = TrajectoryWriter(path, io=kind, stage_steps=4, commit_every_steps=4, min_commit_interval=0)
    assert w._rec.io.name == kind
    for t in range(10):
        w.append(rollout[t])
    w.flush()
    blocker = w.shard_path / ".COMMIT.tmp"
    blocker.mkdir()  # the next commit's temporary file cannot be written: EISDIR

    def append_and_flush():
        for t in range(10, 20):  # commits every block, on the I/O backend
            w.append(rollout[t])
        w.flush()

    with pytest.raises(StoreWriteError, match=r"could not write '.*COMMIT'"):
        append_and_flush()
    blocker.rmdir()
    assert TrajectoryReader(path).num_steps == 10  # the last good commit
    assert_goes_on_from_the_commit_at_10(w, path, rollout)


@pytest.mark.parametrize("kind", IO_KINDS)
def test_io_write_error_rolls_back_to_the_last_commit(tmp_path, stub_env_cls, monkeypatch, kind):
    env = stub_env_cls(episode_lengths=(5,), pixels=(84, 84, 3))
    rollout = env.rollout(30, break_when_any_done=False)
    path = tmp_path / "io"
    # chunks of 4 rows: the roll back deletes chunks that the I/O thread had open, and
    # recreates them (a thread must not write through its stale descriptors)
    w = TrajectoryWriter(path, io=kind, stage_steps=4, chunk_rows=4, min_commit_interval=3600)
    for t in range(10):
        w.append(rollout[t])
    w.flush()
    # the pixel writes go to a directory: EISDIR, on whichever thread does them
    unwritable = tmp_path / "elsewhere" / "pixels.memmap"
    unwritable.mkdir(parents=True)
    real_write = w._rec.io.write

    def write(file, data, offset, group, keep=False):
        where = str(unwritable) if "pixels" in file else file
        return real_write(where, data, offset, group, keep)

    monkeypatch.setattr(w._rec.io, "write", write)

    def append_and_flush():
        for t in range(10, 20):
            w.append(rollout[t])
        w.flush()

    with pytest.raises(StoreWriteError, match=r"could not write '.*pixels\.memmap'.*committed"):
        append_and_flush()
    monkeypatch.undo()
    r = TrajectoryReader(path)
    assert r.num_steps == 10
    assert_td_identical(r.episodes[1], rollout[5:10])
    assert_goes_on_from_the_commit_at_10(w, path, rollout)


@pytest.mark.parametrize("nth", [1, 7, 40])
def test_a_full_disk_at_any_write_keeps_every_commit_and_names_the_file(
    tmp_path, stub_env_cls, nth
):
    env = stub_env_cls(episode_lengths=(5,), pixels=(6, 5, 3))
    rollout = env.rollout(30, break_when_any_done=False)
    path = tmp_path / "f"
    w = TrajectoryWriter(path, stage_steps=4, commit_every_steps=4, min_commit_interval=0)
    for t in range(10):
        w.append(rollout[t])
    w.close()
    io = FaultBackend(fail_write=nth)  # ENOSPC from the nth write on
    w = TrajectoryWriter(path, io=io, stage_steps=4, commit_every_steps=4, min_commit_interval=0)

    def record_the_rest():
        for t in range(10, 30):
            w.append(rollout[t])
        w.flush()

    with pytest.raises(StoreWriteError, match=r"could not write '.*': No space left on device"):
        record_the_rest()
    assert io.failures >= 1
    r = TrajectoryReader(path)
    assert r.num_steps >= 10  # the first shard, and whatever the second committed
    assert_td_identical(r.episodes[0], rollout[0:5])
    assert_td_identical(r.episodes[1], rollout[5:10])
    io.heal()  # room again: the writer goes on from its last commit
    for t in range(25, 30):
        w.append(rollout[t])
    w.close()
    r = TrajectoryReader(path)
    assert_td_identical(r.episodes[-1], rollout[25:30])
    # every episode kept is the start of one of the rollout's (5-step episodes), bit for bit
    starts = {rollout[s]["observation"].numpy().tobytes(): s for s in range(0, 30, 5)}
    for ep in r.episodes:
        s = starts[ep[0]["observation"].numpy().tobytes()]
        assert_td_identical(ep, rollout[s : s + len(ep)])


def _run_forking_script(script: str, tmp_path: Path) -> tuple[TensorDict, TrajectoryReader]:
    """Run ``script`` (which forks, then saves its rollout); its rollout and a reader of ``s``.

    The child's exit code must be 0: the script prints it as "exit N".
    """
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "exit 0" in done.stdout
    rollout = torch.load(tmp_path / "rollout.pt", weights_only=False)
    return rollout, TrajectoryReader(tmp_path / "s")


@pytest.mark.parametrize("kind", IO_KINDS)
def test_a_forked_child_cannot_write_its_parents_shard(tmp_path, kind):
    # With the Python backends the child's copy used to write and commit the parent's
    # rows (the native one raised a RuntimeError): now every call is a ClosedError
    # saying whose shard it is, close() leaves it, and the parent goes on bit for bit.
    script = f"""
import os, sys, torch
from tests.conftest import StubEnv
from trlrec import TrajectoryWriter
from trlrec.errors import ClosedError
env = StubEnv(episode_lengths=(100,))
rollout = env.rollout(40, break_when_any_done=False)
w = TrajectoryWriter({str(tmp_path / "s")!r}, io={kind!r}, stage_steps=4)
empty = TrajectoryWriter({str(tmp_path / "e")!r}, io={kind!r})  # nothing appended yet
for t in range(20):
    w.append(rollout[t])
pid = os.fork()
if pid == 0:
    code = 0
    for call in (lambda: w.append(rollout[20]), w.flush, lambda: empty.append(rollout[0])):
        try:
            call()
            code = 3
        except ClosedError as err:
            if f"belongs to process {{os.getppid()}}" not in str(err):
                code = 4
    w.close()
    empty.close()  # must not remove the parent's (empty) shard
    os._exit(code)
_, status = os.waitpid(pid, 0)
assert empty.shard_path.is_dir()
for t in range(20, 40):
    w.append(rollout[t])
w.close()
empty.close()
torch.save(rollout, {str(tmp_path / "rollout.pt")!r})
print("exit", os.waitstatus_to_exitcode(status))
"""
    rollout, r = _run_forking_script(script, tmp_path)
    assert len(r.shards) == 1
    assert_store_matches(r, rollout)


def test_a_forked_child_exiting_leaves_the_parents_writer_alone(tmp_path):
    script = f"""
import os, sys, torch
from tests.conftest import StubEnv
from trlrec import TrajectoryWriter
env = StubEnv(episode_lengths=(100,), pixels=(84, 84, 3))
rollout = env.rollout(40, break_when_any_done=False)
w = TrajectoryWriter({str(tmp_path / "s")!r}, stage_steps=4)
for t in range(20):
    w.append(rollout[t])
pid = os.fork()
if pid == 0:
    sys.exit(0)  # runs the atexit hooks of the child
_, status = os.waitpid(pid, 0)
for t in range(20, 40):
    w.append(rollout[t])
w.close()
torch.save(rollout, {str(tmp_path / "rollout.pt")!r})
print("exit", os.waitstatus_to_exitcode(status))
"""
    rollout, r = _run_forking_script(script, tmp_path)
    assert r.num_episodes == 1
    assert_td_identical(r.episodes[0], rollout)
