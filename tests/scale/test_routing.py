"""``TensorDictRecorder.extend`` on the batches of every TorchRL collector: no episode cut.

Each test collects with a real collector over the deterministic stub env, records every
batch it yields with ``rec.extend(batch)``, and checks the store against the batches:
each trajectory id the collector handed out is one stored episode holding exactly its
steps, bit for bit, in the order the collector yielded them; only the trajectories
still running when the collector stopped end cut.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from tensordict import TensorDictBase
from torchrl.collectors import AsyncCollector, Collector, MultiAsyncCollector, MultiSyncCollector

from tests.conftest import StubEnv
from tests.storage.helpers import assert_td_identical
from trlrec import TensorDictRecorder, TrajectoryReader
from trlrec.storage.format import FLAG_CUT, FLAG_DONE

TRAJ = ("collector", "traj_ids")


@pytest.fixture
def fork_workers(monkeypatch):
    """Fork the collectors' workers (spawn re-imports torch in each: ~20 s here)."""
    import torchrl._utils
    import torchrl.collectors._multi_base

    monkeypatch.setattr(torchrl._utils, "_get_default_mp_start_method", lambda: "fork")
    monkeypatch.setattr(
        torchrl.collectors._multi_base, "_set_mp_start_method_if_unset", lambda method: None
    )


def by_trajectory(batches: list[TensorDictBase]) -> dict[int, TensorDictBase]:
    """The collector's steps grouped by trajectory id, in the order it yielded them."""
    rows: dict[int, list[TensorDictBase]] = {}
    for batch in batches:
        flat = batch.reshape(-1, batch.shape[-1])
        for n in range(flat.shape[0]):
            for t in range(flat.shape[1]):
                step = flat[n, t]
                rows.setdefault(int(step[TRAJ]), []).append(step)
    return {i: torch.stack(steps) for i, steps in rows.items()}


def assert_whole_episodes(path, batches: list[TensorDictBase], open_at_end: int | None) -> None:
    """Every trajectory is one stored episode, bit for bit; ``open_at_end`` of them cut.

    Under load TorchRL's ``MultiAsyncCollector`` sometimes never yields a worker's batch
    (seen here: worker 1's steps 4-7 missing, its next batch starting mid-episode), so a
    trajectory can stop without a done flag in what the collector gave: it is still one
    episode, flagged cut; ``open_at_end`` is then None (not counted).
    """
    want = by_trajectory(batches)
    reader = TrajectoryReader(path)
    assert reader.num_steps == sum(b.numel() for b in batches)
    assert reader.num_episodes == len(want), "an episode was cut into pieces"
    cut = 0
    for i in range(reader.num_episodes):
        ep = reader.episodes[i]
        ids = ep[TRAJ].unique().tolist()
        assert len(ids) == 1, f"episode {i} mixes trajectories {ids}"
        assert_td_identical(ep, want.pop(ids[0]))
        flags = reader.episode_info(i)["flags"]
        ended = bool(ep["next", "done"][-1])
        assert flags == (FLAG_DONE if ended else FLAG_CUT), (i, flags, ended)
        cut += not ended
    assert not want
    assert open_at_end is None or cut <= open_at_end


def record(collector, path) -> list[TensorDictBase]:
    rec = TensorDictRecorder(path)
    batches = []
    for batch in collector:
        rec.extend(batch)
        batches.append(batch.clone())
    collector.shutdown()
    rec.close()
    return batches


def makers(batch_size=()):
    return [
        partial(StubEnv, episode_lengths=(3, 5), batch_size=batch_size),
        partial(StubEnv, episode_lengths=(7,), batch_size=batch_size),
    ]


def test_multi_async_collector_workers_kept_apart(tmp_path, fork_workers):
    """One worker's [T] batch at a time, interleaved: each worker gets a lane (a shard)."""
    collector = MultiAsyncCollector(makers(), None, frames_per_batch=4, total_frames=80)
    batches = record(collector, tmp_path / "s")
    assert {b.batch_size for b in batches} == {torch.Size([4])}
    assert_whole_episodes(tmp_path / "s", batches, open_at_end=None)
    # a lane per worker; one more where a batch TorchRL never yielded left a gap
    assert 2 <= len(TrajectoryReader(tmp_path / "s").shards) <= 3


def test_multi_async_collector_batched_envs(tmp_path, fork_workers):
    """[B, T] batches of each worker's two sub-envs: rows stay streams, workers lanes."""
    collector = MultiAsyncCollector(makers((2,)), None, frames_per_batch=8, total_frames=96)
    batches = record(collector, tmp_path / "s")
    assert {b.batch_size for b in batches} == {torch.Size([2, 4])}
    assert_whole_episodes(tmp_path / "s", batches, open_at_end=None)


def test_multi_sync_collector_concatenated_along_time(tmp_path, fork_workers):
    """``cat_results=-1`` puts worker 1's steps after worker 0's in one [T] batch."""
    collector = MultiSyncCollector(
        makers(), None, frames_per_batch=8, total_frames=64, cat_results=-1
    )
    batches = record(collector, tmp_path / "s")
    assert {b.batch_size for b in batches} == {torch.Size([8])}
    assert_whole_episodes(tmp_path / "s", batches, open_at_end=2)


def test_multi_sync_collector_stacked(tmp_path, fork_workers):
    """The default stacks the workers as rows: one lane, a stream per worker."""
    collector = MultiSyncCollector(makers(), None, frames_per_batch=8, total_frames=48)
    batches = record(collector, tmp_path / "s")
    assert {b.batch_size for b in batches} == {torch.Size([2, 4])}
    assert_whole_episodes(tmp_path / "s", batches, open_at_end=2)
    assert len(TrajectoryReader(tmp_path / "s").shards) == 1


@pytest.mark.parametrize("cls", [Collector, AsyncCollector])
def test_single_worker_collectors(tmp_path, cls, fork_workers):
    collector = cls(makers()[0], None, frames_per_batch=4, total_frames=40)
    batches = record(collector, tmp_path / "s")
    assert_whole_episodes(tmp_path / "s", batches, open_at_end=1)
    assert len(TrajectoryReader(tmp_path / "s").shards) == 1


def test_lanes_are_bounded_when_every_batch_starts_afresh(tmp_path):
    """``reset_at_each_iter``: every batch cuts its episode; at most ``max_lanes`` shards."""
    collector = Collector(
        makers()[1], None, frames_per_batch=4, total_frames=40, reset_at_each_iter=True
    )
    rec = TensorDictRecorder(tmp_path / "s", max_lanes=3)
    batches = []
    for batch in collector:
        rec.extend(batch)
        batches.append(batch.clone())
    collector.shutdown()
    assert len(rec.writers) == 3
    rec.close()
    reader = TrajectoryReader(tmp_path / "s")
    assert len(reader.shards) == 3
    assert reader.num_steps == 40
    want = by_trajectory(batches)
    assert reader.num_episodes == len(want)
    for i in range(reader.num_episodes):
        ep = reader.episodes[i]
        assert_td_identical(ep, want[int(ep[TRAJ][0])])


def test_dump_logs_each_lane_episode_once_at_a_frame_of_the_run(tmp_path, fork_workers):
    from trlrec.loggers import MemoryLogger

    logger = MemoryLogger("routing", log_dir=str(tmp_path))
    rec = TensorDictRecorder(tmp_path / "s", logger=logger)
    collector = MultiAsyncCollector(makers(), None, frames_per_batch=4, total_frames=40)
    for batch in collector:
        rec.extend(batch)
    collector.shutdown()
    rec.dump()
    rec.close()
    reader = TrajectoryReader(tmp_path / "s")
    done = [reader.episode_info(i) for i in range(reader.num_episodes)]
    lengths = sorted(i["num_steps"] for i in done if i["flags"] == FLAG_DONE)
    logged = logger.scalars["trajectories/length"]
    assert sorted(int(v) for _, v in logged) == lengths
    assert all(0 < step <= 40 for step, _ in logged)
