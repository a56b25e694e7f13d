"""TensorDictRecorder: as a transform, a rollout callback and from collector batches."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import Compose, GymEnv, ParallelEnv, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.utils import check_env_specs

from trlrec import TensorDictRecorder, TrajectoryReader
from trlrec.errors import ClosedError, ConfigError, SchemaError, UnsupportedDataError
from trlrec.loggers import MemoryLogger

# ----------------------------------------------------------------------------- helpers


def assert_same(stored: TensorDictBase, expected: TensorDictBase) -> None:
    """Same batch size, keys, shapes, dtypes and bits."""
    assert stored.batch_size == expected.batch_size
    keys = set(expected.keys(True, True))
    assert set(stored.keys(True, True)) == keys
    for key in keys:
        a, b = stored.get(key), expected.get(key)
        assert a.dtype == b.dtype, key
        assert a.shape == b.shape, key
        assert torch.equal(torch.as_tensor(a), b), key


def split_episodes(rows: TensorDictBase) -> list[TensorDictBase]:
    """The episodes of a ``[T]`` rollout, cut after each ``("next", "done")``."""
    done = rows.get(("next", "done")).reshape(rows.shape[0], -1).any(-1).tolist()
    out, start = [], 0
    for t, d in enumerate(done):
        if d:
            out.append(rows[start : t + 1])
            start = t + 1
    if start < len(done):
        out.append(rows[start:])
    return out


def stored_by_stream(reader: TrajectoryReader) -> dict[int, list[TensorDictBase]]:
    """The reader's episodes per stream, in time order."""
    found: dict[int, list[tuple[int, TensorDictBase]]] = {}
    for i in range(reader.num_episodes):
        info = reader.episode_info(i)
        found.setdefault(info["stream"], []).append((info["first_transition"], reader.episodes[i]))
    return {b: [ep for _, ep in sorted(eps, key=lambda x: x[0])] for b, eps in found.items()}


def assert_store_equals(path, rollout: TensorDictBase) -> None:
    """The store at ``path`` holds the rollout (``[T]`` or ``[B, T]``), episode by episode."""
    reader = TrajectoryReader(path)
    streams = rollout.reshape(-1, rollout.shape[-1])
    assert reader.num_steps == streams.numel()
    stored = stored_by_stream(reader)
    assert sorted(stored) == list(range(streams.shape[0]))
    for b in range(streams.shape[0]):
        expected = split_episodes(streams[b])
        assert len(stored[b]) == len(expected)
        for ep, exp in zip(stored[b], expected, strict=True):
            assert_same(ep, exp)


def row(t: int, obs_shape=(4,), obs_dtype=torch.float32, done=False, **extra) -> TensorDict:
    """A hand-made rollout row whose next observation is ``t + 1``."""
    td = TensorDict(
        {
            "observation": torch.full(obs_shape, float(t), dtype=obs_dtype),
            "action": torch.tensor([t % 3]),
            "done": torch.tensor([False]),
            "next": {
                "observation": torch.full(obs_shape, float(t + 1), dtype=obs_dtype),
                "reward": torch.tensor([1.0]),
                "done": torch.tensor([done]),
            },
        },
        batch_size=[],
    )
    for key, value in extra.items():
        td.set(key, value)
    return td


@pytest.fixture
def env_factory(stub_env_cls):
    def make(lengths=(3,), batch_size=(), recorder=None, **kwargs):
        env = stub_env_cls(episode_lengths=lengths, batch_size=batch_size, **kwargs)
        return env if recorder is None else TransformedEnv(env, recorder)

    return make


# ----------------------------------------------------------------------------- 1. transform


def test_transform_records_every_row_bit_exact(tmp_path, env_factory):
    torch.manual_seed(0)
    with TensorDictRecorder(tmp_path / "run", metadata={"agent": "random"}) as rec:
        env = env_factory((3,), recorder=rec)
        rollout = env.rollout(10, break_when_any_done=False)
    reader = TrajectoryReader(tmp_path / "run")
    assert reader.metadata == {"agent": "random"}
    assert [reader.episode_info(i)["flags"] for i in range(4)] == [1, 1, 1, 2]
    assert_store_equals(tmp_path / "run", rollout)


def test_transform_does_not_change_data_or_specs(tmp_path, env_factory):
    plain = env_factory((4,))
    with TensorDictRecorder(tmp_path / "check") as checked:
        check_env_specs(env_factory((4,), recorder=checked))
    rec = TensorDictRecorder(tmp_path / "run")
    recorded = env_factory((4,), recorder=rec)
    assert recorded.observation_spec == TransformedEnv(env_factory((4,))).observation_spec
    assert recorded.full_action_spec == plain.full_action_spec
    assert recorded.full_done_spec == plain.full_done_spec
    torch.manual_seed(1)
    a = plain.rollout(9, break_when_any_done=False)
    torch.manual_seed(1)
    b = recorded.rollout(9, break_when_any_done=False)
    assert_same(b, a)
    rec.close()


def test_append_transform_and_compose(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "a")
    env = env_factory((2,)).append_transform(rec)
    rollout = env.rollout(5, break_when_any_done=False)
    rec.close()
    assert_store_equals(tmp_path / "a", rollout)

    rec = TensorDictRecorder(tmp_path / "b")
    env = TransformedEnv(env_factory((3,)), Compose(StepCounter(), rec))
    rollout = env.rollout(7, break_when_any_done=False)
    env.transform.dump()  # Compose.dump reaches the recorder
    assert "step_count" in TrajectoryReader(tmp_path / "b").episodes[0].keys()
    rec.close()
    assert_store_equals(tmp_path / "b", rollout)


def test_step_and_maybe_reset_loop_and_reset_cuts_episode(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "run")
    env = env_factory((4,), recorder=rec)
    td = env.reset()
    rows = []
    for _ in range(6):
        td = env.rand_action(td)
        step, td = env.step_and_maybe_reset(td)
        rows.append(step.clone())
    env.reset()  # a reset without done cuts the open episode
    td = env.rand_action(env.reset())
    rows.append(env.step(td).clone())
    rec.close()
    reader = TrajectoryReader(tmp_path / "run")
    flags = [reader.episode_info(i)["flags"] for i in range(reader.num_episodes)]
    assert flags == [1, 2, 2]
    assert_same(reader.episodes[1], torch.stack(rows[4:6]))
    assert_same(reader.episodes[2], torch.stack(rows[6:]))


def test_gym_cartpole_row_by_row(tmp_path):
    torch.manual_seed(0)
    rec = TensorDictRecorder(tmp_path / "cartpole")
    env = GymEnv("CartPole-v1").append_transform(rec)
    env.set_seed(0)
    rollout = env.rollout(120, break_when_any_done=False)
    rec.dump()
    reader = TrajectoryReader(tmp_path / "cartpole")
    assert reader.num_steps == 120
    stored = torch.cat([reader.episodes[i].to_tensordict() for i in range(reader.num_episodes)])
    for t in range(120):  # row by row, every key and dtype
        assert_same(stored[t], rollout[t])
    assert_store_equals(tmp_path / "cartpole", rollout)
    rec.close()


@pytest.mark.parametrize("kind", ["serial", "parallel"])
def test_batched_envs_one_stream_per_sub_env(tmp_path, stub_env_cls, kind):
    fns = [partial(stub_env_cls, episode_lengths=(2,)), partial(stub_env_cls, episode_lengths=(3,))]
    base = SerialEnv(2, fns) if kind == "serial" else ParallelEnv(2, fns, mp_start_method="fork")
    rec = TensorDictRecorder(tmp_path / kind)
    env = TransformedEnv(base, rec)
    torch.manual_seed(0)
    rollout = env.rollout(7, break_when_any_done=False)
    rec.close()
    env.close()
    assert rollout.batch_size == (2, 7)
    assert_store_equals(tmp_path / kind, rollout)
    lengths = [len(eps) for eps in stored_by_stream(TrajectoryReader(tmp_path / kind)).values()]
    assert lengths == [4, 3]


def test_batch_size_env_partial_resets(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "run")
    env = env_factory((2, 3, 5), batch_size=(3,), recorder=rec)
    torch.manual_seed(0)
    rollout = env.rollout(8, break_when_any_done=False)
    rec.close()
    assert_store_equals(tmp_path / "run", rollout)


# ----------------------------------------------------------------------------- 2. callback


def test_callback_with_full_rows(tmp_path, env_factory):
    env = env_factory((3,))
    with TensorDictRecorder(tmp_path / "cb") as rec:
        torch.manual_seed(0)
        rollout = env.rollout(8, callback=rec, break_when_any_done=False)
    # TorchRL does not call the callback for the last step
    assert_store_equals(tmp_path / "cb", rollout[:7])


def test_callback_with_step_mdp_roots_records_observations(tmp_path, env_factory):
    env = env_factory((20,))
    warns = pytest.warns(UserWarning, match="no reward.*break_when_any_done=False")
    with TensorDictRecorder(tmp_path / "cb") as rec, warns:
        rollout = env.rollout(6, callback=rec)  # break_when_any_done=True: no "next"
    reader = TrajectoryReader(tmp_path / "cb")
    assert reader.num_steps == 4
    ep = reader.episodes[0]
    assert "reward" not in ep["next"].keys()
    assert torch.equal(ep["action"], rollout["action"][1:5])
    assert torch.equal(ep["observation"], rollout["next", "observation"][:4])
    assert torch.equal(ep["next", "observation"], rollout["next", "observation"][1:5])


def test_step_mdp_callback_warns_once_per_recorder(tmp_path, env_factory):
    env = env_factory((20,))
    first, second = TensorDictRecorder(tmp_path / "a"), TensorDictRecorder(tmp_path / "b")
    with pytest.warns(UserWarning, match="missing"):
        env.rollout(3, callback=first)
    with pytest.warns(UserWarning, match="missing"):
        env.rollout(3, callback=second)  # another recorder: its own warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.rollout(3, callback=first)  # the same recorder: no second warning
    first.close()
    second.close()


def test_callback_with_full_rows_does_not_warn(tmp_path, env_factory):
    env = env_factory((3,))
    with TensorDictRecorder(tmp_path / "cb") as rec, warnings.catch_warnings():
        warnings.simplefilter("error")
        env.rollout(4, callback=rec, break_when_any_done=False)


def test_forward_records_rows_and_batches(tmp_path):
    rec = TensorDictRecorder(tmp_path / "fw")
    one = row(0)
    assert rec(one) is one
    batch = torch.stack([row(1), row(2, done=True)])
    assert rec(batch) is batch
    rec.close()
    reader = TrajectoryReader(tmp_path / "fw")
    assert reader.num_steps == 3
    assert reader.num_episodes == 1
    assert_same(reader.episodes[0], torch.stack([one, *batch.unbind(0)]))


# ----------------------------------------------------------------------------- 3. collectors


def test_collector_batches_stitched(tmp_path, env_factory):
    from torchrl.collectors import Collector

    collector = Collector(env_factory((5,)), None, frames_per_batch=4, total_frames=16)
    rec = TensorDictRecorder(tmp_path / "col")
    batches = []
    for batch in collector:
        assert batch.batch_size == (4,)
        rec.extend(batch)
        batches.append(batch.clone())
    collector.shutdown()
    rec.close()
    rows = torch.cat(batches)
    assert TrajectoryReader(tmp_path / "col").num_episodes == 4  # 5 + 5 + 5 + 1
    assert_store_equals(tmp_path / "col", rows)


def test_batched_collector_batches_stitched(tmp_path, stub_env_cls):
    from torchrl.collectors import Collector

    fns = [partial(stub_env_cls, episode_lengths=(3,)), partial(stub_env_cls, episode_lengths=(4,))]
    collector = Collector(SerialEnv(2, fns), None, frames_per_batch=6, total_frames=24)
    rec = TensorDictRecorder(tmp_path / "col")
    batches = []
    for batch in collector:
        assert batch.batch_size == (2, 3)
        rec.extend(batch)
        batches.append(batch.clone())
    collector.shutdown()
    rec.close()
    assert_store_equals(tmp_path / "col", torch.cat(batches, dim=1))


def test_multisync_collector(tmp_path, stub_env_cls, monkeypatch):
    import torchrl._utils
    import torchrl.collectors._multi_base
    from torchrl.collectors import MultiSyncCollector

    # fork workers (spawn re-imports torch in each: ~20 s here), without changing the
    # process-wide start method for the other tests
    monkeypatch.setattr(torchrl._utils, "_get_default_mp_start_method", lambda: "fork")
    monkeypatch.setattr(
        torchrl.collectors._multi_base, "_set_mp_start_method_if_unset", lambda method: None
    )

    fns = [partial(stub_env_cls, episode_lengths=(3,)), partial(stub_env_cls, episode_lengths=(4,))]
    collector = MultiSyncCollector(
        fns, None, frames_per_batch=8, total_frames=24, cat_results="stack"
    )
    rec = TensorDictRecorder(tmp_path / "multi")
    batches = []
    for batch in collector:
        assert batch.batch_size == (2, 4)
        rec.extend(batch)
        batches.append(batch.clone())
    collector.shutdown()
    rec.close()
    rows = torch.cat(batches, dim=1)
    assert_store_equals(tmp_path / "multi", rows)
    reader = TrajectoryReader(tmp_path / "multi")
    done = [reader.episode_info(i)["num_steps"] for i in range(reader.num_episodes)]
    assert sorted(done) == sorted([3, 3, 3, 3, 4, 4, 4])


# ----------------------------------------------------------------------------- options


def test_in_keys_keep_selected_and_done_flags(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "k", in_keys=["observation", ("next", "reward")])
    env = env_factory((3,), recorder=rec)
    rollout = env.rollout(5, break_when_any_done=False)
    rec.close()
    expected = rollout.select(
        "observation", "done", "terminated", "truncated", ("next", "observation"),
        ("next", "reward"), ("next", "done"), ("next", "terminated"), ("next", "truncated"),
    )  # fmt: skip
    assert_store_equals(tmp_path / "k", expected)


def test_in_keys_unknown_key(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "k", in_keys=["pixels"])
    env = env_factory((3,), recorder=rec)
    with pytest.raises(ConfigError, match="'pixels'.*does not have"):
        env.rollout(2)
    rec.close()


def test_skip_keeps_every_kth_transition_as_one_step_episodes(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "s", skip=2)
    env = env_factory((3,), recorder=rec)
    rollout = env.rollout(9, break_when_any_done=False)
    rec.close()
    reader = TrajectoryReader(tmp_path / "s")
    assert reader.num_steps == 4
    assert reader.num_episodes == 4
    for i, t in enumerate([1, 3, 5, 7]):
        assert_same(reader.episodes[i], rollout[t : t + 1])
    assert [reader.episode_info(i)["flags"] for i in range(4)] == [2, 2, 1, 2]

    rec = TensorDictRecorder(tmp_path / "e", skip=3)
    rows = torch.stack([row(t) for t in range(7)])
    rec.extend(rows[:4])
    rec.extend(rows[4:])
    rec.close()
    reader = TrajectoryReader(tmp_path / "e")
    assert [float(ep["observation"][0, 0]) for ep in reader.episodes] == [2.0, 5.0]


def test_skip_changed_while_recording_takes_effect(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "s")
    env = env_factory((100,), recorder=rec)
    first = env.rollout(4, break_when_any_done=False)
    rec.skip = 2  # after steps went through the recorder's direct lane
    second = env.rollout(4, break_when_any_done=False)
    rec.close()
    reader = TrajectoryReader(tmp_path / "s")
    assert [len(e) for e in reader.episodes] == [4, 1, 1]
    assert_same(reader.episodes[0], first)
    assert_same(reader.episodes[1], second[1:2])
    assert_same(reader.episodes[2], second[3:4])


@pytest.mark.parametrize("native", ["1", "0"])
def test_settings_changed_mid_recording_apply_at_the_next_step(
    tmp_path, env_factory, monkeypatch, native
):
    monkeypatch.setenv("TRLREC_NATIVE", native)
    rec = TensorDictRecorder(tmp_path / "s")
    env = env_factory((3,), recorder=rec)
    first = env.rollout(7, break_when_any_done=False)  # episode ends, resets, a commit
    assert "_step" not in rec.__dict__  # no per-instance shortcut stands in for _step
    rec.episode_fn = lambda td: {"tagged": True}  # applies from the next step on
    second = env.rollout(2, break_when_any_done=False)
    rec.episode_fn = None
    env.rollout(1)
    extra = TensorDict(observation=torch.zeros(4), surprise=torch.ones(1))
    with pytest.raises(SchemaError, match="surprise"):  # an extra key, named at once
        rec._step(first[0].exclude("next"), first[0]["next"].update(extra.select("surprise")))
    rec.close()
    reader = TrajectoryReader(tmp_path / "s")
    stored = [reader.episodes[i] for i in range(reader.num_episodes)]
    assert [len(e) for e in stored] == [3, 3, 1, 2, 1]
    assert_same(torch.cat(stored[:3]), first)
    assert_same(stored[3], second)
    assert reader.episode_metadata(3) == {"tagged": True}
    assert reader.episode_metadata(4) == {}  # no metadata: an empty dict


def test_metadata_step_fn_episode_fn(tmp_path, env_factory):
    def step_fn(td):
        return {"t": td["next", "observation"][..., 0], "one": 1, "flag": True}

    def episode_fn(td):
        return {"last_obs": float(td["next", "observation"][0])} if td["next", "done"] else None

    rec = TensorDictRecorder(
        tmp_path / "m", metadata={"seed": 3}, step_fn=step_fn, episode_fn=episode_fn
    )
    env = env_factory((3,), recorder=rec)
    rollout = env.rollout(7, break_when_any_done=False)
    rec.close()
    reader = TrajectoryReader(tmp_path / "m")
    assert reader.metadata == {"seed": 3}
    ep = reader.episodes[0]
    assert torch.equal(ep["step_metadata", "t"], rollout["next", "observation"][:3, 0])
    assert ep["step_metadata", "one"].dtype == torch.int64
    assert ep["step_metadata", "flag"].all()
    last = rollout["next", "observation"][:, 0]
    assert reader.episode_metadata(0) == {"last_obs": float(last[2])}
    assert reader.episode_metadata(1) == {"last_obs": float(last[5])}
    assert reader.episode_metadata(2) == {}


def test_step_fn_and_episode_fn_in_extend_batched(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(2, 3), batch_size=(2,))
    rollout = env.rollout(6, break_when_any_done=False)
    rec = TensorDictRecorder(
        tmp_path / "m",
        step_fn=lambda td: {"r2": td["next", "reward"] * 2},
        episode_fn=lambda td: [{"env": b, "obs": float(td["observation"][b, 0])} for b in range(2)],
    )
    rec.extend(rollout[:, :4])
    rec.extend(rollout[:, 4:])
    rec.close()
    reader = TrajectoryReader(tmp_path / "m")
    stored = stored_by_stream(reader)
    assert torch.equal(stored[0][0]["step_metadata", "r2"], rollout[0, :2]["next", "reward"] * 2)
    for i in range(reader.num_episodes):
        info, meta = reader.episode_info(i), reader.episode_metadata(i)
        ep = reader.episodes[i]
        assert meta == {"env": info["stream"], "obs": float(ep["observation"][-1, 0])}


def test_dump_logs_episode_statistics(tmp_path, env_factory):
    logger = MemoryLogger("exp", log_dir=tmp_path)
    rec = TensorDictRecorder(logger=logger, tag="eval/traj")
    assert rec.path == tmp_path / "exp" / "eval%2Ftraj"
    env = env_factory((3,), recorder=rec)
    rollout = env.rollout(7, break_when_any_done=False)
    rec.dump()
    returns = rollout["next", "reward"].reshape(-1)
    expected = (float(returns[:3].sum()) + float(returns[3:6].sum())) / 2
    assert logger.scalars["eval/traj/episodes"] == [(7, 2.0)]
    assert logger.scalars["eval/traj/episode_length"] == [(7, 3.0)]
    assert logger.scalars["eval/traj/episode_return"][0][1] == pytest.approx(expected)
    # each finished episode at the frame it ended, as well as the mean
    assert logger.scalars["eval/traj/length"] == [(3, 3.0), (6, 3.0)]
    each = logger.scalars["eval/traj/return"]
    assert [step for step, _ in each] == [3, 6]
    assert [value for _, value in each] == pytest.approx(
        [float(returns[:3].sum()), float(returns[3:6].sum())]
    )
    assert logger.trajectories["eval/traj"][0][1] == rec.path.resolve()
    env.rollout(3, break_when_any_done=False)  # finishes the open episode (7 then 3 more)
    rec.dump(step=100)
    assert logger.scalars["eval/traj/episodes"][-1] == (100, 1.0)
    # the rollout's reset cut the 1-step episode; the next ended at transition 10. An
    # explicit step moves the means only
    assert logger.scalars["eval/traj/length"][-1] == (10, 3.0)
    rec.close()
    assert TrajectoryReader(rec.path).num_steps == 10


def test_dump_logs_each_episode_of_a_batched_env_at_its_frame(tmp_path, stub_env_cls):
    logger = MemoryLogger("exp", log_dir=tmp_path)
    rec = TensorDictRecorder(logger=logger, tag="t")
    env = stub_env_cls(episode_lengths=(2, 3), batch_size=(2,)).append_transform(rec)
    rollout = env.rollout(6, break_when_any_done=False)
    rec.dump()
    # sub-env 0 ends episodes at its steps 2, 4, 6 and sub-env 1 at 3, 6: frames are 2x that
    assert sorted(logger.scalars["t/length"]) == [
        (4, 2.0),
        (6, 3.0),
        (8, 2.0),
        (12, 2.0),
        (12, 3.0),
    ]
    rewards = rollout["next", "reward"][..., 0].double()
    want = {(4, float(rewards[0, :2].sum())), (6, float(rewards[1, :3].sum()))}
    got = {(step, value) for step, value in logger.scalars["t/return"] if step in (4, 6)}
    assert got == want
    assert logger.scalars["t/episodes"] == [(12, 5.0)]  # the dump at 6 steps x 2 sub-envs
    rec.close()


def test_torchrl_logger_without_log_trajectory(tmp_path, env_factory):
    from torchrl.record.loggers import CSVLogger as TorchRLCSVLogger

    logger = TorchRLCSVLogger("exp", log_dir=str(tmp_path))
    rec = TensorDictRecorder(logger=logger)
    assert rec.path == tmp_path / "exp" / "trajectories"
    env = env_factory((2,), recorder=rec)
    env.rollout(4, break_when_any_done=False)
    rec.dump()
    rec.close()
    assert (tmp_path / "exp" / "scalars" / "trajectories" / "episode_length.csv").exists()
    assert TrajectoryReader(rec.path).num_steps == 4


# ----------------------------------------------------------------------------- lifecycle


def test_clone_and_pickle_do_not_share_the_writer(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "run")
    env = env_factory((3,), recorder=rec)
    env.rollout(2, break_when_any_done=False)
    twin = rec.clone()
    assert twin.writer is None
    assert twin.parent is None
    twin(row(0))
    assert twin.writer.shard_path != rec.writer.shard_path
    copied = pickle.loads(pickle.dumps(rec))
    assert copied.writer is None
    assert copy.deepcopy(rec).writer is None
    twin.close()
    rec.close()
    assert TrajectoryReader(tmp_path / "run").num_steps == 3


def test_a_worker_forked_after_recording_writes_a_shard_of_its_own(tmp_path):
    # A recorder that recorded in the parent and then reaches a forked worker (a
    # multiprocessing "fork" Process, as collectors and ParallelEnv start them) does what
    # a pickled one does: the worker writes a new shard, committed at its end without a
    # close(), and the parent's shard goes on with nothing of the worker's in it.
    root = Path(__file__).resolve().parents[2]
    script = f"""
import multiprocessing, os, torch
from tests.conftest import StubEnv
from trlrec import TensorDictRecorder
out = {str(tmp_path)!r}
rec = TensorDictRecorder(out + "/run", commit_every_steps=3)
env = StubEnv(episode_lengths=(5,)).append_transform(rec)
rollouts = [env.rollout(10, break_when_any_done=False)]

def work():
    torch.save(env.rollout(5, break_when_any_done=False), out + "/child.pt")

p = multiprocessing.get_context("fork").Process(target=work)
p.start()
p.join()
rollouts.append(env.rollout(10, break_when_any_done=False))
rec.close()
torch.save(torch.cat(rollouts), out + "/parent.pt")
print("pids", os.getpid(), p.pid, p.exitcode)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert done.returncode == 0, done.stderr
    parent, child, code = (int(v) for v in done.stdout.split()[-3:])
    assert code == 0
    reader = TrajectoryReader(tmp_path / "run")
    assert len(reader.shards) == 2
    by_pid: dict[int, list[TensorDictBase]] = {}
    for i in range(reader.num_episodes):
        by_pid.setdefault(reader.shard_of(i)[0].written_by["pid"], []).append(reader.episodes[i])
    assert sorted(by_pid) == sorted([parent, child])
    for pid, name in ((parent, "parent.pt"), (child, "child.pt")):
        want = split_episodes(torch.load(tmp_path / name, weights_only=False))
        assert len(by_pid[pid]) == len(want)
        for got, rows in zip(by_pid[pid], want, strict=True):
            assert_same(got, rows)


def test_close_commits_and_refuses_more(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "run", commit_every_steps=1000, commit_every_seconds=1e6)
    env = env_factory((50,), recorder=rec)
    env.rollout(5, break_when_any_done=False)
    assert TrajectoryReader(tmp_path / "run").num_steps == 0  # staged, not committed yet
    rec.close()
    rec.close()
    assert TrajectoryReader(tmp_path / "run").num_steps == 5
    with pytest.raises(ClosedError, match="after close"):
        env.rollout(2)
    rec.dump()  # a no-op after close (everything was committed), as TorchRL's
    assert TrajectoryReader(tmp_path / "run").num_steps == 5


def test_torchrl_signature(tmp_path, env_factory):
    # TorchRL's TensorDictRecorder(out_file_base, skip_reset=True, skip=4, in_keys=None)
    rec = TensorDictRecorder(out_file_base=str(tmp_path / "trl"), skip_reset=True, skip=4)
    env = env_factory((50,), recorder=rec)
    rollout = env.rollout(8, break_when_any_done=False)
    env.transform.dump()
    env.close()
    reader = TrajectoryReader(tmp_path / "trl")
    assert rec.path == tmp_path / "trl"
    assert reader.num_steps == 2  # every 4th transition, as TorchRL's skip
    assert_same(reader.episodes[0], rollout[3:4])
    assert_same(reader.episodes[1], rollout[7:8])
    positional = TensorDictRecorder(str(tmp_path / "pos"), False, 2, ["observation"])
    assert (positional.skip_reset, positional.skip, positional.path) == (
        False,
        2,
        tmp_path / "pos",
    )
    assert positional.in_keys == ["observation"]


def test_async_copy_path_keeps_order_across_resets(tmp_path, env_factory):
    rec = TensorDictRecorder(tmp_path / "run")
    rec._async = True  # the accelerator path, exercised with CPU tensors
    env = env_factory((3,), recorder=rec)
    rollout = env.rollout(8, break_when_any_done=False)
    env.reset()
    more = env.rollout(2, break_when_any_done=False, auto_reset=False, tensordict=env.reset())
    rec.close()
    reader = TrajectoryReader(tmp_path / "run")
    assert reader.num_steps == 10
    assert_same(reader.episodes[-1], more)
    assert_same(reader.episodes[0], rollout[:3])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip": 0}, "skip must be an int >= 1"),
        ({"step_fn": 3}, "step_fn must be callable"),
        ({"chunk_size": 3}, r"unknown option\(s\) \['chunk_size'\]"),
        ({"in_keys": []}, "in_keys is empty"),
        ({"in_keys": [3]}, "not a str or tuple"),
        ({"skip_reset": 4}, "skip_reset must be a bool, got 4"),
        ({"out_file_base": "y"}, "path=.* and out_file_base='y', which mean the same"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TensorDictRecorder(tmp_path / "x", **kwargs)


def test_no_path_needs_a_logger_with_a_directory():
    with pytest.raises(ConfigError, match="needs a path"):
        TensorDictRecorder()
    with pytest.raises(ConfigError, match="no experiment directory"):
        TensorDictRecorder(logger=MemoryLogger("exp"))
    with pytest.raises(UnsupportedDataError, match="metadata"):
        TensorDictRecorder("x", metadata={"f": object()})


def committed_then(tmp_path, bad: TensorDict, error, match):
    """Record two good rows and commit, then ``bad``: the error is raised, the rows stay."""
    rec = TensorDictRecorder(tmp_path / "run")
    rec(row(0))
    rec(row(1))
    rec.dump()
    with pytest.raises(error, match=match):
        rec(bad)
    reader = TrajectoryReader(tmp_path / "run")
    assert reader.num_steps == 2
    assert_same(reader.episodes[0], torch.stack([row(0), row(1)]))
    rec(row(2, done=True))  # the recorder still works after the refusal
    rec.close()
    assert TrajectoryReader(tmp_path / "run").num_steps == 3


def test_shape_change_mid_recording(tmp_path):
    committed_then(tmp_path, row(2, obs_shape=(5,)), SchemaError, r"'observation'.*\(4,\).*\(5,\)")


def test_dtype_change_mid_recording(tmp_path):
    committed_then(tmp_path, row(2, obs_dtype=torch.float64), SchemaError, "float32.*float64")


def test_key_added_mid_recording(tmp_path):
    committed_then(tmp_path, row(2, extra=torch.zeros(1)), SchemaError, "'extra'")


def test_key_missing_mid_recording(tmp_path):
    committed_then(tmp_path, row(2).exclude("action"), SchemaError, "'action' is missing")


def test_non_tensor_value_mid_recording(tmp_path):
    bad = row(2)
    bad.set_non_tensor("action", "left")
    committed_then(tmp_path, bad, (SchemaError, UnsupportedDataError), "'action'")


def test_non_tensor_value_at_start(tmp_path):
    rec = TensorDictRecorder(tmp_path / "run")
    bad = row(0)
    bad.set_non_tensor("info", "hello")
    with pytest.raises(UnsupportedDataError, match="'info'.*non-tensor"):
        rec(bad)
    rec(row(0))  # without it, recording starts normally
    rec.close()
    assert TrajectoryReader(tmp_path / "run").num_steps == 1


@pytest.mark.parametrize(
    ("step_fn", "error", "match"),
    [
        (lambda td: ["x"], UnsupportedDataError, "step_fn must return a dict"),
        (lambda td: {"name": "text"}, UnsupportedDataError, r"'step_metadata', 'name'.*str"),
    ],
)
def test_bad_step_fn_values(tmp_path, step_fn, error, match):
    rec = TensorDictRecorder(tmp_path / "run", step_fn=step_fn)
    with pytest.raises(error, match=match):
        rec(row(0))
    rec.close()


def test_step_fn_value_not_of_the_batch_size(tmp_path):
    rec = TensorDictRecorder(tmp_path / "run", step_fn=lambda td: {"v": torch.zeros(3, 2)})
    with pytest.raises(SchemaError, match=r"'v'.*\(3, 2\).*batch size \(2,\)"):
        rec.extend(torch.stack([row(0), row(1)]))
    rec.close()


def test_step_fn_value_changing_shape(tmp_path):
    calls = iter([torch.zeros(2), torch.zeros(2), torch.zeros(3)])
    rec = TensorDictRecorder(tmp_path / "run", step_fn=lambda td: {"v": next(calls)})
    rec(row(0))
    rec(row(1))
    rec.dump()
    with pytest.raises(SchemaError, match=r"'step_metadata', 'v'.*\(2,\).*\(3,\)"):
        rec(row(2))
    rec.close()
    assert TrajectoryReader(tmp_path / "run").num_steps == 2


def test_bad_episode_fn(tmp_path):
    rec = TensorDictRecorder(tmp_path / "run", episode_fn=lambda td: "ep")
    with pytest.raises(UnsupportedDataError, match="episode_fn must return a dict"):
        rec(row(0))
    rec.close()
    rec = TensorDictRecorder(tmp_path / "run2", episode_fn=lambda td: {"x": object()})
    with pytest.raises(UnsupportedDataError, match="episode metadata"):
        rec(row(0))
    rec.close()


def test_extend_refuses_non_batches(tmp_path):
    rec = TensorDictRecorder(tmp_path / "run")
    with pytest.raises(SchemaError, match=r"\[T\] or \[B, T\]"):
        rec.extend(row(0))
    with pytest.raises(SchemaError, match="no 'next'"):
        rec.extend(torch.stack([row(0), row(1)]).exclude("next"))
    rec.close()
