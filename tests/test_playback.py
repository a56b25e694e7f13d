"""PlaybackEnv: replays a store; round trip record -> play back -> record gives the same store."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded, OneHot
from torchrl.envs import GymEnv
from torchrl.envs.utils import RandomPolicy, check_env_specs
from torchrl.modules import EGreedyModule, QValueModule

from trlrec import PlaybackEnv, TrajectoryReader, TrajectoryWriter
from trlrec.errors import ConfigError, PlaybackError, StoreError


def _record(path, env, steps, **kw):
    td = env.rollout(steps, break_when_any_done=False)
    with TrajectoryWriter(path, **kw) as w:
        w.extend(td)
    return td


def _same_store(a, b):
    ra, rb = TrajectoryReader(a), TrajectoryReader(b)
    assert (ra.num_steps, ra.num_episodes) == (rb.num_steps, rb.num_episodes)
    for i in range(ra.num_episodes):
        ea, eb = ra.episodes[i], rb.episodes[i]
        keys = sorted(ea.keys(True, True), key=str)
        assert keys == sorted(eb.keys(True, True), key=str)
        for k in keys:
            x, y = ea.get(k), eb.get(k)
            assert x.dtype == y.dtype
            assert x.shape == y.shape
            assert torch.equal(x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8)), (i, k)
        fa, fb = ra.episode_info(i), rb.episode_info(i)
        assert (fa["num_steps"], fa["flags"]) == (fb["num_steps"], fb["flags"])


@pytest.mark.parametrize("steps", [23, 20])  # ends on a cut episode / on a done one
def test_round_trip_is_bit_exact(tmp_path, stub_env_cls, steps):
    env = stub_env_cls(episode_lengths=(5,), pixels=(6, 8, 3))
    original = _record(tmp_path / "a", env, steps, chunk_rows=16)
    pb = PlaybackEnv(tmp_path / "a", check_actions=True)
    replay = pb.rollout(steps, policy=pb.recorded_policy, break_when_any_done=False)
    assert (replay == original).all()
    with TrajectoryWriter(tmp_path / "b", chunk_rows=16) as w:
        w.extend(replay)
    _same_store(tmp_path / "a", tmp_path / "b")


def test_round_trip_through_tensordict_recorder(tmp_path, stub_env_cls):
    mod = pytest.importorskip("trlrec.transforms.tensordict_recorder")
    env = stub_env_cls(episode_lengths=(4,))
    _record(tmp_path / "a", env, 14)
    pb = PlaybackEnv(tmp_path / "a", check_actions=True)
    rec = mod.TensorDictRecorder(tmp_path / "b")
    env2 = pb.append_transform(rec)
    env2.rollout(14, policy=pb.recorded_policy, break_when_any_done=False)
    rec.close()
    _same_store(tmp_path / "a", tmp_path / "b")


def test_batched_recording_plays_each_stream_episode(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(3, 4), batch_size=(2,))
    _record(tmp_path / "a", env, 8)
    reader = TrajectoryReader(tmp_path / "a")
    pb = PlaybackEnv(reader)
    for i in range(reader.num_episodes):
        ep = reader.episodes[i]
        td = pb.reset()
        assert pb.episode_index == i
        assert torch.equal(td["observation"], ep[0]["observation"])
        for t in range(ep.shape[0]):
            out = pb.step(td.update(pb.recorded_action()))
            assert torch.equal(out["next", "observation"], ep[t]["next", "observation"])
            assert torch.equal(out["next", "reward"], ep[t]["next", "reward"])


def test_specs_come_from_the_schema(tmp_path, stub_env_cls):
    _record(tmp_path / "a", stub_env_cls(episode_lengths=(5,), pixels=(6, 8, 3)), 12)
    pb = PlaybackEnv(tmp_path / "a", loop=True)
    obs = pb.observation_spec
    assert obs["observation"].shape == (4,)
    assert obs["observation"].dtype == torch.float32
    assert obs["pixels"].shape == (6, 8, 3)
    assert obs["pixels"].dtype == torch.uint8
    assert pb.action_spec.shape == (1,)
    assert pb.action_spec.dtype == torch.int64
    assert pb.reward_spec.shape == (1,)
    assert pb.reward_spec.dtype == torch.float32
    assert set(pb.done_spec.keys()) == {"done", "terminated", "truncated"}
    check_env_specs(pb)


def test_check_actions_raises_on_a_different_action(tmp_path, stub_env_cls):
    _record(tmp_path / "a", stub_env_cls(episode_lengths=(5,)), 5)
    pb = PlaybackEnv(tmp_path / "a", check_actions=True)
    td = pb.reset().update(pb.recorded_action())
    td["action"] = td["action"] + 1
    with pytest.raises(PlaybackError, match=r"episode 0, step 0: 'action' is"):
        pb.step(td)
    del td["action"]
    with pytest.raises(PlaybackError, match="got no 'action'"):
        pb.step(td)


def test_without_check_any_action_gets_the_recorded_outcome(tmp_path, stub_env_cls):
    original = _record(tmp_path / "a", stub_env_cls(episode_lengths=(5,)), 5)
    pb = PlaybackEnv(tmp_path / "a")
    replay = pb.rollout(5)  # random actions
    assert torch.equal(replay["next", "reward"], original["next", "reward"])


def test_running_out_of_episodes_and_steps(tmp_path, stub_env_cls):
    _record(tmp_path / "a", stub_env_cls(episode_lengths=(5,)), 7)  # done (5) + cut (2)
    pb = PlaybackEnv(tmp_path / "a")
    with pytest.raises(PlaybackError, match=r"step\(\) before reset\(\)"):
        pb.step(pb.full_action_spec.zero().update(pb.full_done_spec.zero()))
    pb = PlaybackEnv(tmp_path / "a", start=1)
    td = pb.reset()
    for _ in range(2):
        td = pb.step(td.update(pb.recorded_action()))["next"].clone()
    with pytest.raises(PlaybackError, match="ended after 2 recorded steps; call reset"):
        pb.step(td.update({"action": torch.zeros(1, dtype=torch.int64)}))
    with pytest.raises(PlaybackError, match="no recorded step"):
        pb.recorded_action()
    with pytest.raises(PlaybackError, match="all 2 episodes .* have been played"):
        pb.reset()


def test_rollout_past_the_last_done_episode_raises(tmp_path, stub_env_cls):
    _record(tmp_path / "a", stub_env_cls(episode_lengths=(5,)), 10)
    pb = PlaybackEnv(tmp_path / "a")
    pb.rollout(10, break_when_any_done=False)  # the automatic last reset does not raise
    with pytest.raises(PlaybackError, match="have been played"):
        pb.rollout(11, break_when_any_done=False)


def test_loop_starts_again(tmp_path, stub_env_cls):
    _record(tmp_path / "a", stub_env_cls(episode_lengths=(5,)), 10)
    pb = PlaybackEnv(tmp_path / "a", loop=True)
    seen = []
    for _ in range(5):
        pb.reset()
        seen.append(pb.episode_index)
    assert seen == [0, 1, 0, 1, 0]


def test_bad_arguments_and_stores(tmp_path, stub_env_cls):
    _record(tmp_path / "a", stub_env_cls(episode_lengths=(5,)), 5)
    with pytest.raises(ConfigError, match=r"start must be an episode index in \[0, 1\)"):
        PlaybackEnv(tmp_path / "a", start=3)
    TrajectoryWriter(tmp_path / "empty").close()
    with pytest.raises(StoreError, match="holds no episode"):
        PlaybackEnv(tmp_path / "empty")
    with pytest.raises(StoreError, match="does not exist"):
        PlaybackEnv(tmp_path / "missing")


def _record_cartpole(path, steps=40):
    from trlrec import TensorDictRecorder

    with TensorDictRecorder(path) as rec:
        env = GymEnv("CartPole-v1").append_transform(rec)
        env.set_seed(0)
        env.rollout(steps, break_when_any_done=False)
    return GymEnv("CartPole-v1")


def test_specs_are_the_recorded_envs(tmp_path):
    original = _record_cartpole(tmp_path / "a")
    pb = PlaybackEnv(tmp_path / "a")
    assert pb.action_spec == original.action_spec
    assert isinstance(pb.action_spec, OneHot)
    assert pb.observation_spec == original.observation_spec
    assert pb.reward_spec == original.reward_spec
    assert pb.done_spec == original.done_spec
    check_env_specs(pb)


def test_random_policy_actions_are_valid_for_the_original_env(tmp_path):
    original = _record_cartpole(tmp_path / "a")
    pb = PlaybackEnv(tmp_path / "a", loop=True)
    actions = pb.rollout(30, RandomPolicy(pb.action_spec), break_when_any_done=False)["action"]
    assert actions.dtype == torch.int64
    assert torch.equal(actions.sum(-1), torch.ones(30, dtype=torch.int64))  # one-hot
    assert all(original.action_spec.is_in(a) for a in actions)
    original.reset()
    for a in actions[:5]:  # and the original env takes them
        original.step(TensorDict(action=a).update(original.reset()))


def test_spec_driven_modules_build_from_it(tmp_path):
    original = _record_cartpole(tmp_path / "a")
    pb = PlaybackEnv(tmp_path / "a", loop=True)
    n = pb.action_spec.space.n
    net = TensorDictModule(nn.Linear(4, n), in_keys=["observation"], out_keys=["action_value"])
    qvalue = QValueModule(spec=pb.action_spec)
    policy = TensorDictSequential(net, qvalue, EGreedyModule(pb.action_spec, eps_init=0.5))
    out = pb.rollout(25, policy, break_when_any_done=False)
    assert all(original.action_spec.is_in(a) for a in out["action"])
    assert torch.equal(out["action"].sum(-1), torch.ones(25, dtype=torch.int64))
    assert out["action_value"].shape == (25, 2)


def test_check_env_specs_checks_the_recorded_bounds(tmp_path, stub_env_cls):
    # the stub's observations exceed [0, 1]: recorded as bounds, check_env_specs sees it
    env = stub_env_cls(episode_lengths=(5,))
    specs = env.specs.clone()
    specs["output_spec", "full_observation_spec", "observation"] = Bounded(0.0, 1.0, shape=(4,))
    _record(tmp_path / "a", env, 10, specs=specs)
    pb = PlaybackEnv(tmp_path / "a", loop=True)
    assert isinstance(pb.observation_spec["observation"], Bounded)
    with pytest.raises(AssertionError, match="spec check failed"):
        check_env_specs(pb)


def test_batched_recording_plays_with_one_sub_envs_specs(tmp_path):
    from torchrl.envs import SerialEnv

    from trlrec import TensorDictRecorder

    env = SerialEnv(2, lambda: GymEnv("CartPole-v1"))
    with TensorDictRecorder(tmp_path / "a") as rec:
        env.rollout(12, callback=rec, break_when_any_done=False)
    assert TrajectoryReader(tmp_path / "a").specs.shape == (2,)
    pb = PlaybackEnv(tmp_path / "a", loop=True)
    single = GymEnv("CartPole-v1")
    assert pb.batch_size == ()
    assert pb.action_spec == single.action_spec
    assert pb.observation_spec == single.observation_spec
    check_env_specs(pb)
