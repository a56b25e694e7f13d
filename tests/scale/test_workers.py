"""Recorders inside worker processes: an env factory holding a recorder, given to TorchRL.

Each worker (of a ``MultiSyncCollector`` or a ``ParallelEnv``) builds its own env and
recorder, and writes a shard of one dataset named for its host and pid. The store is
checked against what TorchRL handed back: each worker's shard holds exactly the steps
that worker produced, bit for bit, in order, its episodes whole; nobody calls the
workers' recorders' ``close()``. A SIGKILL of one worker loses nothing the other one
committed.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial

import torch
from tensordict import TensorDictBase
from torchrl.collectors import MultiSyncCollector
from torchrl.envs import ParallelEnv, TransformedEnv

from tests.conftest import StubEnv
from tests.scale.test_routing import fork_workers  # noqa: F401  (a fixture)
from tests.storage.helpers import assert_td_identical
from trlrec import TensorDictRecorder, TrajectoryReader
from trlrec.cli.verify import verify_store
from trlrec.storage.format import FLAG_CUT, FLAG_DONE, FLAG_OPEN

LENGTHS = [(3, 5), (7,)]  # worker 0's and worker 1's episode lengths


def make_env(path, lengths) -> TransformedEnv:
    """What each worker runs: the stub env holding a recorder (no close() is ever called)."""
    return TransformedEnv(StubEnv(episode_lengths=lengths), TensorDictRecorder(path))


def factories(path) -> list:
    return [partial(make_env, path, lengths) for lengths in LENGTHS]


def split(steps: TensorDictBase) -> list[TensorDictBase]:
    """A worker's ``[T]`` steps cut into episodes at its done flags."""
    done = steps["next", "done"].reshape(-1).tolist()
    out, start = [], 0
    for t, d in enumerate(done):
        if d:
            out.append(steps[start : t + 1])
            start = t + 1
    return out + ([steps[start:]] if start < len(done) else [])


def shard_of(path, pid: int):
    """The reader's shard written by process ``pid`` (its name and shard.json say so)."""
    reader = TrajectoryReader(path)
    (shard,) = [s for s in reader.shards if s.written_by.get("pid") == pid]
    assert f"-p{pid}-" in shard.name
    return reader, reader.shards.index(shard)


def assert_worker_shard(path, pid: int, steps: TensorDictBase, *, exact: bool) -> int:
    """The shard of ``pid`` holds ``steps`` (as a prefix unless ``exact``), episodes whole.

    Returns the number of steps the shard holds.
    """
    reader, s = shard_of(path, pid)
    first = sum(reader.shards[i].num_episodes for i in range(s))
    stored = [reader.episodes[first + j] for j in range(reader.shards[s].num_episodes)]
    flags = [reader.episode_info(first + j)["flags"] for j in range(len(stored))]
    got = torch.cat(stored) if stored else steps[:0]
    # a ParallelEnv worker's env also sees TorchRL's private "_reset" flags, kept as given
    got = got.exclude(*[k for k in got.keys() if k.startswith("_") and k not in steps.keys()])
    n = min(got.shape[0], steps.shape[0])
    assert n == steps.shape[0] or not exact, (got.shape, steps.shape)
    assert_td_identical(got[:n], steps[:n])
    for ep, flag in zip(stored[:-1], flags[:-1], strict=True):  # whole, ended by the env
        assert flag == FLAG_DONE, flags
        assert bool(ep["next", "done"][-1])
    if stored:  # the last one: done, or still open when the recording stopped
        assert flags[-1] in (FLAG_DONE, FLAG_CUT, FLAG_OPEN)
    assert len(stored) == len(split(got)), "an episode was cut the env did not end"
    return got.shape[0]


def test_recorders_in_collector_workers_each_write_a_shard(tmp_path, fork_workers):  # noqa: F811
    path = tmp_path / "s"
    collector = MultiSyncCollector(factories(path), None, frames_per_batch=8, total_frames=96)
    batches = [batch.clone() for batch in collector]
    pids = [p.pid for p in collector.procs]
    collector.shutdown()  # TorchRL does not close a plain EnvBase's transforms
    rows = torch.cat(batches, dim=1)  # [worker, T]: what each worker produced
    reader = TrajectoryReader(path)
    assert len(reader.shards) == 2
    assert reader.num_steps >= 96
    for w, pid in enumerate(pids):
        assert assert_worker_shard(path, pid, rows[w], exact=True) >= rows.shape[1]
    assert verify_store(path, progress=False).ok


def test_recorders_in_parallel_env_workers(tmp_path):
    path = tmp_path / "s"
    env = ParallelEnv(2, factories(path), mp_start_method="fork")
    rollout = env.rollout(40, break_when_any_done=False)
    pids = [p.pid for p in env._workers]
    env.close()
    for w, pid in enumerate(pids):
        assert assert_worker_shard(path, pid, rollout[w], exact=True) == 40


def test_sigkill_of_one_worker_loses_nothing_the_other_committed(tmp_path, fork_workers):  # noqa: F811
    path = tmp_path / "s"
    collector = MultiSyncCollector(factories(path), None, frames_per_batch=8, total_frames=10_000)
    batches = []
    for i, batch in enumerate(collector):
        batches.append(batch.clone())
        if i == 5:
            break
    pids = [p.pid for p in collector.procs]
    time.sleep(0.5)  # commits on done (0.2 s after the last one) and by the idle clock
    before = {pid: shard_of(path, pid)[0].shards[shard_of(path, pid)[1]].num_steps for pid in pids}
    assert all(n > 0 for n in before.values()), before
    os.kill(pids[1], signal.SIGKILL)
    collector.procs[1].join(timeout=10)
    collector.shutdown()  # worker 0 ends normally: its writer closes at its exit
    rows = torch.cat(batches, dim=1)
    kept = assert_worker_shard(path, pids[0], rows[0], exact=False)
    assert kept >= before[pids[0]]
    assert kept >= rows.shape[1]
    killed = assert_worker_shard(path, pids[1], rows[1], exact=False)
    assert killed >= before[pids[1]]  # its committed prefix, exact
    report = verify_store(path, progress=False)
    assert report.ok, report.problems


def make_filmed_env(log_dir: str) -> TransformedEnv:
    """A worker's env filmed by a VideoRecorder with its own CSV logger (same directory)."""
    from trlrec import VideoRecorder
    from trlrec.loggers import CSVLogger

    logger = CSVLogger("films", log_dir=log_dir)
    return TransformedEnv(StubEnv(pixels=(8, 8, 3)), VideoRecorder(logger, tag="clip"))


def test_video_recorders_in_workers_send_each_worker_video_once(tmp_path):
    from tests.loggers.logger_readback import read_mp4

    env = ParallelEnv(2, partial(make_filmed_env, str(tmp_path)), mp_start_method="fork")
    rollout = env.rollout(12, break_when_any_done=False)
    env.close()  # the workers end: each finishes its video and hands it to its logger
    videos = sorted((tmp_path / "films" / "videos").glob("clip_*.mp4"))
    assert len(videos) == 2, videos  # one per worker, at distinct steps
    for video in videos:
        frames = read_mp4(video)
        assert frames.shape[1:3] == (8, 8)
        assert frames.shape[0] == 12 + 3  # 12 steps, plus the frames of the 3 resets
    assert rollout.shape == (2, 12)
    spool = tmp_path / "films" / "video_spool"
    assert not list(spool.glob("*.video.json"))  # nothing left to send again


def test_a_recorder_in_a_collector_env_copies_steps_natively(tmp_path):
    # every TorchRL collector adds ("collector", "traj_ids") to the steps its env takes: the
    # recorder records the nested key, bit for bit, through the native capture
    from torchrl.collectors import Collector

    from trlrec import native

    rec = TensorDictRecorder(tmp_path / "c")
    env = TransformedEnv(StubEnv(episode_lengths=(7,)), rec)
    collector = Collector(env, None, frames_per_batch=20, total_frames=40)
    batches = [b.clone() for b in collector]
    writer = rec._writer
    assert writer is not None
    assert writer._rec.staging.native == (native.extension("capture") is not None)
    collector.shutdown()
    rec.close()
    reader = TrajectoryReader(tmp_path / "c")
    got = torch.cat([reader.episodes[i] for i in range(reader.num_episodes)])
    want = torch.cat(batches)
    assert torch.equal(got["collector", "traj_ids"], want["collector", "traj_ids"])
    assert torch.equal(got["next", "observation"], want["next", "observation"])
