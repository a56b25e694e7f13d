"""TrajectoryReader: lazy episodes, zero-copy views, shards, live refresh, damaged stores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from tensordict import MemoryMappedTensor

from tests.storage.helpers import assert_store_matches, assert_td_identical
from tests.storage.make_pinned_store import PINNED, pinned_rollout
from trlrec import TrajectoryReader, TrajectoryWriter
from trlrec.errors import CorruptStoreError, FormatVersionError, NotAStoreError


@pytest.fixture
def store(tmp_path, stub_env):
    rollout = stub_env.rollout(23, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "s", shard="shard-000000", chunk_rows=64) as w:
        w.extend(rollout)
    return tmp_path / "s", rollout


def test_episodes_is_a_lazy_sequence(store):
    path, rollout = store
    r = TrajectoryReader(path)
    eps = r.episodes
    assert len(eps) == r.num_episodes == 5
    assert_td_identical(eps[-1], eps[4])
    assert [len(e) for e in eps[1:3]] == [5, 5]
    assert_td_identical(eps[0], rollout[:5])
    with pytest.raises(IndexError, match="out of range: the store has 5 episodes"):
        eps[5]
    with pytest.raises(IndexError, match="out of range"):
        eps[-6]
    with pytest.raises(TypeError, match="episode indices are ints"):
        eps["0"]


def test_iteration_is_re_entrant(store):
    path, _ = store
    eps = TrajectoryReader(path).episodes
    pairs = [(len(a), len(b)) for a in eps for b in eps]
    assert len(pairs) == 25
    outer = iter(eps)
    first = next(outer)
    assert sum(1 for _ in eps) == 5  # a second iteration does not disturb the first
    assert_td_identical(next(outer), eps[1])
    assert_td_identical(first, eps[0])


def test_episodes_are_zero_copy_memory_maps(store):
    path, _ = store
    ep = TrajectoryReader(path).episodes[1]
    obs, nxt = ep["observation"], ep["next", "observation"]
    assert isinstance(obs, MemoryMappedTensor)
    # root and next views of the same state rows: next[t] is root[t + 1], shared storage
    assert obs.untyped_storage().data_ptr() == nxt.untyped_storage().data_ptr()
    assert nxt.data_ptr() - obs.data_ptr() == obs.stride(0) * obs.element_size()


def test_reader_never_modifies_the_store(store):
    path, rollout = store
    ep = TrajectoryReader(path).episodes[0]
    ep["observation"].add_(1000)  # copy-on-write mapping: the files stay as they were
    assert_td_identical(TrajectoryReader(path).episodes[0], rollout[:5])


def test_episode_spanning_chunks_is_exact(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(30,), pixels=(3, 3, 3))
    rollout = env.rollout(30, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "c", chunk_rows=7) as w:
        w.extend(rollout)
    assert_store_matches(TrajectoryReader(tmp_path / "c"), rollout)


def test_pinned_v1_store_still_reads(tmp_path):
    path = tmp_path / "pinned"
    shutil.copytree(PINNED, path)
    r = TrajectoryReader(path)
    assert r.metadata == {"pinned": True}
    assert_store_matches(r, pinned_rollout())
    assert r.episode_metadata(0) == {"t": 2}
    assert r.episode_metadata(1) == {}


def test_missing_path_and_non_store(tmp_path):
    with pytest.raises(NotAStoreError, match="does not exist"):
        TrajectoryReader(tmp_path / "nope")
    with pytest.raises(NotAStoreError, match="not a trlrec store"):
        TrajectoryReader(tmp_path)


def test_future_format_version(store):
    path, _ = store
    info = json.loads((path / "dataset.json").read_text())
    info["version"] = 99
    (path / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(FormatVersionError, match="format version 99.*Upgrade trlrec"):
        TrajectoryReader(path)


@pytest.mark.parametrize("name", ["COMMIT", "shard.json"])
def test_a_shard_file_of_another_version_is_refused(store, name):
    path, _ = store
    f = path / "shards" / "shard-000000" / name
    f.write_text(json.dumps({**json.loads(f.read_text()), "version": 7}))
    with pytest.raises(FormatVersionError, match=rf"{name}' has format version 7.*reads versions"):
        TrajectoryReader(path)


def test_shard_metadata_that_is_not_an_object(store):
    path, _ = store
    f = path / "shards" / "shard-000000" / "shard.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "metadata": [1]}))
    with pytest.raises(CorruptStoreError, match=r"shard.json': 'metadata' is a list"):
        TrajectoryReader(path)


@pytest.mark.parametrize("name", ["dataset.json", "shards/shard-000000/COMMIT"])
def test_truncated_metadata_names_the_file(store, name):
    path, _ = store
    f = path / name
    f.write_bytes(f.read_bytes()[:7])
    with pytest.raises(CorruptStoreError, match=name.split("/")[-1] + ".*not valid JSON"):
        TrajectoryReader(path)


def test_truncated_chunk_names_the_file(store):
    path, _ = store
    f = next(path.rglob("observation.memmap"))
    f.write_bytes(f.read_bytes()[:10])
    r = TrajectoryReader(path)
    with pytest.raises(CorruptStoreError, match="observation.memmap.*shorter than"):
        r.episodes[0]


def test_truncated_index_names_the_file(store):
    path, _ = store
    f = next(path.rglob("episodes.bin"))
    f.write_bytes(f.read_bytes()[:70])
    with pytest.raises(CorruptStoreError, match="episodes.bin.*truncated"):
        TrajectoryReader(path)


def test_reader_merges_shards_of_several_writers(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(4,))
    a = env.rollout(8, break_when_any_done=False)
    b = env.rollout(4, break_when_any_done=False)
    wa = TrajectoryWriter(tmp_path / "m", shard="a")
    wb = TrajectoryWriter(tmp_path / "m", shard="b")
    wb.extend(b)
    wa.extend(a)
    wa.close()
    wb.close()
    r = TrajectoryReader(tmp_path / "m")
    assert [s.name for s in r.shards] == ["a", "b"]
    assert r.num_steps == 12
    assert_td_identical(torch.cat([r.episodes[0], r.episodes[1]]), a)
    assert_td_identical(r.episodes[2], b)


WRITE_SIDE = [  # the writer's modules (trlrec.io and trlrec.native are refused whole)
    "trlrec.storage.writer",
    "trlrec.storage.shard",
    "trlrec.storage.stream",
    "trlrec.storage.stream_set",
    "trlrec.storage.chunks",
    "trlrec.storage.staging",
    "trlrec.storage.batches",
    "trlrec.storage.checks",
    "trlrec.storage.commit_clock",
    "trlrec.storage._capture",
    "trlrec.storage._pwrite",
]


def test_reading_loads_no_writer_code_and_no_c_extension():
    """Reading a store (open, episodes, metadata, info) imports nothing of the write side."""
    code = f"""
import sys, trlrec
r = trlrec.TrajectoryReader({str(PINNED)!r})
[ep["next", "observation"].sum() for ep in r.episodes]
r.episode_metadata(0), r.episode_info(-1), r.refresh()
loaded = sorted(n for n in sys.modules if n.startswith("trlrec"))
print(loaded)
bad = [n for n in loaded if n in {WRITE_SIDE!r} or n.startswith(("trlrec.io", "trlrec.native"))]
bad += [n for n in loaded if str(getattr(sys.modules[n], "__file__", "")).endswith(".so")]
bad += [n for n in sys.modules if n.split(".")[-1] in ("_capture", "_pwrite")]
assert not bad, bad
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trlrec.storage.format" in out.stdout  # the check saw the read path
