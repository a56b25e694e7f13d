"""as_replay_buffer: TorchRL replay buffers over a store, uniform and episode-aware slices."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict

from trlrec import TrajectoryReader, TrajectoryWriter, as_replay_buffer
from trlrec.errors import ConfigError, SchemaError, StoreError
from trlrec.replay import StoreStorage


def _record(path, env, steps, **kw):
    with TrajectoryWriter(path, **kw) as w:
        w.extend(env.rollout(steps, break_when_any_done=False))


@pytest.fixture
def store(tmp_path, stub_env_cls):
    """Two streams, episodes of 5 and 7 steps, chunks of 16 rows (episodes span chunks)."""
    env = stub_env_cls(episode_lengths=(5, 7), batch_size=(2,), pixels=(6, 8, 3))
    _record(tmp_path / "s", env, 30, chunk_rows=16)
    return TrajectoryReader(tmp_path / "s")


def _flat(reader):
    return torch.cat([ep.to_tensordict() for ep in reader.episodes])


def _assert_rows_equal(sample: TensorDict, expected: TensorDict) -> None:
    for k in expected.keys(True, True):
        assert torch.equal(sample.get(k), expected.get(k)), k


def test_storage_is_every_transition_in_episode_order(store):
    storage = StoreStorage(store)
    assert len(storage) == store.num_steps == 60
    everything = storage[:]
    _assert_rows_equal(everything, _flat(store))
    lengths = [ep.shape[0] for ep in store.episodes]
    assert everything["episode"].tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert torch.equal(storage[-1]["observation"], store.episodes[-1][-1]["observation"])
    assert storage[3]["next", "observation"].shape == (4,)


def test_uniform_samples_are_recorded_transitions(store):
    rb = store.as_replay_buffer(batch_size=16)
    flat = _flat(store)
    for _ in range(3):
        s = rb.sample()
        assert s.batch_size == (16,)
        _assert_rows_equal(s.exclude("index", "episode"), flat[s["index"].reshape(-1)])


def test_slices_stay_inside_episodes(store):
    rb = as_replay_buffer(store.path, batch_size=12, slice_len=4)
    for _ in range(10):
        s = rb.sample().reshape(3, 4)
        assert (s["episode"] == s["episode"][:, :1]).all()
        # consecutive steps: each next observation is the following root observation
        assert torch.equal(s["next", "observation"][:, :-1], s["observation"][:, 1:])
        assert s["next", "truncated"][:, -1].all()


def test_num_slices_and_without_replacement_cover_each_transition_once(store):
    rb = store.as_replay_buffer(batch_size=12, replacement=False)
    seen = torch.cat([rb.sample()["index"].reshape(-1) for _ in range(5)])
    assert sorted(seen.tolist()) == list(range(60))
    rb = store.as_replay_buffer(batch_size=10, num_slices=2)
    s = rb.sample().reshape(2, 5)
    assert (s["episode"] == s["episode"][:, :1]).all()


def test_several_shards_are_merged(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(4,))
    _record(tmp_path / "s", env, 8)
    _record(tmp_path / "s", env, 12)
    reader = TrajectoryReader(tmp_path / "s")
    assert len(reader.shards) == 2
    rb = reader.as_replay_buffer(batch_size=20, replacement=False)
    s = rb.sample()
    order = s["index"].reshape(-1).argsort()
    _assert_rows_equal(s[order].exclude("index", "episode"), _flat(reader))


def test_the_buffer_is_read_only(store):
    rb = store.as_replay_buffer(batch_size=4)
    with pytest.raises(RuntimeError, match="doesn't allow writing"):
        rb.extend(rb.sample())
    with pytest.raises(StoreError, match="read-only"):
        rb._storage.set(0, rb.sample())


def test_bad_arguments(store):
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        store.as_replay_buffer(batch_size=0)
    with pytest.raises(ConfigError, match=r"batch_size \(10\) must be a multiple of slice_len"):
        store.as_replay_buffer(batch_size=10, slice_len=4)
    with pytest.raises(ConfigError, match="exclusive"):
        store.as_replay_buffer(batch_size=8, slice_len=4, num_slices=2)
    with pytest.raises(ConfigError, match="no episode .* is 8 steps long"):
        store.as_replay_buffer(batch_size=8, slice_len=8)
    with pytest.raises(SchemaError, match="already has a key 'observation'"):
        store.as_replay_buffer(batch_size=8, episode_key="observation")
    with pytest.raises(IndexError, match="out of range"):
        StoreStorage(store)[60]


def test_empty_missing_and_mixed_stores(tmp_path, stub_env_cls):
    TrajectoryWriter(tmp_path / "empty").close()
    with pytest.raises(StoreError, match="holds no transition"):
        as_replay_buffer(tmp_path / "empty", batch_size=4)
    with pytest.raises(StoreError, match="does not exist"):
        as_replay_buffer(tmp_path / "missing", batch_size=4)
    _record(tmp_path / "mixed", stub_env_cls(obs_shape=(4,)), 5)
    _record(tmp_path / "mixed", stub_env_cls(obs_shape=(3,)), 5)
    with pytest.raises(SchemaError, match="another schema"):
        as_replay_buffer(tmp_path / "mixed", batch_size=4)


def test_the_replay_module_does_not_import_the_reader():
    """One direction only: the reader offers as_replay_buffer; replay.py never imports it."""
    code = "import sys, trlrec.replay; assert 'trlrec.storage.reader' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
