"""trlrec on Ray: TorchRL's RayCollector workers recording one store, and Ray Data reading it.

One local Ray cluster for the module (2 CPUs). The recording tests run a real
``RayCollector`` whose 2 remote workers each hold a ``TensorDictRecorder`` at one path
(an env factory per worker; the worker's number is in its observations), and compare
every committed step with the batches the collector yielded, or with the worker's
deterministic rollout, bit for bit. The reading tests compare ``read_transitions`` /
``read_episodes`` with ``TrajectoryReader``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict, TensorDictBase

from tests.conftest import StubEnv
from trlrec import TensorDictRecorder, TrajectoryReader, TrajectoryWriter
from trlrec.errors import ConfigError, MissingDependencyError, UnsupportedDataError
from trlrec.storage.format import FLAG_DONE, FLAG_OPEN

ray = pytest.importorskip("ray")  # trlrec[ray], installed by the dev set-up: runs in ./run test
from torchrl.collectors.distributed import RayCollector  # noqa: E402

from trlrec.ray import (  # noqa: E402
    TrajectoryDatasource,
    commit_writers,
    read_episodes,
    read_transitions,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # RayCollector's weight notes

OBJECT_STORE = 128 * 2**20
WORKER = 10_000  # worker w's observations are offset by w * WORKER
KEYS = ["observation", "action", "done", "terminated", "truncated"]
NEXT_KEYS = ["observation", "reward", "done", "terminated", "truncated"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=OBJECT_STORE,
    )
    yield
    ray.shutdown()


class WorkerEnv(StubEnv):
    """A StubEnv whose observations say which worker ran it (``worker * WORKER`` added)."""

    def __init__(self, worker: int, length: int, step_sleep: float = 0.0):
        super().__init__(episode_lengths=(length,))
        self.worker = worker
        self.step_sleep = step_sleep

    def _observe(self) -> dict[str, torch.Tensor]:
        out = super()._observe()
        out["observation"] = out["observation"] + self.worker * WORKER
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return super()._step(tensordict)


def factory(path: Path, worker: int, step_sleep: float = 0.0, **writer: object) -> Callable:
    """What each Ray worker calls: its env, recording into the one store at ``path``."""

    def make_env():
        env = WorkerEnv(worker, length=7 + 4 * worker, step_sleep=step_sleep)
        return env.append_transform(TensorDictRecorder(path, **writer))

    return make_env


def deterministic_policy(td: TensorDictBase) -> TensorDictBase:
    """An action that is a function of the observation: the rollout is reproducible."""
    obs = td.get("observation")
    return td.set("action", (obs[..., :1].long() % 3))


def reference(worker: int, steps: int) -> TensorDictBase:
    """Worker ``worker``'s rollout under ``deterministic_policy``, made here."""
    env = WorkerEnv(worker, length=7 + 4 * worker)
    return env.rollout(steps, deterministic_policy, break_when_any_done=False)


def shard_of_worker(path: Path) -> dict[int, list[TensorDictBase]]:
    """Each worker's committed episodes (its shard's, in order), keyed by worker."""
    reader = TrajectoryReader(path)
    out: dict[int, list[TensorDictBase]] = {}
    offset = 0
    for shard in reader.shards:
        episodes = [reader.episodes[offset + j] for j in range(shard.num_episodes)]
        offset += shard.num_episodes
        worker = int(episodes[0]["observation"][0, 0].item()) // WORKER
        assert worker not in out, "two shards for one worker"
        out[worker] = episodes
    return out


def committed(path: Path) -> dict[int, int]:
    """Steps committed per worker."""
    try:
        return {w: sum(len(e) for e in eps) for w, eps in shard_of_worker(path).items()}
    except FileNotFoundError:
        return {}


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll until ``condition()`` (the writers' idle commits are asynchronous)."""
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"still waiting after {limit} s for {what}")
        time.sleep(0.1)


def assert_rows_equal(recorded: TensorDictBase, expected: TensorDictBase) -> None:
    for key in KEYS:
        assert torch.equal(recorded[key], expected[key]), key
    for key in NEXT_KEYS:
        assert torch.equal(recorded["next", key], expected["next", key]), ("next", key)


def assert_episodes_whole(path: Path) -> None:
    """Every finished episode was ended by the env (none cut); only the last may be open."""
    reader = TrajectoryReader(path)
    offset = 0
    for shard in reader.shards:
        flags = [reader.episode_info(offset + j)["flags"] for j in range(shard.num_episodes)]
        offset += shard.num_episodes
        assert all(f == FLAG_DONE for f in flags[:-1]), flags
        assert flags[-1] in (FLAG_DONE, FLAG_OPEN)
        for j in range(shard.num_episodes - 1):
            ep = reader.episodes[offset - shard.num_episodes + j]
            assert ep["next", "done"][-1].item()
            assert not ep["next", "done"][:-1].any()


# ------------------------------------------------------------------ recording


def test_ray_collector_workers_commit_every_batch_they_yield(cluster, tmp_path: Path) -> None:
    path = tmp_path / "store"
    collector = RayCollector(
        [factory(path, 0), factory(path, 1)],
        frames_per_batch=40,  # 20 per worker: episodes (7 and 11 steps) cross batches
        total_frames=240,
        sync=True,
        remote_configs={"num_cpus": 1},
        post_collect_hook=commit_writers,
    )
    batches = [b.clone() for b in collector]  # the iterator's end kills the workers
    assert len(batches) == 6
    assert batches[0].batch_size == (2, 20)
    # no wait: each batch was committed in its worker before it was sent
    recorded = shard_of_worker(path)
    assert sorted(recorded) == [0, 1]
    for w in (0, 1):
        yielded = torch.cat([b[w] for b in batches])
        assert (yielded["observation"][:, 0] // WORKER == w).all()
        assert_rows_equal(torch.cat(recorded[w]), yielded)
    assert TrajectoryReader(path).num_steps == 240
    assert_episodes_whole(path)
    # and back through Ray Data: the same transitions, in the reader's episode order
    wanted = ["observation", "next.reward", "episode_index", "step_index"]
    cols = gather(read_transitions(path, columns=wanted))
    order = np.lexsort((cols["step_index"], cols["episode_index"]))
    reader = TrajectoryReader(path)
    episodes = [reader.episodes[i] for i in range(reader.num_episodes)]
    assert np.array_equal(cols["observation"][order], torch.cat(episodes)["observation"].numpy())
    assert np.array_equal(cols["next.reward"][order], torch.cat(episodes)["next", "reward"].numpy())


def test_sigkill_of_a_ray_worker_keeps_its_committed_prefix_and_the_others_go_on(
    cluster, tmp_path: Path
) -> None:
    path = tmp_path / "store"
    writer = {"commit_every_seconds": 0.5}  # no hook: the writers' own clock commits
    collector = RayCollector(
        [factory(path, 0, **writer), factory(path, 1, step_sleep=0.01, **writer)],
        policy=deterministic_policy,
        frames_per_batch=40,
        total_frames=10**9,
        sync=True,
        remote_configs={"num_cpus": 1},
    )
    it = iter(collector)
    first = [next(it).clone() for _ in range(3)]  # 60 steps per worker
    w0, w1 = collector.remote_collectors
    wait_for(lambda: committed(path) == {0: 60, 1: 60}, "the idle commits of 60 steps each")
    pid = ray.get(w1.__ray_call__.remote(lambda self: os.getpid()))
    assert pid != os.getpid()

    r0, r1 = w0.next.remote(), w1.next.remote()  # worker 1 sleeps 10 ms a step
    time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)  # mid-batch: its uncommitted tail is lost
    after = [ray.get(r0)] + [ray.get(w0.next.remote()) for _ in range(2)]  # the others go on
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(r1)
    wait_for(lambda: committed(path).get(0) == 120, "worker 0's idle commit")
    collector.shutdown()

    steps = committed(path)
    assert steps[0] == 120, steps
    assert 60 <= steps[1] < 80, steps
    recorded = shard_of_worker(path)
    yielded0 = torch.cat([b[0] for b in first] + [b.reshape(-1) for b in after])
    assert_rows_equal(torch.cat(recorded[0]), yielded0)
    assert_rows_equal(torch.cat(recorded[0]), reference(0, 120))
    # the killed worker: every committed step exact, including those of its last batch
    assert_rows_equal(torch.cat(recorded[1])[:60], torch.cat([b[1] for b in first]))
    assert_rows_equal(torch.cat(recorded[1]), reference(1, steps[1]))
    assert_episodes_whole(path)


# -------------------------------------------------------------------- reading


def make_store(path: Path) -> TrajectoryReader:
    """Two shards: a [2]-batched stream set (chunks of 8 rows) and a single stream."""
    for envs, steps in ((2, 45), (0, 30)):
        env = StubEnv(episode_lengths=(5, 9), batch_size=(envs,) if envs else ())
        rollout = env.rollout(steps, break_when_any_done=False)
        rollout["h"] = rollout["observation"].to(torch.bfloat16)  # a root-only bfloat16 key
        with TrajectoryWriter(path, chunk_rows=8) as w:
            w.extend(rollout)
    return TrajectoryReader(path)


def expected_columns(ep: TensorDictBase) -> dict[str, np.ndarray]:
    flat = ep.flatten_keys(".")
    return {k: flat[k].float().numpy() if k == "h" else flat[k].numpy() for k in flat.keys()}


def gather(ds) -> dict[str, np.ndarray]:
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_read_transitions_gives_every_transition_of_every_shard(cluster, tmp_path) -> None:
    reader = make_store(tmp_path / "store")
    assert len(reader.shards) == 2
    assert reader.num_steps == 2 * 45 + 30
    ds = read_transitions(tmp_path / "store", block_rows=7)
    assert ds.count() == reader.num_steps  # from the plan: no read
    cols = gather(ds)
    order = np.lexsort((cols["step_index"], cols["episode_index"]))
    cols = {k: v[order] for k, v in cols.items()}
    at = 0
    for i, ep in enumerate(reader.episodes):
        rows = slice(at, at + len(ep))
        assert (cols["episode_index"][rows] == i).all()
        assert (cols["step_index"][rows] == np.arange(len(ep))).all()
        for name, value in expected_columns(ep).items():
            got = cols[name][rows]
            assert got.dtype == value.dtype, (i, name)
            assert np.array_equal(got, value), (i, name)
        at += len(ep)
    assert at == len(order)
    assert sorted(cols) == sorted(
        [*expected_columns(reader.episodes[0]), "episode_index", "step_index"]
    )


def test_read_transitions_reads_the_columns_asked_for(cluster, tmp_path) -> None:
    reader = make_store(tmp_path / "store")
    ds = read_transitions(tmp_path / "store", columns=["next.reward", "episode_index"])
    cols = gather(ds)
    assert sorted(cols) == ["episode_index", "next.reward"]
    total = sum(float(ep["next", "reward"].sum()) for ep in reader.episodes)
    assert cols["next.reward"].sum() == pytest.approx(total)


def test_read_episodes_gives_each_episode_as_a_row(cluster, tmp_path) -> None:
    reader = make_store(tmp_path / "store")
    rows = sorted(
        read_episodes(tmp_path / "store", block_rows=3).take_all(), key=lambda r: r["episode_index"]
    )
    assert [r["episode_index"] for r in rows] == list(range(reader.num_episodes))
    for i, (row, ep) in enumerate(zip(rows, reader.episodes, strict=True)):
        assert row["num_steps"] == len(ep)
        assert row["flags"] == reader.episode_info(i)["flags"]
        for name, value in expected_columns(ep).items():
            assert np.array_equal(np.asarray(row[name]), value), (i, name)


def test_read_transitions_streams_a_store_larger_than_its_blocks_in_bounded_memory(
    cluster, tmp_path
) -> None:
    path = tmp_path / "big"
    steps, width = 100_000, 384  # 300 MB of observations read out (the object store: 128 MiB)
    obs = torch.arange(steps + 1, dtype=torch.float32)[:, None].expand(steps + 1, width)
    done = torch.zeros(steps, 1, dtype=torch.bool)
    done[999::1000] = True
    with TrajectoryWriter(path) as w:
        for start in range(0, steps, 10_000):
            part = slice(start, start + 10_000)
            root = {"observation": obs[:-1][part]}
            nxt = {"observation": obs[1:][part], "done": done[part]}
            w.extend(TensorDict({**root, "next": nxt}, [10_000]))
    ds = read_transitions(path, block_rows=1024)
    out_bytes = steps * 2 * width * 4
    rss: list[dict[str, int]] = []
    total, first = 0, 0.0
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        # each transition's "next" observation is the next root's (values are the row numbers)
        assert (batch["next.observation"][:, 0] == batch["observation"][:, 0] + 1).all()
        first += float(batch["observation"][:, 0].astype(np.float64).sum())
        total += len(batch["observation"])
        rss.append(_rss())
    assert total == steps
    assert first == steps * (steps - 1) / 2
    # after Ray's iterator has started (its own set-up): the driver's heap stays flat, and the
    # object store's pages it maps are bounded by the store's size, not by what was read
    base = rss[10]
    anon = max(r["RssAnon"] for r in rss[10:]) - base["RssAnon"]
    shmem = max(r["RssShmem"] for r in rss[10:]) - base["RssShmem"]
    assert anon < 16 * 2**20, f"the driver's heap grew by {anon / 2**20:.0f} MiB"
    assert shmem <= OBJECT_STORE < out_bytes / 2


def _rss() -> dict[str, int]:
    """This process's resident anonymous memory and shared memory (Ray's object store)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssShmem")}


# --------------------------------------------------------------------- errors


def test_read_transitions_refuses_bad_columns_and_ambiguous_names(tmp_path) -> None:
    make_store(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"columns \['nope'\] are not in the store"):
        TrajectoryDatasource(tmp_path / "store", columns=["nope"])
    with pytest.raises(ConfigError, match="block_rows must be a positive int, got 0"):
        TrajectoryDatasource(tmp_path / "store", block_rows=0)
    dotted = tmp_path / "dotted"
    with TrajectoryWriter(dotted) as w:
        w.extend(TensorDict({"pos.x": torch.ones(3, 1), "next": {"r": torch.ones(3, 1)}}, [3]))
    with pytest.raises(ConfigError, match=r"key \('pos.x',\) holds the separator '.'"):
        TrajectoryDatasource(dotted)
    source = TrajectoryDatasource(dotted, separator="/", ids=False)
    (task,) = source.get_read_tasks(2)
    assert sorted(next(iter(task())).column_names) == ["next/r", "pos.x"]


def test_a_complex_key_is_refused_unless_left_out(tmp_path) -> None:
    path = tmp_path / "store"
    with TrajectoryWriter(path) as w:
        z = torch.zeros(3, 2, dtype=torch.complex64)
        w.extend(TensorDict({"z": z, "a": torch.ones(3, 1), "next": {"z": z}}, [3]))
    with pytest.raises(UnsupportedDataError, match=r"key \('z',\) is torch.complex64"):
        TrajectoryDatasource(path)
    source = TrajectoryDatasource(path, columns=["a"])
    (task,) = source.get_read_tasks(4)
    (block,) = list(task())
    assert block.column_names == ["a"]
    assert block.num_rows == 3


def test_a_store_without_transitions_reads_as_no_rows(tmp_path) -> None:
    TrajectoryWriter(tmp_path / "empty").close()  # a store, no committed shard
    (task,) = TrajectoryDatasource(tmp_path / "empty").get_read_tasks(4)
    (block,) = list(task())
    assert block.num_rows == 0
    assert block.column_names == ["episode_index", "step_index"]


def test_without_ray_the_readers_say_what_to_install(tmp_path, monkeypatch) -> None:
    make_store(tmp_path / "store")
    monkeypatch.setitem(sys.modules, "ray.data", None)  # import ray.data now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'trlrec\[ray\]'"):
        read_transitions(tmp_path / "store")


def test_import_trlrec_does_not_import_ray() -> None:
    # (torchrl.envs imports Ray where it is installed: the recorders' import does, not trlrec's)
    code = (
        "import sys, trlrec; trlrec.TrajectoryReader; trlrec.TrajectoryWriter; "
        "print('ray' in sys.modules); import trlrec.ray; print('ray.data' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # commit_writers costs a worker no Ray Data
