"""as_replay_buffer: TorchRL replay buffers over a store, uniform and episode-aware slices.

Samples are checked against the rollout that was recorded, bit for bit: sampled
transition ``i`` is step ``t`` of episode ``e`` (``e = sample["episode"]``), and the
episode's record says which stream of which shard it is and where it starts among that
stream's transitions, so the same transition is ``rollout[stream, first + t]``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from trlrec import TrajectoryReader, TrajectoryWriter, as_replay_buffer
from trlrec.errors import ConfigError, CorruptStoreError, ReadOnlyError, SchemaError, StoreError
from trlrec.replay import StoreStorage
from trlrec.storage.format import EPISODE_FIELDS, FLAG_OPEN


def _record(path, env, steps, **kw):
    rollout = env.rollout(steps, break_when_any_done=False)
    with TrajectoryWriter(path, **kw) as w:
        w.extend(rollout)
    return rollout


def _expected(reader, rollouts, sample):
    """The rollout rows of a sample's transitions (``rollouts``: one per shard, in order)."""
    storage = StoreStorage(reader, episode_key=None)
    offsets = torch.zeros(reader.num_episodes + 1, dtype=torch.int64)
    torch.cumsum(storage.episode_lengths, 0, out=offsets[1:])
    by_shard = {s.name: r for s, r in zip(reader.shards, rollouts, strict=True)}
    rows = []
    index, episode = sample["index"].reshape(-1).tolist(), sample["episode"].reshape(-1).tolist()
    for i, e in zip(index, episode, strict=True):
        info = reader.episode_info(e)
        rollout = by_shard[info["shard"]]
        t = info["first_transition"] + i - int(offsets[e])
        rows.append(rollout[t] if rollout.batch_dims == 1 else rollout[info["stream"], t])
    return torch.stack(rows)


# SliceSampler marks each slice's last step truncated (and so done) in the sample
SLICE_MARKS = (("next", "truncated"), ("next", "done"))


def _assert_is_rollout(reader, rollouts, sample, sliced=False):
    expected = _expected(reader, rollouts, sample)
    keys = set(expected.keys(True, True))
    assert keys == set(sample.exclude("index", "episode").keys(True, True))
    for k in keys - set(SLICE_MARKS if sliced else ()):
        got, want = sample.get(k), expected.get(k)
        assert got.dtype == want.dtype, k
        assert torch.equal(got, want), k


@pytest.fixture
def recorded(tmp_path, stub_env_cls):
    """Two streams, episodes of 5 and 7 steps, chunks of 16 rows (episodes span chunks)."""
    env = stub_env_cls(episode_lengths=(5, 7), batch_size=(2,), pixels=(6, 8, 3))
    rollout = _record(tmp_path / "s", env, 30, chunk_rows=16)
    return TrajectoryReader(tmp_path / "s"), rollout


@pytest.fixture
def store(recorded):
    return recorded[0]


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
    sample = rb.sample()
    for write in (rb.extend, rb.add, lambda _: rb.empty()):
        with pytest.raises(ReadOnlyError, match="this replay buffer .*is read-only") as info:
            write(sample)
        assert isinstance(info.value, RuntimeError)  # what TorchRL's own writer raises
    with pytest.raises(ReadOnlyError, match="a StoreStorage is read-only"):
        rb._storage.set(0, sample)
    assert len(rb) == len(rb._storage)  # nothing was written


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


def test_uniform_samples_are_the_recorded_rollout(recorded):
    """A batched store over many chunks: every sampled transition, its "next" included."""
    reader, rollout = recorded
    rb = reader.as_replay_buffer(batch_size=64)
    for _ in range(4):
        _assert_is_rollout(reader, [rollout], rb.sample())


def test_slices_are_the_recorded_rollout_and_stop_at_episode_ends(recorded):
    reader, rollout = recorded
    rb = reader.as_replay_buffer(batch_size=20, slice_len=5)
    ends = 0
    for _ in range(6):
        s = rb.sample()
        _assert_is_rollout(reader, [rollout], s, sliced=True)
        s = s.reshape(4, 5)
        assert (s["episode"] == s["episode"][:, :1]).all()
        assert (s["index"][:, 1:] == s["index"][:, :-1] + 1).all()
        assert s["next", "truncated"][:, -1].all()
        assert not s["next", "done"][:, :-1].any()
        ends += int(s["next", "terminated"][:, -1].sum())  # slices reaching their episode's end
    assert ends > 0


def test_several_shards_are_the_recorded_rollouts(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(4, 3), batch_size=(2,))
    first = _record(tmp_path / "s", env, 9, chunk_rows=8)
    second = _record(tmp_path / "s", env, 11, chunk_rows=4)  # other chunk sizes too
    reader = TrajectoryReader(tmp_path / "s")
    assert len(reader.shards) == 2
    rb = reader.as_replay_buffer(batch_size=reader.num_steps, replacement=False)
    s = rb.sample()
    assert sorted(s["index"].tolist()) == list(range(reader.num_steps))
    _assert_is_rollout(reader, [first, second], s)
    sliced = reader.as_replay_buffer(batch_size=6, slice_len=3).sample()
    _assert_is_rollout(reader, [first, second], sliced, sliced=True)


def test_a_store_being_recorded_samples_its_open_episodes_too(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(4, 6), batch_size=(2,))
    rollout = env.rollout(9, break_when_any_done=False)
    w = TrajectoryWriter(tmp_path / "s", chunk_rows=8)
    w.extend(rollout)
    w.flush()  # committed, the episodes after the last done of each stream still open
    reader = TrajectoryReader(tmp_path / "s")
    opened = [reader.episode_info(i)["flags"] for i in range(reader.num_episodes)]
    assert sum(1 for f in opened if f & FLAG_OPEN) == 2
    table = reader.shards[0].episode_table()  # what the buffer is built from
    assert table.tolist() == [
        tuple(reader.episode_info(i)[f] for f in EPISODE_FIELDS) for i in range(len(opened))
    ]
    rb = reader.as_replay_buffer(batch_size=reader.num_steps, replacement=False)
    s = rb.sample()
    assert sorted(s["index"].tolist()) == list(range(18))
    _assert_is_rollout(reader, [rollout], s)
    w.close()


def test_a_damaged_episode_record_is_an_error_naming_it(tmp_path, stub_env_cls):
    _record(tmp_path / "s", stub_env_cls(episode_lengths=(3,)), 12)
    index = next((tmp_path / "s" / "shards").iterdir()) / "episodes.bin"
    data = bytearray(index.read_bytes())
    data[2 * 64 + 16 : 2 * 64 + 24] = (2**62).to_bytes(8, "little")  # episode 2's num_steps
    index.write_bytes(bytes(data))
    reader = TrajectoryReader(tmp_path / "s")
    assert reader.episode_info(1)["num_steps"] == 3  # the others still read
    with pytest.raises(CorruptStoreError, match=r"episodes.bin'.*episode 2 ends at row"):
        reader.as_replay_buffer(batch_size=4)


def test_big_rows_and_columns_only_in_the_root_or_in_next(tmp_path, stub_env_cls):
    """Rows of 4 KiB and more are placed piece by piece; a root-only image is read once."""
    env = stub_env_cls(episode_lengths=(6,), pixels=(32, 32, 4))
    rollout = env.rollout(40, break_when_any_done=False)
    rollout["image"] = torch.arange(40 * 1100, dtype=torch.float32).reshape(40, 1100)
    rollout["next", "depth"] = -torch.arange(40 * 1100, dtype=torch.float64).reshape(40, 1100)
    with TrajectoryWriter(tmp_path / "s", chunk_rows=8) as w:
        w.extend(rollout)
    reader = TrajectoryReader(tmp_path / "s")
    roles = {e.key: e.role for e in reader.shards[0].schema.entries}
    assert roles[("pixels",)] == "state"
    assert (roles[("image",)], roles[("depth",)]) == ("root", "next")
    for sliced in (False, True):
        rb = reader.as_replay_buffer(batch_size=30, slice_len=6 if sliced else None)
        for _ in range(3):
            _assert_is_rollout(reader, [rollout], rb.sample(), sliced)


def test_one_chunk_store(tmp_path, stub_env_cls):
    """A sample from a single chunk is read in sampled order, nothing to reorder."""
    rollout = _record(tmp_path / "s", stub_env_cls(episode_lengths=(5,)), 20)
    reader = TrajectoryReader(tmp_path / "s")
    _assert_is_rollout(reader, [rollout], reader.as_replay_buffer(batch_size=50).sample())


def test_storage_indices_of_every_kind(store):
    storage = StoreStorage(store)
    flat = _flat(store)
    index = torch.tensor([[3, -1], [0, 59]])
    got = storage[index]
    assert got.batch_size == (2, 2)
    _assert_rows_equal(got.exclude("episode"), flat[index % 60])
    for index in ([5, 5, 2], np.array([7, 1]), range(4), slice(50, None, 3)):
        expected = flat[torch.arange(60)[index] if isinstance(index, slice) else list(index)]
        _assert_rows_equal(storage[index].exclude("episode"), expected)
    assert storage[[]].batch_size == (0,)
    assert storage[[]]["next", "pixels"].shape == (0, 6, 8, 3)
    mask = torch.zeros(60, dtype=torch.bool)
    mask[[2, 40]] = True
    _assert_rows_equal(storage[mask].exclude("episode"), flat[mask])
    with pytest.raises(IndexError, match="indexed by integers"):
        storage[torch.tensor([1.5])]
    with pytest.raises(IndexError, match="1-D"):
        storage[1, 2]


def test_device_option(recorded):
    reader, rollout = recorded
    rb = reader.as_replay_buffer(batch_size=16, device="cpu")
    s = rb.sample()
    assert s.device == torch.device("cpu")
    assert all(v.device.type == "cpu" for v in s.values(True, True))
    _assert_is_rollout(reader, [rollout], s)
    with pytest.raises(ConfigError, match="device must be a torch device"):
        reader.as_replay_buffer(batch_size=4, device="nowhere")
    if torch.cuda.is_available():
        s = reader.as_replay_buffer(batch_size=16, device="cuda").sample()
        assert s.device.type == "cuda"
        assert s["next", "observation"].is_cuda
        _assert_is_rollout(reader, [rollout], s.cpu())
    else:
        with pytest.raises(ConfigError, match="CUDA, which this torch cannot use"):
            reader.as_replay_buffer(batch_size=4, device="cuda")


def test_prefetch_samples_ahead_from_the_same_store(recorded):
    reader, rollout = recorded
    rb = as_replay_buffer(reader, batch_size=8, prefetch=3)
    samples = [rb.sample() for _ in range(6)]
    assert len(rb._prefetch_queue) > 0  # later samples are being gathered meanwhile
    for s in samples:
        _assert_is_rollout(reader, [rollout], s)
    sliced = as_replay_buffer(reader, batch_size=10, slice_len=5, prefetch=2)
    _assert_is_rollout(reader, [rollout], sliced.sample(), sliced=True)


def test_compressed_store_samples_are_the_recorded_rollout(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(5, 7), batch_size=(2,), pixels=(32, 32, 4))
    rollout = _record(tmp_path / "s", env, 40, chunk_rows=16, compression="zstd")
    reader = TrajectoryReader(tmp_path / "s")
    for slice_len in (None, 5):
        rb = reader.as_replay_buffer(batch_size=20, slice_len=slice_len)
        for _ in range(3):
            _assert_is_rollout(reader, [rollout], rb.sample(), sliced=slice_len is not None)


def test_a_slice_sample_is_gathered_once(recorded):
    # SliceSampler reads storage[index] for its done flags, then the buffer gets the same
    # index: the storage keeps the first gather for the second
    reader, rollout = recorded
    rb = reader.as_replay_buffer(batch_size=12, slice_len=4)
    storage = rb._storage
    calls = []
    gather = storage._gather
    storage._gather = lambda idx: calls.append(len(idx)) or gather(idx)
    for _ in range(3):
        _assert_is_rollout(reader, [rollout], rb.sample(), sliced=True)
    assert calls == [12, 12, 12]


def test_a_kept_sample_serves_one_get_of_the_same_index(store):
    storage = StoreStorage(store)
    idx = torch.tensor([3, 1, 4])
    first = storage[idx]
    assert storage.get(idx) is first  # kept for the get that follows
    again = storage.get(idx)
    assert again is not first  # once
    _assert_rows_equal(again, first)
    _ = storage[idx]
    other = storage.get(torch.tensor([3, 1, 5]))  # another index: gathered anew
    _assert_rows_equal(other[:2], first[:2])
    assert not torch.equal(other["observation"][2], first["observation"][2])


def test_sample_tensors_are_views_of_one_buffer(store):
    sample = StoreStorage(store).get(torch.arange(10))
    storages = {v.untyped_storage().data_ptr() for v in sample.values(True, True)}
    assert len(storages) == 1


def test_sampling_a_compressed_store_keeps_memory_flat(tmp_path):
    """Decompressed blocks live in their own maps: dropped from the cache, they are freed."""
    code = f"""
import torch
from trlrec import TrajectoryReader, TrajectoryWriter
from tensordict import TensorDict
g = torch.Generator().manual_seed(0)
n = 3000
frames = torch.randint(0, 4, (n + 1, 64, 64, 3), dtype=torch.uint8, generator=g)
td = TensorDict({{"pixels": frames[:-1], "next": {{"pixels": frames[1:],
    "done": torch.zeros(n, 1, dtype=torch.bool)}}}}, batch_size=[n])
with TrajectoryWriter({str(tmp_path / "z")!r}, compression="zstd", chunk_rows=1024) as w:
    w.extend(td)
reader = TrajectoryReader({str(tmp_path / "z")!r})
for s in reader.shards:
    s._blocks.capacity = 8 * 2**20  # a small cache: blocks come and go
rb = reader.as_replay_buffer(batch_size=64)
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
for _ in range(30):
    rb.sample()
before = anon()
for _ in range(300):
    rb.sample()
print((anon() - before) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown = float(out.stdout.split()[-1])
    # bounded, not exact: the heap's free memory comes and goes by a few MiB
    assert grown < 12, f"RssAnon grew by {grown:.1f} MiB over 300 samples"


def test_dropped_blocks_buffers_are_reused(tmp_path, monkeypatch):
    """A block dropped from the cache lends its buffer to the next: no map a block."""
    import trlrec.storage.blocks as blocks

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 4, (1201, 32, 32, 3), dtype=torch.uint8, generator=g)
    rollout = TensorDict(
        {
            "pixels": frames[:-1],
            "next": {"pixels": frames[1:], "done": torch.zeros(1200, 1, dtype=torch.bool)},
        },
        batch_size=[1200],
    )
    with TrajectoryWriter(tmp_path / "z", compression="zstd", chunk_rows=400) as w:
        w.extend(rollout)
    reader = TrajectoryReader(tmp_path / "z")
    cache = reader.shards[0]._blocks
    cache.capacity = 4 * 2**20  # 4 MiB of the 7 MiB of blocks: they come and go
    maps = []
    real = blocks.mmap.mmap
    monkeypatch.setattr(blocks.mmap, "mmap", lambda *a, **k: maps.append(a[0]) or real(*a, **k))
    rb = reader.as_replay_buffer(batch_size=64)
    for _ in range(20):
        rb.sample()
    warm = maps.count(-1)  # anonymous maps: block buffers
    for _ in range(100):
        sample = rb.sample()
    assert warm > 0
    assert maps.count(-1) - warm <= 4, (warm, maps.count(-1))
    assert cache.size <= cache.capacity
    _assert_is_rollout(reader, [rollout], sample)
