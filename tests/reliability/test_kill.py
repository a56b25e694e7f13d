"""SIGKILL a recorder at random instants and at each step of the commit protocol.

After every kill: the store opens, every step acknowledged as committed (a
``flush()`` or a commit-every-step ``append`` that returned) is there, every
committed episode is bit-identical to the deterministic rollout, the episodes of
a stream tile its transitions with no gap (no partial step is ever visible), and
a new writer can append, to a new shard or continuing the killed one.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.reliability._worker import check_store, record, rollout
from trlrec.errors import NotAStoreError
from trlrec.storage.reader import TrajectoryReader

CONFIGS = [
    # chunk roll-over every 3 rows, a commit at every step
    dict(num_envs=0, steps=400, chunk_rows=3, commit_every_steps=1, flush_every=4),
    # batched, episodes of different lengths, roll-over every 4 rows
    dict(
        num_envs=3, steps=300, lengths=[2, 5, 3], chunk_rows=4, commit_every_steps=1, flush_every=3
    ),
    # pixels, staged writes (3 steps) committed by explicit flushes every 5 steps
    dict(
        num_envs=2,
        steps=400,
        pixels=[8, 8, 3],
        chunk_rows=16,
        stage_steps=3,
        commit_every_steps=7,
        flush_every=5,
    ),
    # collector-style extend of [B, 6] blocks over 5-row chunks
    dict(
        num_envs=2,
        steps=900,
        lengths=[4, 7],
        mode="extend",
        block=6,
        chunk_rows=5,
        commit_every_steps=1,
        flush_every=12,
    ),
    # fsync'ed commits
    dict(num_envs=0, steps=300, chunk_rows=2, commit_every_steps=1, durable=True, flush_every=2),
    # the Python I/O thread (what a machine without a compiler gets)
    dict(num_envs=2, steps=300, chunk_rows=4, commit_every_steps=3, flush_every=4, io="thread"),
]
ITERATIONS = 40
BUDGET_S = 35


def _first_shard(path: str | Path) -> str:
    """The name of the store's only shard (the killed writer's); "" before it exists."""
    shards = sorted((Path(path) / "shards").iterdir()) if (Path(path) / "shards").is_dir() else []
    assert len(shards) <= 1, f"expected the killed writer's shard only, found {shards}"
    return shards[0].name if shards else ""


def _expected(cfg: dict) -> object:
    return rollout(
        cfg.get("num_envs", 0),
        cfg["steps"],
        tuple(cfg.get("lengths", (5,))),
        tuple(cfg.get("obs_shape", (4,))),
        tuple(cfg["pixels"]) if cfg.get("pixels") else None,
    )


def _verify(cfg: dict, acked: int) -> int:
    """Check the killed store; return the committed transitions per stream."""
    path = cfg["path"]
    try:
        got = check_store(path, _expected(cfg), cfg.get("num_envs", 0))
    except NotAStoreError:
        # Killed before the store's marker was written: nothing could have been committed.
        assert acked == 0, f"{path}: {acked} steps were committed but the store does not open"
        return 0
    streams = max(1, cfg.get("num_envs", 0))
    counts = [got["counts"].get(f"{_first_shard(path)}/{b}", 0) for b in range(streams)]
    assert len(set(counts)) == 1, f"streams committed different step counts: {counts}"
    assert counts[0] >= acked, f"{acked} steps were acknowledged, {counts[0]} are in the store"
    assert counts[0] <= cfg["steps"]
    return counts[0]


def _continue(cfg: dict, committed: int, same_shard: bool) -> None:
    """A new writer appends after the kill; everything still checks."""
    more = min(cfg["steps"], committed + 11)
    cont = dict(cfg, start=committed, steps=more, durable=False)
    if same_shard:
        cont["shard"] = _first_shard(cfg["path"])
    else:
        cont["start"] = 0
        cont["steps"] = 11
    try:
        before = TrajectoryReader(cfg["path"]).num_steps
    except NotAStoreError:
        before = 0
    record(cont)
    got = check_store(cfg["path"], _expected(cfg), cfg.get("num_envs", 0))
    streams = max(1, cfg.get("num_envs", 0))
    if same_shard:
        first = _first_shard(cfg["path"])
        assert all(got["counts"][f"{first}/{b}"] == more for b in range(streams)), got
    else:
        assert got["steps"] == before + 11 * streams, (before, got)


def test_sigkill_at_random_instants(worker, tmp_path):
    rng = random.Random(8)
    start = time.monotonic()
    kinds = set()
    for i in range(ITERATIONS):
        if time.monotonic() - start > BUDGET_S and i >= 12:
            break
        cfg = dict(CONFIGS[i % len(CONFIGS)], path=str(tmp_path / f"s{i}"))
        delay = rng.uniform(0.01, 0.35)
        res = worker.call({"op": "kill_at", "cfg": cfg, "delay": delay})
        assert res["exc"] is None, res["exc"]
        kinds.add("killed" if res["killed_by_us"] else "finished")
        committed = _verify(cfg, res["acked"])
        if i % 4 == 1:
            _continue(cfg, committed, same_shard=True)
        elif i % 4 == 3:
            _continue(cfg, committed, same_shard=False)
    assert "killed" in kinds


CRASHPOINTS = [
    (target, when, nth)
    for target, nths in (
        ("chunk", (1, 2, 4)),
        ("write_rows", (1, 3, 8)),
        ("append", (1, 2, 5)),
        ("replace", (1, 2, 3, 6)),
    )
    for when in ("before", "after")
    for nth in nths
] + [("fsync", when, nth) for when in ("before", "after") for nth in (1, 4, 9)]


def test_sigkill_at_each_step_of_the_commit_protocol(worker, tmp_path):
    """Kill exactly before/after chunk creation, row copies, index appends, renames, fsyncs."""
    for j, (target, when, nth) in enumerate(CRASHPOINTS):
        cfg = dict(
            path=str(tmp_path / f"{target}-{when}-{nth}"),
            num_envs=2,
            lengths=[3, 4],
            steps=40,
            chunk_rows=3,
            commit_every_steps=1,
            flush_every=1 + j % 3,
            durable=target == "fsync",
        )
        res = worker.call(
            {"op": "crashpoint", "cfg": cfg, "target": target, "nth": nth, "when": when}
        )
        assert res["exc"] is None, res["exc"]
        assert res["signal"] == 9 or res["closed"], res
        committed = _verify(cfg, res["acked"])
        if j % 3 == 0:
            _continue(cfg, committed, same_shard=True)
        elif j % 3 == 1:
            _continue(cfg, committed, same_shard=False)


def test_new_writer_after_kill_before_any_commit(worker, tmp_path):
    """A store killed while being created (no marker, no COMMIT) can still be recorded to."""
    for target, nth in (("link", 1), ("replace", 1), ("replace", 2)):
        path = tmp_path / f"early-{target}{nth}"
        cfg = dict(path=str(path), steps=20, commit_every_steps=1)
        res = worker.call(
            {"op": "crashpoint", "cfg": cfg, "target": target, "nth": nth, "when": "before"}
        )
        assert res["signal"] == 9
        assert res["acked"] == 0
        _continue(cfg, 0, same_shard=False)
        assert TrajectoryReader(path).num_steps == 11


@pytest.mark.parametrize("durable", [False, True])
def test_kill_between_chunk_rows_and_commit_keeps_previous_commit(worker, tmp_path, durable):
    """Rows written to a chunk but not committed are invisible, and dropped on resume."""
    cfg = dict(
        path=str(tmp_path / "s"),
        steps=30,
        chunk_rows=4,
        commit_every_steps=1,
        flush_every=1,
        durable=durable,
    )
    # The 3rd row copy happens after two committed steps; kill right after it.
    res = worker.call(
        {"op": "crashpoint", "cfg": cfg, "target": "write_rows", "nth": 3, "when": "after"}
    )
    assert res["signal"] == 9
    committed = _verify(cfg, res["acked"])
    assert res["acked"] <= committed <= res["acked"] + 1
    rows = sorted(
        (tmp_path / "s" / "shards" / _first_shard(cfg["path"]) / "streams" / "0").iterdir()
    )
    assert rows, "the killed writer created no chunk"
    _continue(cfg, committed, same_shard=True)


@pytest.mark.parametrize(
    "clock",
    [
        dict(commit_every_seconds=0.5, commit_on_done=False),  # the time trigger
        dict(commit_every_seconds=3600.0, min_commit_interval=0.3),  # the episode-end one
    ],
    ids=["every_seconds", "episode_end"],
)
def test_a_writer_idle_after_recording_commits_by_its_own_clock(worker, tmp_path, clock):
    """A collect-then-train loop: steps appended, then no call at all, then SIGKILL.

    What was appended is committed within commit_every_seconds (finished episodes
    within min_commit_interval) although nothing calls the writer.
    """
    cfg = dict(
        path=str(tmp_path / "idle"),
        num_envs=2,
        lengths=[5, 5],
        steps=300,
        commit_every_steps=10**6,
        idle=60,
        **clock,
    )
    res = worker.call({"op": "kill_at", "cfg": cfg, "delay": 4.0})
    assert res["exc"] is None, res["exc"]
    assert res["killed_by_us"], res
    assert "idle" in res["out"].split(), res
    assert _verify(cfg, 0) == 300  # every step, bit for bit, of both streams
    assert TrajectoryReader(cfg["path"]).num_episodes == 2 * 300 // 5
