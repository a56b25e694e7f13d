"""SIGKILL a recorder that compresses its chunks, and ``trlrec compact``, at random instants.

Chunks are sealed (compressed on the writer's worker thread, the ``.zst`` renamed into
place before the raw file goes) all through these recordings: tiny chunks and a
commit at every step. After every kill the store opens, every acknowledged step is
there bit for bit, and a writer continues the killed shard. A compaction killed at
any instant leaves the store exact, and running it again finishes it.
"""

from __future__ import annotations

import random
from pathlib import Path

from tests.reliability._worker import check_store, record
from tests.reliability.test_kill import _continue, _expected, _verify
from trlrec.storage.reader import TrajectoryReader

CONFIGS = [
    dict(
        num_envs=0, steps=300, chunk_rows=3, commit_every_steps=1, flush_every=4,
        compression="zstd",
    ),
    dict(
        num_envs=2, steps=300, pixels=[8, 8, 3], chunk_rows=8, commit_every_steps=1,
        flush_every=3, compression={"pixels": ("zstd", 1)},
    ),
    dict(
        num_envs=2, steps=200, chunk_rows=4, commit_every_steps=2, flush_every=4,
        compression="zstd", durable=True,
    ),
]  # fmt: skip


def test_sigkill_while_compressing_chunks(worker, tmp_path):
    rng = random.Random(17)
    kinds = set()
    for i in range(12):
        cfg = dict(CONFIGS[i % len(CONFIGS)], path=str(tmp_path / f"s{i}"))
        res = worker.call({"op": "kill_at", "cfg": cfg, "delay": rng.uniform(0.05, 0.6)})
        assert res["exc"] is None, res["exc"]
        kinds.add("killed" if res["killed_by_us"] else "finished")
        committed = _verify(cfg, res["acked"])
        if i % 2:
            _continue(cfg, committed, same_shard=True)
            packed = list(Path(cfg["path"]).rglob("*.zst"))
            assert packed, "the continued recording compressed no chunk"
    assert "killed" in kinds


def test_sigkill_during_compact(worker, tmp_path):
    cfg = dict(num_envs=2, steps=120, pixels=[8, 8, 3], chunk_rows=8, flush_every=50)
    expected = _expected(cfg)
    rng = random.Random(3)
    for i in range(3):
        path = str(tmp_path / f"c{i}")
        record(dict(cfg, path=path))
        before = check_store(path, expected, 2)
        res = worker.call({"op": "compact_at", "path": path, "delay": rng.uniform(0.02, 0.4)})
        assert res["exc"] is None, res["exc"]
        assert check_store(path, expected, 2)["counts"] == before["counts"]
        res = worker.call({"op": "compact_at", "path": path, "delay": 60})
        assert res["exc"] is None, res["exc"]
        assert "compacted" in res["out"], res
        assert check_store(path, expected, 2)["counts"] == before["counts"]
        left = [p for p in Path(path).rglob("*.memmap") if p.stat().st_size]
        assert not left, f"compact left raw columns: {left[:3]}"
        assert TrajectoryReader(path).num_steps == 240
