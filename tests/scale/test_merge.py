"""``trlrec merge``; ``trlrec info`` and ``verify`` summarising per shard and per worker."""

from __future__ import annotations

import json
import os

import pytest

from tests.storage.helpers import assert_td_identical
from trlrec import TrajectoryReader, TrajectoryWriter
from trlrec.cli import main
from trlrec.errors import ConfigError, SchemaError, ShardLockedError
from trlrec.storage.merge import merge_stores


def record(path, env, steps: int, **kwargs) -> None:
    with TrajectoryWriter(path, **kwargs) as w:
        w.extend(env.rollout(steps, break_when_any_done=False))


@pytest.fixture
def two_stores(tmp_path, stub_env_cls):
    a, b = tmp_path / "a", tmp_path / "b"
    record(a, stub_env_cls(episode_lengths=(3,)), 10, metadata={"run": "a"})
    record(a, stub_env_cls(episode_lengths=(4,), batch_size=(2,)), 6, metadata={"run": "a"})
    record(b, stub_env_cls(episode_lengths=(5,)), 12, metadata={"run": "b"})
    return a, b


def test_merge_holds_every_episode_of_every_source_with_data_linked(two_stores, tmp_path):
    a, b = two_stores
    result = merge_stores([a, b], tmp_path / "ab")
    merged = TrajectoryReader(tmp_path / "ab")
    sources = [*TrajectoryReader(a).shards, *TrajectoryReader(b).shards]
    assert len(result.shards) == 3
    assert len(set(result.shards)) == 3  # a's and b's first shards had one name
    by_name = {s.name: s for s in merged.shards}
    for src, name in zip(sources, result.shards, strict=True):
        dst = by_name[name]
        assert dst.num_episodes == src.num_episodes
        for j in range(src.num_episodes):
            assert_td_identical(dst.episode(j), src.episode(j))
    assert merged.num_steps == sum(s.num_steps for s in sources)
    assert result.copied == 0
    assert result.linked > 0
    column = next((tmp_path / "ab").rglob("observation.memmap"))
    assert os.stat(column).st_nlink == 2  # linked, not copied
    assert merged.metadata == {"merged": [
        {"path": str(a), "metadata": {"run": "a"}}, {"path": str(b), "metadata": {"run": "b"}},
    ]}  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if ".merge-" in p.name]


def test_merge_copy_and_the_sources_may_go_on(two_stores, tmp_path, stub_env_cls):
    a, b = two_stores
    merge_stores([a, b], tmp_path / "ab", copy=True)
    column = next((tmp_path / "ab").rglob("observation.memmap"))
    assert os.stat(column).st_nlink == 1
    merge_stores([a], tmp_path / "a2")
    before = [ep.clone() for ep in TrajectoryReader(tmp_path / "a2").episodes]
    shard = sorted((a / "shards").iterdir())[0].name
    record(a, stub_env_cls(episode_lengths=(3,)), 7, shard=shard)  # a source's shard goes on
    after = TrajectoryReader(tmp_path / "a2")
    assert after.num_episodes == len(before)
    for got, exp in zip(after.episodes, before, strict=True):
        assert_td_identical(got, exp)


def test_merge_refuses_other_schemas_existing_destinations_and_live_shards(
    two_stores, tmp_path, stub_env_cls
):
    a, _ = two_stores
    other = tmp_path / "other"
    record(other, stub_env_cls(episode_lengths=(3,), obs_shape=(5,)), 4)
    with pytest.raises(SchemaError, match=r"other columns.*observation state \[5\].*\[4\]"):
        merge_stores([a, other], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="exists; merge writes a new store"):
        merge_stores([a], other)
    live = TrajectoryWriter(tmp_path / "live")
    live.extend(stub_env_cls().rollout(3, break_when_any_done=False))
    live.flush()
    with pytest.raises(ShardLockedError, match="is being written"):
        merge_stores([a, tmp_path / "live"], tmp_path / "m")
    live.close()
    merge_stores([a, tmp_path / "live"], tmp_path / "m")
    assert not [p for p in tmp_path.iterdir() if ".merge-" in p.name]


def test_cli_merge_info_and_verify_per_worker(two_stores, tmp_path, capsys):
    a, b = two_stores
    assert main(["merge", str(a), str(b), str(tmp_path / "ab")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"merged 3 shard(s) of 2 store(s) into {tmp_path / 'ab'}: ")
    assert "0 copied" in out
    assert main(["info", "--json", str(tmp_path / "ab")]) == 0
    info = json.loads(capsys.readouterr().out)
    (worker,) = info["workers"]  # all recorded by this process
    assert worker["pid"] == os.getpid()
    assert worker["steps"] == info["steps"] == 10 + 12 + 12
    assert len(worker["shards"]) == 3
    assert sum(s["episode_ends"]["done"] for s in info["shards"]) == info["episode_ends"]["done"]
    assert main(["info", str(tmp_path / "ab")]) == 0
    text = capsys.readouterr().out
    assert f"pid {os.getpid()}  3 shard(s)  34 steps" in text
    assert main(["verify", str(tmp_path / "ab")]) == 0
    text = capsys.readouterr().out
    assert f"pid {os.getpid()}: OK, 3 shard(s)" in text
    assert main(["merge", str(a)]) == 2
    assert "merge takes SRC... DST" in capsys.readouterr().err
    assert main(["merge", str(a), str(b)]) == 2
    assert "exists; merge writes a new store" in capsys.readouterr().err
