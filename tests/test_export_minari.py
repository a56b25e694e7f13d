"""trlrec.export to_minari / from_minari, checked with Minari's own loader."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torchrl.envs import GymEnv
from torchrl.envs.utils import check_env_specs

from trlrec import PlaybackEnv, TensorDictRecorder, TrajectoryReader, TrajectoryWriter
from trlrec.errors import ConfigError, MissingDependencyError, UnsupportedDataError
from trlrec.export import from_minari, to_minari

minari = pytest.importorskip("minari")


@pytest.fixture(autouse=True)
def _minari_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def _record_cartpole(path, steps=60):
    with TensorDictRecorder(path, metadata={"agent": "random"}) as rec:
        env = GymEnv("CartPole-v1").append_transform(rec)
        env.set_seed(0)
        env.rollout(steps, break_when_any_done=False)


def _record_pixels(path, stub_env_cls, steps=23):
    env = stub_env_cls(episode_lengths=(6, 9), pixels=(40, 36, 3))
    with TensorDictRecorder(path, episode_fn=lambda td: {"len": int(td["observation"][0])}) as rec:
        env.append_transform(rec).rollout(steps, break_when_any_done=False)


def _same_store(a, b):
    ra, rb = TrajectoryReader(a), TrajectoryReader(b)
    assert (ra.num_steps, ra.num_episodes) == (rb.num_steps, rb.num_episodes)
    assert ra.metadata == rb.metadata
    assert ra.specs == rb.specs
    for i in range(ra.num_episodes):
        ea, eb = ra.episodes[i], rb.episodes[i]
        keys = sorted(ea.keys(True, True), key=str)
        assert keys == sorted(eb.keys(True, True), key=str)
        for k in keys:
            x, y = ea.get(k), eb.get(k)
            assert (x.dtype, x.shape) == (y.dtype, y.shape), k
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), k
        assert ra.episode_metadata(i) == rb.episode_metadata(i)
        assert ra.episode_info(i)["flags"] == rb.episode_info(i)["flags"]


def test_cartpole_to_minari_is_what_minari_loads(tmp_path):
    _record_cartpole(tmp_path / "a")
    result = to_minari(tmp_path / "a", "cartpole/random-v0", env="CartPole-v1", progress=False)
    assert result.notes == []
    ds = minari.load_dataset("cartpole/random-v0")
    env = GymEnv("CartPole-v1")
    reader = TrajectoryReader(tmp_path / "a")
    assert (ds.total_episodes, ds.total_steps) == (reader.num_episodes, reader.num_steps)
    assert (result.episodes, result.steps) == (reader.num_episodes, reader.num_steps)
    # spaces from the recorded specs: the bounds and n of CartPole's
    gym_env = ds.recover_environment()
    assert ds.observation_space == gym_env.observation_space
    assert ds.action_space == gym_env.action_space
    np.testing.assert_array_equal(
        ds.observation_space.low, env.observation_spec["observation"].low.numpy()
    )
    for i, ep in enumerate(ds.iterate_episodes()):
        td = reader.episodes[i]
        obs = torch.cat([td["observation"], td["next", "observation"][-1:]]).numpy()
        np.testing.assert_array_equal(ep.observations, obs)
        np.testing.assert_array_equal(ep.actions, td["action"].argmax(-1).numpy())
        np.testing.assert_array_equal(ep.rewards, td["next", "reward"].reshape(-1).numpy())
        np.testing.assert_array_equal(ep.terminations, td["next", "terminated"].reshape(-1).numpy())
        np.testing.assert_array_equal(ep.truncations, td["next", "truncated"].reshape(-1).numpy())
        done = torch.cat([td["done"], td["next", "done"][-1:]]).numpy()
        np.testing.assert_array_equal(ep.infos["done"], done)


def test_cartpole_round_trip_is_bit_exact(tmp_path):
    _record_cartpole(tmp_path / "a")
    to_minari(tmp_path / "a", "cartpole/rt-v0", progress=False)
    result = from_minari("cartpole/rt-v0", tmp_path / "b", progress=False)
    assert result.notes == []
    _same_store(tmp_path / "a", tmp_path / "b")
    # what users train from works on it
    pb = PlaybackEnv(tmp_path / "b")
    assert pb.action_spec == GymEnv("CartPole-v1").action_spec


def test_pixel_round_trip_is_bit_exact(tmp_path, stub_env_cls):
    _record_pixels(tmp_path / "a", stub_env_cls)
    to_minari(tmp_path / "a", "stub/pixels-v0", progress=False)
    ds = minari.load_dataset("stub/pixels-v0")
    assert set(ds.observation_space.spaces) == {"observation", "pixels"}
    assert ds.observation_space["pixels"].dtype == np.uint8
    ep = ds[0]
    td = TrajectoryReader(tmp_path / "a").episodes[0]
    np.testing.assert_array_equal(ep.observations["pixels"][:-1], td["pixels"].numpy())
    np.testing.assert_array_equal(ep.actions, td["action"].reshape(-1).numpy())  # Discrete
    from_minari("stub/pixels-v0", tmp_path / "b", progress=False)
    _same_store(tmp_path / "a", tmp_path / "b")
    # what works on a recording works on the import: video, replay buffer, playback
    from trlrec.cli.video import export_video

    path, frames = export_video(tmp_path / "b", tmp_path / "ep.mp4", key="pixels")
    assert frames == 7
    assert path.stat().st_size > 0
    batch = TrajectoryReader(tmp_path / "b").as_replay_buffer(batch_size=4).sample()
    assert batch["pixels"].shape == (4, 40, 36, 3)
    check_env_specs(PlaybackEnv(tmp_path / "b", loop=True))


def test_jpeg_is_lossy_and_said_so(tmp_path, stub_env_cls):
    _record_pixels(tmp_path / "a", stub_env_cls, steps=8)
    result = to_minari(tmp_path / "a", "stub/jpeg-v0", jpeg=True, progress=False)
    assert any("JPEG" in n and "lossy" in n for n in result.notes)
    ep = minari.load_dataset("stub/jpeg-v0")[0]
    assert ep.observations["pixels"].shape == (7, 40, 36, 3)


@pytest.mark.filterwarnings(
    "ignore:.*eval_env:UserWarning", "ignore:.*env_spec is None:UserWarning"
)
def test_a_foreign_minari_dataset_becomes_a_store(tmp_path):
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(0)
    episodes = []
    for T in (5, 7):
        episodes.append(
            EpisodeBuffer(
                observations=rng.normal(size=(T + 1, 3)).astype(np.float32),
                actions=rng.integers(0, 4, size=T),
                rewards=rng.normal(size=T),
                terminations=np.arange(T) == T - 1,
                truncations=np.zeros(T, bool),
                infos={"speed": rng.normal(size=(T + 1, 2)), "name": ["x"] * (T + 1)},
            )
        )
    minari.create_dataset_from_buffers(
        "other/ds-v0",
        episodes,
        observation_space=spaces.Box(-10, 10, (3,), np.float32),
        action_space=spaces.Discrete(4),
        author="a",
        author_email="a@b",
        code_permalink="x",
        algorithm_name="random",
        description="d",
    )
    result = from_minari("other/ds-v0", tmp_path / "s", progress=False)
    assert any("'name'" in n for n in result.notes)
    r = TrajectoryReader(tmp_path / "s")
    assert (r.num_episodes, r.num_steps) == (2, 12)
    assert r.metadata == {"minari_dataset_id": "other/ds-v0"}
    for i, buf in enumerate(episodes):
        td = r.episodes[i]
        obs = torch.cat([td["observation"], td["next", "observation"][-1:]])
        assert torch.equal(obs, torch.from_numpy(buf.observations))
        assert torch.equal(td["action"], torch.from_numpy(buf.actions))
        assert torch.equal(td["next", "reward"].reshape(-1), torch.from_numpy(buf.rewards))
        assert td["next", "reward"].dtype == torch.float64
        assert torch.equal(td["next", "terminated"].reshape(-1), torch.from_numpy(buf.terminations))
        speed = torch.cat([td["info", "speed"], td["next", "info", "speed"][-1:]])
        assert torch.equal(speed, torch.from_numpy(buf.infos["speed"]))
        assert r.episode_info(i)["flags"] == 1  # ended by its termination
    pb = PlaybackEnv(r)
    assert pb.action_spec.space.n == 4
    assert pb.observation_spec["observation"].space.high.max() == 10
    pb.rollout(5)


def test_errors(tmp_path, stub_env_cls, monkeypatch):
    _record_cartpole(tmp_path / "a", steps=5)
    to_minari(tmp_path / "a", "dup-v0", progress=False)
    with pytest.raises(ConfigError, match="dup-v0.*already exists"):
        to_minari(tmp_path / "a", "dup-v0", progress=False)
    with pytest.raises(ConfigError, match="cannot open the Minari dataset 'nope-v0'"):
        from_minari("nope-v0", tmp_path / "b", progress=False)
    # a one-hot action that is not one-hot cannot become an index
    env = GymEnv("CartPole-v1")
    td = env.rollout(3, break_when_any_done=False)
    td["action"] = torch.zeros_like(td["action"])
    with TrajectoryWriter(tmp_path / "z", specs=env.specs) as w:
        w.extend(td)
    with pytest.raises(UnsupportedDataError, match="'action' is a one-hot action"):
        to_minari(tmp_path / "z", "z-v0", progress=False)
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'trlrec\[minari\]'"):
        to_minari(tmp_path / "a", "x-v0", progress=False)


def test_command_line_export_and_import(tmp_path, capsys):
    from trlrec.cli import main

    _record_cartpole(tmp_path / "a", steps=20)
    assert (
        main(["export", "minari", str(tmp_path / "a"), "cli/cartpole-v0", "--env", "CartPole-v1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "episodes, 20 steps to Minari dataset cli/cartpole-v0" in out
    assert "exact copy" in out
    assert minari.load_dataset("cli/cartpole-v0").total_steps == 20
    assert main(["import", "minari", "cli/cartpole-v0", str(tmp_path / "b")]) == 0
    assert "20 steps to store" in capsys.readouterr().out
    _same_store(tmp_path / "a", tmp_path / "b")
    assert main(["export", "minari", str(tmp_path / "a"), "cli/cartpole-v0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "trlrec export: error:" in err[0]
    assert "already exists" in err[0]


def test_rendered_cartpole_round_trip_is_bit_exact(tmp_path):
    with TensorDictRecorder(tmp_path / "a") as rec:
        env = GymEnv("CartPole-v1", from_pixels=True, pixels_only=False).append_transform(rec)
        env.set_seed(1)
        env.rollout(6, break_when_any_done=False)
    to_minari(tmp_path / "a", "cartpole/pixels-v0", env="CartPole-v1", progress=False)
    ds = minari.load_dataset("cartpole/pixels-v0")
    assert ds.observation_space["pixels"].shape == (400, 600, 3)
    assert ds[0].observations["pixels"].shape == (7, 400, 600, 3)
    from_minari("cartpole/pixels-v0", tmp_path / "b", progress=False)
    _same_store(tmp_path / "a", tmp_path / "b")


def test_readme_export_lines_run(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"## Export.*?```python\n(.*?)```", readme, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    monkeypatch.chdir(tmp_path)
    _record_cartpole("runs/cartpole/transitions", steps=10)
    exec(compile(code, "README.md", "exec"), {})
    assert minari.load_dataset("cartpole/random-v0").total_steps == 10
    assert (tmp_path / "runs/cartpole-lerobot/meta/info.json").is_file()


def test_progress_is_drawn_on_a_terminal(tmp_path, monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    _record_cartpole(tmp_path / "a", steps=40)
    n = TrajectoryReader(tmp_path / "a").num_episodes
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    to_minari(tmp_path / "a", "progress/cartpole-v0")
    assert f"export progress/cartpole-v0: {n}/{n}" in tty.getvalue()
    tty.truncate(0)
    to_minari(tmp_path / "a", "progress/quiet-v0", progress=False)
    assert tty.getvalue().strip("\x00") == ""


def test_torchrl_minari_replay_opens_the_export(tmp_path):
    from torchrl.data.datasets.minari_data import MinariExperienceReplay

    _record_cartpole(tmp_path / "a", steps=30)
    to_minari(tmp_path / "a", "cartpole/torchrl-v0", env="CartPole-v1", progress=False)
    rb = MinariExperienceReplay(
        "cartpole/torchrl-v0", batch_size=4, root=tmp_path / "trl", load_from_local_minari=True
    )
    data = rb.storage._storage
    # TorchRL 0.14.1 rebuilds the layout (it checks T + 1 observations per episode) but
    # then replaces the values by zeros (memmap_like after filling), for any Minari
    # dataset: only the layout can be compared.
    assert len(rb) == 30
    assert (data["observation"].shape, data["observation"].dtype) == ((30, 4), torch.float32)
    assert (data["next", "reward"].shape, data["action"].dtype) == ((30, 1), torch.int64)
    assert rb.sample()["next", "observation"].shape == (4, 4)


def test_a_gpu_recording_exports_and_imports_on_a_cpu(tmp_path):
    import json

    _record_cartpole(tmp_path / "a", steps=10)
    path = tmp_path / "a" / "specs.json"
    doc = json.loads(path.read_text())
    # a device no machine here has (a recording from a bigger machine)
    path.write_text(json.dumps(doc).replace('"device": "cpu"', '"device": "cuda:99"'))
    to_minari(tmp_path / "a", "gpu/cartpole-v0", progress=False)
    result = from_minari("gpu/cartpole-v0", tmp_path / "b", progress=False)
    assert any("specs are stored on the CPU" in n and "cuda:99" in n for n in result.notes)
    assert TrajectoryReader(tmp_path / "b").specs == GymEnv("CartPole-v1").specs


def test_the_pinned_v1_store_without_specs_goes_and_comes_back(tmp_path):
    pinned = "tests/data/store_v1"
    result = to_minari(pinned, "pinned/v1-v0", progress=False)
    ds = minari.load_dataset("pinned/v1-v0")
    r = TrajectoryReader(pinned)
    assert ds.total_steps == r.num_steps == result.steps
    from_minari("pinned/v1-v0", tmp_path / "b", progress=False)
    b = TrajectoryReader(tmp_path / "b")
    assert b.specs is None
    for i in range(r.num_episodes):
        x, y = r.episodes[i], b.episodes[i]
        assert sorted(x.keys(True, True), key=str) == sorted(y.keys(True, True), key=str)
        for k in x.keys(True, True):
            assert x[k].dtype == y[k].dtype
            assert torch.equal(x[k], y[k]), k
        flags = r.episode_info(i)["flags"]
        assert b.episode_info(i)["flags"] == (2 if flags == 4 else flags)  # open -> cut


def test_bfloat16_round_trip_is_bit_exact(tmp_path):
    from tensordict import TensorDict

    with TrajectoryWriter(tmp_path / "a") as w:
        for t in range(5):
            w.append(
                TensorDict(
                    observation=torch.full((2,), t / 3, dtype=torch.bfloat16),
                    action=torch.tensor([t % 2]),
                    next={
                        "observation": torch.full((2,), (t + 1) / 3, dtype=torch.bfloat16),
                        "reward": torch.ones(1),
                        "done": torch.tensor([t == 4]),
                    },
                )
            )
    result = to_minari(tmp_path / "a", "bf16/ds-v0", progress=False)
    assert any("bfloat16" in n for n in result.notes)
    assert minari.load_dataset("bf16/ds-v0")[0].observations.dtype == np.float32
    from_minari("bf16/ds-v0", tmp_path / "b", progress=False)
    _same_store(tmp_path / "a", tmp_path / "b")


def test_nested_observations_and_multi_encodings_round_trip(tmp_path):
    from gymnasium import spaces
    from tensordict import TensorDict
    from torchrl.data import (
        Binary,
        Bounded,
        Categorical,
        Composite,
        MultiCategorical,
        MultiOneHot,
        Unbounded,
    )

    torch.manual_seed(0)
    obs_spec = Composite(
        agent=Composite(pos=Bounded(-1.0, 1.0, shape=(3,)), flags=Binary(4, dtype=torch.bool)),
        grid=MultiCategorical([3, 4]),
        mode=Categorical(5, shape=(2,), dtype=torch.int32),
    )
    act_spec = MultiOneHot([2, 3], dtype=torch.int64)
    flag = Categorical(2, shape=(1,), dtype=torch.bool)
    specs = Composite(
        output_spec=Composite(
            full_observation_spec=obs_spec,
            full_reward_spec=Composite(reward=Unbounded(shape=(1,))),
            full_done_spec=Composite(done=flag, terminated=flag.clone(), truncated=flag.clone()),
        ),
        input_spec=Composite(
            full_action_spec=Composite(action=act_spec), full_state_spec=Composite()
        ),
    )
    with TrajectoryWriter(tmp_path / "a", specs=specs) as w:
        obs = obs_spec.rand()
        for t in range(12):
            nxt = obs_spec.rand()
            end = torch.tensor([t in (4, 11)])
            step = obs.clone().update({"action": act_spec.rand(), "done": torch.tensor([False])})
            step["terminated"] = torch.tensor([False])
            step["truncated"] = torch.tensor([False])
            step["next"] = nxt.clone().update(
                {
                    "reward": torch.rand(1),
                    "done": end,
                    "terminated": end,
                    "truncated": torch.tensor([False]),
                }
            )
            w.append(TensorDict(step.to_dict(), batch_size=[]))
            obs = obs_spec.rand() if end else nxt
    to_minari(tmp_path / "a", "nested/ds-v0", progress=False)
    ds = minari.load_dataset("nested/ds-v0")
    space = ds.observation_space
    assert isinstance(space["agent"], spaces.Dict)
    assert space["agent"]["pos"] == spaces.Box(-1.0, 1.0, (3,), np.float32)
    assert space["agent"]["flags"] == spaces.MultiBinary([4])
    assert space["grid"] == spaces.MultiDiscrete([3, 4])
    assert space["mode"] == spaces.MultiDiscrete([5, 5])
    assert ds.action_space == spaces.MultiDiscrete([2, 3])
    ep = ds[0]
    td = TrajectoryReader(tmp_path / "a").episodes[0]
    np.testing.assert_array_equal(ep.actions[:, 1], td["action"][:, 2:].argmax(-1).numpy())
    from_minari("nested/ds-v0", tmp_path / "b", progress=False)
    _same_store(tmp_path / "a", tmp_path / "b")
