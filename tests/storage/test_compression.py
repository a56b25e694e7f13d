"""Compressed columns and exact-size chunks: round trips, real Atari frames, damage, trims."""

from __future__ import annotations

import itertools
import json
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from tests.storage.helpers import assert_store_matches, io_kinds, record_rows
from tests.storage.strategies import rollouts
from trlrec import TrajectoryReader, TrajectoryWriter
from trlrec.cli import main
from trlrec.errors import ConfigError, CorruptStoreError, MissingDependencyError, OutOfRangeError
from trlrec.storage.blocks import BlockCache, CompressedColumn

_counter = itertools.count()


def _packed(path) -> list:
    return sorted(p for p in path.rglob("*.zst"))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=rollouts())
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_compressed_round_trip(tmp_path, data, compression):
    """Every dtype, batched streams, nested keys: the compressed store reads back bit for bit.

    ``take`` (the replay buffer's gather, on bytes) too, raw and compressed, into a new
    tensor or into ``out``.
    """
    rollout, kw = data
    path = tmp_path / f"z{next(_counter)}"
    reader = record_rows(path, rollout, compression=compression, **kw)
    assert_store_matches(reader, rollout)
    if compression:
        raw = [p for p in path.rglob("*.memmap") if p.stat().st_size]
        assert not raw, f"raw columns left in a closed compressed store: {raw[:3]}"
        commit = json.loads((reader.shards[0].directory / "COMMIT").read_text())
        assert commit["version"] == 4
    shard = reader.shards[0]
    gen = torch.Generator().manual_seed(len(rollout))
    for b, s in enumerate(shard.streams):  # take: rows in any order, across blocks
        rows = min(s.next_row, shard.chunk_rows) - 1
        if rows < 1:
            continue
        offsets = torch.randint(0, rows, (2, 7), generator=gen)
        whole = shard.rows(b, 0, rows)
        for e in shard.schema.entries:
            got = shard.take(b, 0, e.stored_key, offsets)
            assert got.dtype == e.dtype
            want = whole[e.stored_key][offsets]
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
            out = torch.full_like(want, 1) if e.dtype.is_floating_point else torch.zeros_like(want)
            assert shard.take(b, 0, e.stored_key, offsets, out=out) is out
            assert torch.equal(out.view(torch.uint8), want.view(torch.uint8))
            with pytest.raises(OutOfRangeError, match="offsets must be >= 0, got -1"):
                shard.take(b, 0, e.stored_key, torch.full_like(offsets, -1))


def _frames_rollout(n: int, seed: int = 0) -> TensorDict:
    """Real ALE Pong frames, 84x84 grayscale (area-resized, as AtariPreprocessing does)."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", obs_type="grayscale", repeat_action_probability=0.0)
    obs, _ = env.reset(seed=seed)
    gen = torch.Generator().manual_seed(seed)

    def small(o):
        t = torch.from_numpy(o)[None, None].float()
        return torch.nn.functional.interpolate(t, size=(84, 84), mode="area")[0, 0].round()

    frames, actions, dones = [small(obs)], [], []
    for _ in range(n):
        a = int(torch.randint(env.action_space.n, (), generator=gen))
        obs, _, term, trunc, _ = env.step(a)
        frames.append(small(obs))
        actions.append(a)
        dones.append(term or trunc)
    f = torch.stack(frames).to(torch.uint8)
    return TensorDict(
        {
            "pixels": f[:-1],
            "action": torch.tensor(actions).unsqueeze(-1),
            "next": {"pixels": f[1:], "done": torch.tensor(dones).unsqueeze(-1)},
        },
        batch_size=[n],
    )


def test_real_atari_frames_bit_exact_and_small(tmp_path):
    rollout = _frames_rollout(400)
    with TrajectoryWriter(tmp_path / "z", compression={"pixels": "zstd"}, chunk_rows=128) as w:
        w.extend(rollout)
    r = TrajectoryReader(tmp_path / "z")
    assert_store_matches(r, rollout)
    info = {k["key"]: k for k in _info(tmp_path / "z")["keys"]}
    assert info["pixels"]["bytes_raw"] == 401 * 84 * 84
    assert info["pixels"]["ratio"] > 20, info["pixels"]
    shard = r.shards[0]
    offsets = torch.tensor([5, 100, 3])
    assert torch.equal(shard.take(0, 1, ("pixels",), offsets), rollout["pixels"][128 + offsets])


def _info(path) -> dict:
    from trlrec.cli.stats import summarize

    return summarize(TrajectoryReader(path), progress=False)


def _pixels_rollout(T: int, h: int = 32) -> TensorDict:
    pix = torch.arange(T + 1, dtype=torch.int64).reshape(-1, 1, 1).expand(T + 1, h, h) % 251
    return TensorDict(
        {
            "pixels": pix[:-1].to(torch.uint8),
            "next": {"pixels": pix[1:].to(torch.uint8), "done": torch.zeros(T, 1, dtype=bool)},
        },
        batch_size=[T],
    )


def test_a_mapping_compresses_only_its_keys_and_reads_by_block(tmp_path, monkeypatch):
    from trlrec.storage import blocks

    monkeypatch.setattr(blocks, "WHOLE_BYTES", 2**16)  # the 1.2 MB column: read by block
    rollout = _pixels_rollout(300, h=64)  # blocks of a few rows
    path = tmp_path / "m"
    with TrajectoryWriter(path, compression={"pixels": ("zstd", 5)}, chunk_rows=512) as w:
        w.extend(rollout)
    names = {p.name for p in _packed(path)}
    assert names == {"pixels.zst"}
    r = TrajectoryReader(path)
    shard = r.shards[0]
    shard._blocks = BlockCache(capacity=1)  # one block kept at a time: never the whole column
    decoded: list[list[int]] = []
    decompress = CompressedColumn._decompress

    def spy(self, blocks, out):
        decoded.append(list(blocks))
        decompress(self, blocks, out)

    monkeypatch.setattr(CompressedColumn, "_decompress", spy)
    column = shard.chunk(0, 0)[("pixels",)]
    br = column.head.block_rows
    got = shard.take(0, 0, ("pixels",), torch.tensor([br + 1, 2 * br + 3, br + 2, br + 1]))
    assert decoded == [[1, 2]]  # a random sample decompresses its blocks, each once
    assert torch.equal(got, rollout["pixels"][[br + 1, 2 * br + 3, br + 2, br + 1]])
    assert len(shard._blocks) == 0  # and keeps none: the cache serves sequential reads
    assert_store_matches(r, rollout)
    assert len(shard._blocks) == 1


@pytest.mark.parametrize("capacity", [1, 100_000])
def test_rows_spanning_more_blocks_than_the_cache_holds_are_exact(tmp_path, capacity):
    # a 400-step episode of 128x128 rows spans 25 blocks of 16 rows: reading a block may
    # drop an earlier one of the same span and lend its buffer to the next
    rollout = _pixels_rollout(400, h=128)
    rollout["next", "done"][:] = False
    rollout["next", "done"][-1] = True
    path = tmp_path / "s"
    with TrajectoryWriter(path, compression="zstd", chunk_rows=512) as w:
        w.extend(rollout)
    r = TrajectoryReader(path)
    shard = r.shards[0]
    shard._blocks = BlockCache(capacity=capacity)
    assert r.num_episodes == 1
    episode = r.episodes[0]
    assert torch.equal(episode["pixels"], rollout["pixels"])
    assert torch.equal(episode["next", "pixels"], rollout["next", "pixels"])
    rows = torch.arange(399, -1, -7)  # every block, in reverse
    assert torch.equal(shard.take(0, 0, ("pixels",), rows), rollout["pixels"][rows])
    assert shard._blocks.size <= max(capacity, 16 * 128 * 128)


def test_a_damaged_block_is_an_error_naming_the_file(tmp_path):
    rollout = _pixels_rollout(200, h=64)
    path = tmp_path / "d"
    with TrajectoryWriter(path, compression="zstd", chunk_rows=256) as w:
        w.extend(rollout)
    (zst,) = [p for p in _packed(path) if p.name == "pixels.zst"]
    data = bytearray(zst.read_bytes())
    data[-20] ^= 0xFF  # inside the last block's frame
    zst.write_bytes(bytes(data))
    r = TrajectoryReader(path)
    with pytest.raises(CorruptStoreError, match=r"pixels\.zst'.*block \d+ fails its checksum"):
        r.episodes[0]
    assert main(["verify", str(path)]) == 1
    data[20] ^= 0xFF  # the header's checksum fails
    zst.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=r"pixels\.zst'.*checksum"):
        TrajectoryReader(path).episodes[0]


def test_a_damaged_frame_that_still_decodes_is_caught_by_its_crc(tmp_path):
    """Noise is stored as raw zstd blocks: a flipped byte decodes, to a wrong value.

    The index's CRC-32 of each frame catches it before it is decompressed.
    """
    gen = torch.Generator().manual_seed(3)
    rollout = _pixels_rollout(20, h=64)
    noise = torch.randint(0, 256, rollout["pixels"].shape, dtype=torch.uint8, generator=gen)
    rollout["pixels"] = noise
    rollout["next", "pixels"] = torch.cat([noise[1:], noise[-1:]])
    path = tmp_path / "n"
    with TrajectoryWriter(path, compression="zstd") as w:
        w.extend(rollout)
    (zst,) = [p for p in _packed(path) if p.name == "pixels.zst"]
    data = bytearray(zst.read_bytes())
    size = len(data)
    assert size > 20 * 64 * 64  # incompressible: the frames hold the rows as they are
    data[size - 64 * 64] ^= 0x01  # a row's byte in the last frame
    zst.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=r"pixels\.zst'.*block \d+ fails its checksum"):
        TrajectoryReader(path).episodes[0]
    assert main(["verify", str(path)]) == 1


def test_a_frame_that_cannot_be_decoded_is_named_among_the_frames_read_with_it(tmp_path):
    """A frame whose CRC-32 was rewritten to match its damage passes the check and fails
    to decompress: a gather reading it with others names its block, not the first."""
    import dataclasses

    from trlrec.storage.format import frame_crc

    rollout, r = _big_rows_store(tmp_path)
    r.close()
    (zst,) = [p for p in _packed(tmp_path / "big") if p.name == "pixels.zst"]
    head, raw = _header(zst)
    data = bytearray(raw)
    bad = head.blocks // 2
    start, end = head.frame(bad)
    data[start + 4 : end] = bytes(end - start - 4)  # the frame's magic kept, its header gone
    crcs = list(head.frame_crcs)
    crcs[bad] = frame_crc(bytes(data[start:end]))
    packed = dataclasses.replace(head, frame_crcs=tuple(crcs)).pack()
    assert len(packed) == len(head.pack())
    zst.write_bytes(packed + bytes(data[len(packed) :]))  # the dictionary and frames kept
    shard = TrajectoryReader(tmp_path / "big").shards[0]
    with pytest.raises(CorruptStoreError, match=rf"pixels\.zst'.*block {bad} (holds|cannot)"):
        shard.take(0, 0, ("pixels",), torch.arange(head.rows))
    assert torch.equal(shard.chunk(0, 0)[("pixels",)][:bad], rollout["pixels"][:bad])  # by block


def _header(path):
    from trlrec.storage.format import ZHEAD_PREFIX, CompressedHeader

    data = path.read_bytes()
    return CompressedHeader.parse(
        data[: CompressedHeader.head_size(data[:ZHEAD_PREFIX])], len(data), path
    ), data


def test_blocks_are_compressed_against_the_chunks_own_rows(tmp_path):
    """Rows of noise that repeat: a block holds none the dictionary (layout 3) lacks, so
    each is a few bytes, where a frame from nothing would hold its noise (4 KiB)."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=gen)
    obs = noise.expand(201, 4096).clone()
    done = torch.zeros(200, 1, dtype=torch.bool)
    td = TensorDict({"obs": obs[:-1], "next": {"obs": obs[1:], "done": done}}, [200])
    path = tmp_path / "noise"
    with TrajectoryWriter(path, compression="zstd") as w:
        w.extend(td)
    (zst,) = [p for p in _packed(path) if p.name == "obs.zst"]
    head, _ = _header(zst)
    assert (head.layout, head.rows, head.dict_rows, head.block_rows) == (3, 201, 4, 8)
    sizes = [b - a for a, b in itertools.pairwise((0, *head.ends))]
    assert len(sizes) == 26
    assert max(sizes) < 100, sizes
    assert head.dictionary[0] < 4096 + 100  # the dictionary's 4 rows: 1 of noise
    r = TrajectoryReader(path)
    assert torch.equal(r.shards[0].chunk(0, 0)[("obs",)][:], obs)


def test_a_damaged_dictionary_is_named(tmp_path):
    """The dictionary's frame fails its CRC-32: every read of the column, and verify, say so."""
    rollout, r = _big_rows_store(tmp_path)
    r.close()
    (zst,) = [p for p in _packed(tmp_path / "big") if p.name == "pixels.zst"]
    head, data = _header(zst)
    start, end = head.dictionary_frame()
    assert head.dict_rows == 1
    assert end - start == head.dictionary[0] > 0
    damaged = bytearray(data)
    damaged[end - 2] ^= 0x01
    zst.write_bytes(bytes(damaged))
    shard = TrajectoryReader(tmp_path / "big").shards[0]
    with pytest.raises(CorruptStoreError, match=r"pixels\.zst'.*its dictionary fails its checksum"):
        shard.chunk(0, 0)[("pixels",)][:1]
    with pytest.raises(CorruptStoreError, match=r"pixels\.zst'.*its dictionary"):
        shard.take(0, 0, ("pixels",), torch.arange(3))
    assert main(["verify", str(tmp_path / "big")]) == 1
    zst.write_bytes(data)  # restored: read exactly again
    assert_store_matches(TrajectoryReader(tmp_path / "big"), rollout)


def test_trimmed_chunks_resume_and_stay_exact_size(tmp_path):
    rollout = _pixels_rollout(150, h=84)
    path = tmp_path / "t"
    with TrajectoryWriter(path, chunk_rows=1000) as w:  # a 7 MB chunk holding 151 rows
        w.extend(rollout[:100])
    shard = w.shard_path
    chunk = shard / "streams" / "0" / "chunk-000000"
    assert (chunk / "pixels.memmap").stat().st_size == 101 * 84 * 84
    td = TensorDict.load_memmap(chunk)  # plain tensordict still opens a trimmed chunk
    assert torch.equal(td["pixels"][:100], rollout["pixels"][:100])
    with TrajectoryWriter(path, shard=shard.name) as w:  # continues in a fresh chunk
        w.extend(rollout[100:])
    r = TrajectoryReader(path)
    assert r.num_steps == 150
    assert torch.equal(r.episodes[0]["pixels"], rollout["pixels"][:100])
    assert torch.equal(r.episodes[1]["next", "pixels"], rollout["next", "pixels"][100:])
    allocated = apparent = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            allocated, apparent = allocated + st.st_blocks * 512, apparent + st.st_size
    assert apparent <= 1.05 * allocated, (apparent, allocated)
    assert main(["verify", str(path)]) == 0


def test_reading_past_a_truncated_chunk_is_an_error(tmp_path):
    rollout = _pixels_rollout(40)
    path = tmp_path / "x"
    with TrajectoryWriter(path, chunk_rows=64) as w:
        w.extend(rollout)
    f = next(path.rglob("pixels.memmap"))
    os.truncate(f, 10 * 32 * 32)
    r = TrajectoryReader(path)
    with pytest.raises(CorruptStoreError, match=r"pixels\.memmap' holds 10 rows"):
        r.episodes[0]
    with pytest.raises(CorruptStoreError, match=r"pixels\.memmap' holds 10 rows"):
        r.shards[0].take(0, 0, ("pixels",), torch.tensor([3, 20]))
    with pytest.raises(CorruptStoreError, match=r"pixels\.memmap' holds 10 rows"):
        r.shards[0].take(0, 0, ("pixels",), torch.tensor([3, 20] * 40))  # a gather of 240 KB


def test_bad_compression_arguments(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown codec 'lz9'"):
        TrajectoryWriter(tmp_path / "a", compression="lz9")
    with pytest.raises(ConfigError, match="level 99 of zstd"):
        TrajectoryWriter(tmp_path / "b", compression=("zstd", 99))
    w = TrajectoryWriter(tmp_path / "c", compression={"nope": "zstd"})
    with pytest.raises(ConfigError, match="compression names key 'nope'"):
        w.extend(_pixels_rollout(3))
    w.close()
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(MissingDependencyError, match="pip install zstandard"):
        TrajectoryWriter(tmp_path / "d", compression="zstd")


def test_compact_cli(tmp_path, capsys):
    rollout = _pixels_rollout(300, h=48)
    path = tmp_path / "c"
    with TrajectoryWriter(path, chunk_rows=64) as w:
        w.extend(rollout)
    assert main(["compact", str(path), "--keys", "pixels", "--level", "1"]) == 0
    out = capsys.readouterr().out
    assert "column files compressed in 1 shard(s)" in out
    assert {p.name for p in _packed(path)} == {"pixels.zst"}
    assert_store_matches(TrajectoryReader(path), rollout)
    assert main(["info", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("pixels"))
    assert "on disk" in line
    assert "raw" in line
    assert "x)" in line
    assert main(["compact", str(path), "--keys", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "compression names key 'nope'" in err
    (shard,) = (path / "shards").iterdir()
    with TrajectoryWriter(path, shard=shard.name):  # a writer holds the shard
        assert main(["compact", str(path)]) == 2
    assert "held by another writer" in capsys.readouterr().err


@pytest.mark.parametrize("version", [2, 3, 4])
def test_the_pinned_compressed_stores_read_bit_for_bit(tmp_path, version):
    """tests/data/store_v2 (frames checksum their content, layout 1), store_v3 (the index
    checksums each frame, layout 2) and store_v4 (and the blocks are compressed against
    a dictionary, layout 3) keep reading; a damaged block of any is an error naming it."""
    import shutil

    from tests.storage.make_pinned_store import PINNED, pinned_rollout

    path = tmp_path / f"v{version}"
    shutil.copytree(PINNED.with_name(f"store_v{version}"), path)
    commit = json.loads((path / "shards" / "s0" / "COMMIT").read_text())
    assert commit["version"] == version
    packed = _packed(path)
    assert {p.read_bytes()[:8] for p in packed} == {f"TRLRECZ{version - 1}".encode()}
    assert not [p for p in path.rglob("*.memmap") if p.stat().st_size]
    r = TrajectoryReader(path)
    assert_store_matches(r, pinned_rollout())
    assert r.episode_metadata(0) == {"t": 2}
    pixels = next(p for p in packed if p.name == "pixels.zst")
    data = bytearray(pixels.read_bytes())
    data[-6] ^= 0x10  # inside the last frame
    pixels.write_bytes(bytes(data))
    r = TrajectoryReader(path)
    from trlrec.storage.format import ZHEAD_PREFIX, CompressedHeader

    head = bytes(data[: CompressedHeader.head_size(bytes(data[:ZHEAD_PREFIX]))])
    last = CompressedHeader.parse(head, len(data), pixels).blocks - 1
    with pytest.raises(CorruptStoreError, match=rf"pixels\.zst'.*block {last} "):
        [r.episodes[i] for i in range(len(r.episodes))]
    stream, chunk = int(pixels.parent.parent.name), int(pixels.parent.name.split("-")[1])
    rows = r.shards[0].chunk(stream, chunk)[("pixels",)].rows
    with pytest.raises(CorruptStoreError, match=rf"pixels\.zst'.*block {last} "):
        r.shards[0].take(stream, chunk, ("pixels",), torch.arange(rows))  # every frame at once
    assert main(["verify", str(path)]) == 1


@pytest.mark.parametrize("version", [2, 3])
def test_compacting_an_older_store_makes_it_version_4(tmp_path, version):
    """A version 2 or 3 shard compacted further holds files of two layouts, each read by
    its own."""
    import shutil

    from tests.storage.make_pinned_store import PINNED, pinned_rollout

    path = tmp_path / f"v{version}"
    shutil.copytree(PINNED.with_name(f"store_v{version}"), path)
    chunk = path / "shards" / "s0" / "streams" / "0" / "chunk-000000"
    r = TrajectoryReader(path)
    raw = r.shards[0].chunk(0, 0)[("action",)]
    want = raw[:].clone()
    r.close()
    (chunk / "action.zst").unlink()  # as if recorded raw: compact compresses it again
    want.numpy().tofile(chunk / "action.memmap")
    assert main(["compact", str(path)]) == 0
    commit = json.loads((path / "shards" / "s0" / "COMMIT").read_text())
    assert commit["version"] == 4
    assert (chunk / "action.zst").read_bytes()[:8] == b"TRLRECZ3"
    assert (chunk / "pixels.zst").read_bytes()[:8] == f"TRLRECZ{version - 1}".encode()
    assert_store_matches(TrajectoryReader(path), pinned_rollout())


def test_the_recorder_passes_compression_through(tmp_path, stub_env_cls):
    from torchrl.envs import TransformedEnv

    from trlrec import TensorDictRecorder

    env = stub_env_cls(episode_lengths=(3, 5), batch_size=(2,), pixels=(6, 6, 3))
    with TensorDictRecorder(tmp_path / "r", compression={"pixels": "zstd"}, chunk_rows=4) as rec:
        rollout = TransformedEnv(env, rec).rollout(12, break_when_any_done=False)
    assert {p.name for p in _packed(tmp_path / "r")} == {"pixels.zst"}
    assert_store_matches(TrajectoryReader(tmp_path / "r"), rollout)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_the_replay_buffer_samples_compressed_and_raw_stores(tmp_path, compression):
    rollout = _pixels_rollout(200, h=16)
    path = tmp_path / "rb"
    with TrajectoryWriter(path, compression=compression, chunk_rows=64) as w:
        w.extend(rollout)
    rb = TrajectoryReader(path).as_replay_buffer(batch_size=64)
    for _ in range(3):
        batch = rb.sample()
        step = batch["pixels"][:, 0, 0].long()
        assert torch.equal(batch["pixels"], rollout["pixels"][step])
        assert torch.equal(batch["next", "pixels"], rollout["next", "pixels"][step])


def _big_rows_store(tmp_path, T: int = 48):
    """A store whose pixel rows (256x256 bytes) are blocks of one row each."""
    rollout = _pixels_rollout(T, h=256)
    path = tmp_path / "big"
    with TrajectoryWriter(path, compression="zstd", chunk_rows=64) as w:
        w.extend(rollout)
    r = TrajectoryReader(path)
    assert r.shards[0].chunk(0, 0)[("pixels",)].head.block_rows == 1
    return rollout, r


@pytest.fixture
def split_decodes(monkeypatch):
    """Every gather of more than one block split over 3 threads, a block a group; their names."""
    from trlrec.storage import blocks, decode_threads
    from trlrec.storage.compression import Codec

    monkeypatch.setattr(decode_threads, "PART_BYTES", 1)
    monkeypatch.setattr(decode_threads, "DECODE_THREADS", 3)
    monkeypatch.setattr(blocks, "GROUP_BYTES", 1)
    monkeypatch.setattr(blocks, "WHOLE_BYTES", 0)  # every column read by block
    names: set[str] = set()
    decode = Codec.decompress_into

    def spy(*args):
        import threading
        import time

        names.add(threading.current_thread().name)
        time.sleep(0.01)  # long enough for the pool's threads to take groups too: each
        decode(*args)  # thread takes the next group when done, the caller first

    monkeypatch.setattr(Codec, "decompress_into", spy)
    return names


@pytest.mark.parametrize(
    "offsets", [[3, 9, 10, 40, 47], [47, 10, 3, 9], [5, 5, 30, 5]], ids=["rising", "any", "repeats"]
)
def test_a_take_decoded_on_threads_is_exact(tmp_path, split_decodes, offsets):
    rollout, r = _big_rows_store(tmp_path)
    got = r.shards[0].take(0, 0, ("pixels",), torch.tensor(offsets))
    assert torch.equal(got, rollout["pixels"][offsets])
    if len(set(offsets)) > 2:
        assert any(n.startswith("trlrec-decode") for n in split_decodes), split_decodes


def test_a_damaged_block_decoded_on_another_thread_is_an_error(tmp_path, split_decodes):
    rollout, r = _big_rows_store(tmp_path)
    r.close()
    (zst,) = [p for p in _packed(tmp_path / "big") if p.name == "pixels.zst"]
    data = bytearray(zst.read_bytes())
    data[-3] ^= 0xFF  # the last block's frame: the last part, another thread's
    zst.write_bytes(bytes(data))
    shard = TrajectoryReader(tmp_path / "big").shards[0]
    rows = shard.chunk(0, 0)[("pixels",)].rows
    with pytest.raises(CorruptStoreError, match=rf"pixels\.zst'.*block {rows - 1} fails its"):
        shard.take(0, 0, ("pixels",), torch.arange(rows))
    assert torch.equal(shard.take(0, 0, ("pixels",), torch.arange(40)), rollout["pixels"][:40])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_decodes_on_threads_of_its_own(tmp_path, split_decodes):
    import signal
    import time

    rollout, r = _big_rows_store(tmp_path)
    shard = r.shards[0]
    rows = torch.arange(0, 48, 3)
    assert torch.equal(shard.take(0, 0, ("pixels",), rows), rollout["pixels"][rows])  # a pool
    want = rollout["pixels"][rows + 1].numpy()
    pid = os.fork()
    if pid == 0:  # the child: the parent's decode threads are not here
        code = 2
        try:  # compared with numpy: torch's own thread pool may hang in a forked child
            got = shard.take(0, 0, ("pixels",), rows + 1)
            code = 0 if (got.numpy() == want).all() else 1
        except BaseException as err:  # reported by the parent: the child only exits
            (tmp_path / "child-error").write_text(repr(err))
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its parent's decode pool")
    error = tmp_path / "child-error"
    assert os.waitstatus_to_exitcode(done[1]) == 0, error.exists() and error.read_text()


def test_a_small_column_is_decompressed_once_and_kept_whole(tmp_path, monkeypatch):
    rollout = _pixels_rollout(300)
    with TrajectoryWriter(tmp_path / "s", compression="zstd", chunk_rows=512) as w:
        w.extend(rollout)
    shard = TrajectoryReader(tmp_path / "s").shards[0]
    decoded: list[int] = []
    decompress = CompressedColumn._decompress

    def spy(self, blocks, out):
        decoded.append(len(blocks))
        decompress(self, blocks, out)

    monkeypatch.setattr(CompressedColumn, "_decompress", spy)
    key = ("next", "done")
    for rows in ([299, 0, 7], [1, 1, 150]):
        got = shard.take(0, 0, key, torch.tensor(rows))
        assert torch.equal(got, rollout["next", "done"][rows])
    column = shard.chunk(0, 0)[key]
    assert decoded == [column.head.blocks]  # every block once, on the first take only


def test_short_writes_of_a_compressed_column_are_finished(tmp_path, monkeypatch):
    # the kernel may write less than asked (a signal, a full pipe of a FUSE disk): the
    # sealer writes the rest, in order
    pwritev = os.pwritev
    calls = []

    def short(fd, buffers, offset):
        calls.append(len(buffers))
        head = bytes(buffers[0])[:5]  # at most 5 bytes of the first buffer
        return pwritev(fd, [head], offset)

    monkeypatch.setattr(os, "pwritev", short)
    rollout = _pixels_rollout(120, h=64)
    with TrajectoryWriter(tmp_path / "w", compression="zstd", chunk_rows=64) as w:
        w.extend(rollout)
    monkeypatch.setattr(os, "pwritev", pwritev)
    assert max(calls) > 1  # several frames asked for at once
    assert_store_matches(TrajectoryReader(tmp_path / "w"), rollout)


def test_chunks_are_compressed_while_recording_once_a_commit_goes_past_them(tmp_path):
    """Each stream's full chunks are sealed as the step loop goes on, once each, and a
    writer that goes on in a resumed shard seals the chunks it fills in turn."""
    env_rollout = _pixels_rollout(60, h=8)
    path = tmp_path / "s"

    def sealed(shard, stream):
        chunks = sorted((shard / "streams" / str(stream)).iterdir())
        return [(c / "pixels.zst").exists() for c in chunks]

    w = TrajectoryWriter(path, compression="zstd", chunk_rows=16)
    for t in range(41):  # rows 0..41 of one stream: chunks 0 and 1 full, chunk 2 open
        w.append(env_rollout[t])
        if t in (20, 40):
            w.flush()  # a commit past chunk 0 (then 1) ...
            w.flush()  # ... whose writes are done at the next commit: it is sealed
            w._rec.sealer.wait()
            assert sealed(w.shard_path, 0)[:-1] == [True] * (t // 16)
    assert sealed(w.shard_path, 0) == [True, True, False]
    w.close()
    shard = w.shard_path
    assert sealed(shard, 0) == [True, True, True]
    kw = {"compression": "zstd", "chunk_rows": 16, "shard": shard.name}
    with TrajectoryWriter(path, **kw) as w2:
        for t in range(41, 60):  # a fresh chunk (3) filled, then chunk 4
            w2.append(env_rollout[t])
        w2.flush()
        w2.flush()
        w2._rec.sealer.wait()
        assert sealed(shard, 0) == [True, True, True, True, False]
    r = TrajectoryReader(path)
    assert r.num_steps == 60
    assert torch.equal(r.episodes[0]["pixels"], env_rollout["pixels"][:41])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_childs_decompression_buffers_are_its_own():
    """The block cache's buffers and the scratch buffers are private maps: a child
    decompressing into them after a fork never changes what its parent holds."""
    from trlrec.storage import blocks

    mine = blocks.scratch(4096)
    mine[:] = 1
    block = BlockCache().buffer(4096).numpy()
    block[:] = 1
    pid = os.fork()
    if pid == 0:
        blocks.scratch(4096)[:] = 2
        block[:] = 2
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert (mine == 1).all()
    assert (block == 1).all()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.integers(1, 300), min_size=1, max_size=3),
    row_bytes=st.sampled_from([1, 3, 700, 5000, 70_000]),
    group_blocks=st.integers(1, 5),
    piece_blocks=st.integers(1, 12),
    threads=st.integers(1, 3),
    picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=40),
    shuffle=st.booleans(),
)
def test_a_gather_is_a_take(tmp_path_factory, rows, row_bytes, group_blocks, piece_blocks,
                            threads, picks, shuffle):  # fmt: skip
    """Any rows (any order, repeats, the short last block) of one or more columns read by
    block, end to end or put in any order, in groups and pieces of any size on any
    number of threads, are numpy's take of the raw rows."""
    import numpy as np

    from trlrec.storage import blocks, decode_threads
    from trlrec.storage.compression import get_codec
    from trlrec.storage.format import block_rows_for, column_file, compressed_file
    from trlrec.storage.sealing import seal_column

    gen = np.random.default_rng(sum(rows) * row_bytes)
    raws, parts = [], []
    for n in rows:
        chunk = tmp_path_factory.mktemp("g")
        raw = (gen.integers(0, 4, (n, row_bytes)) * 60).astype(np.uint8)  # compressible
        raw.tofile(column_file(chunk, ("x",)))
        seal_column(chunk, ("x",), n, row_bytes, get_codec("zstd"), 3)
        column = CompressedColumn(
            compressed_file(chunk, ("x",)), (row_bytes,), torch.uint8, BlockCache()
        )
        offsets = np.array([p % n for p in picks[len(raws) :]] or [0], dtype=np.int64)
        raws.append(raw[offsets])
        parts.append((column, offsets))
    want = np.concatenate(raws)
    order = gen.permutation(len(want)) if shuffle else None
    out = np.empty((len(want), row_bytes), np.uint8)
    group = group_blocks * block_rows_for(row_bytes) * row_bytes
    piece = piece_blocks * block_rows_for(row_bytes) * row_bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blocks, "GROUP_BYTES", group)
        mp.setattr(blocks, "SAMPLE_BYTES", piece)
        mp.setattr(decode_threads, "PART_BYTES", 1)
        mp.setattr(decode_threads, "DECODE_THREADS", threads)
        blocks.gather(parts, out, order)
    assert (out == (want if order is None else want[order])).all()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_chunks_are_sealed_at_idle_priority_off_the_step_loop(tmp_path, monkeypatch):
    """The sealing thread takes only CPU time the step loop does not want."""
    from trlrec.storage import sealing

    seal, seen = sealing.seal_column, []

    def spy(*args):
        seen.append(os.sched_getscheduler(0))
        return seal(*args)

    monkeypatch.setattr(sealing, "seal_column", spy)
    rollout = _pixels_rollout(40, h=8)
    with TrajectoryWriter(tmp_path / "s", compression="zstd", chunk_rows=8) as w:
        for t in range(40):
            w.append(rollout[t])
            w.flush()
    assert len(seen) > 4
    assert set(seen) == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own is untouched
    assert_store_matches(TrajectoryReader(tmp_path / "s"), rollout)


def test_a_slow_sealer_holds_the_step_loop_to_a_bounded_backlog(tmp_path, monkeypatch):
    """A worker kept off the CPUs makes the step loop wait: the queue never grows."""
    import time

    from trlrec.storage import sealing

    seal = sealing.seal_column

    def slow(*args):
        time.sleep(0.01)
        return seal(*args)

    monkeypatch.setattr(sealing, "seal_column", slow)
    monkeypatch.setattr(sealing, "BACKLOG_CHUNKS", 2)
    rollout = _pixels_rollout(120, h=8)
    queued = []
    with TrajectoryWriter(tmp_path / "s", compression={"pixels": "zstd"}, chunk_rows=2) as w:
        for t in range(120):
            w.append(rollout[t])
            w.flush()
            queued.append(sum(not f.done() for f in w._rec.sealer._futures))
    assert max(queued) == 2  # 2 chunks of the one compressed column, one stream
    assert len(_packed(tmp_path / "s")) >= 60  # every chunk sealed in the end
    assert not list((tmp_path / "s").rglob("pixels.memmap"))
    assert_store_matches(TrajectoryReader(tmp_path / "s"), rollout)


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="Linux's per-process I/O counts")
@pytest.mark.parametrize("io", io_kinds())
def test_the_raw_rows_of_a_compressed_column_need_not_reach_the_disk(tmp_path, io):
    """Their pages stay cached until the chunk is sealed; removed, they are never written."""

    def cancelled() -> int:  # bytes of dirty pages dropped unwritten (a file removed)
        with open("/proc/self/io") as f:
            stats = dict(line.split(": ") for line in f.read().splitlines())
        return int(stats["cancelled_write_bytes"])

    rollout = _pixels_rollout(600, h=64)  # 4 KiB rows, writes of 64 rows: 256 KiB
    before = cancelled()
    with TrajectoryWriter(tmp_path / "s", compression={"pixels": "zstd"}, chunk_rows=128, io=io,
                          stage_steps=64) as w:  # fmt: skip
        w.extend(rollout)
    raw = rollout["pixels"].numel()  # bytes of the compressed column
    assert cancelled() - before >= raw // 2
    assert_store_matches(TrajectoryReader(tmp_path / "s"), rollout)


@pytest.mark.parametrize("durable", [False, True])
def test_sealed_files_are_fsynced_only_for_a_durable_writer(tmp_path, monkeypatch, durable):
    """A durable writer's sealed files are on disk before their raw ones go; others skip it."""
    import threading

    real, on_sealer = os.fsync, []

    def spy(fd):
        on_sealer.append(threading.current_thread().name.startswith("trlrec-seal"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    rollout = _pixels_rollout(40, h=8)
    path = tmp_path / "s"
    with TrajectoryWriter(path, compression="zstd", chunk_rows=8, durable=durable) as w:
        for t in range(40):
            w.append(rollout[t])
            w.flush()
    sealed = len(_packed(path))
    assert sealed >= 5
    if durable:  # each compressed file and its directory, at least
        assert sum(on_sealer) >= 2 * sealed
    else:
        assert not any(on_sealer)
    assert_store_matches(TrajectoryReader(path), rollout)
