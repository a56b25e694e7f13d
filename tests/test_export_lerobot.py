"""trlrec.export.to_lerobot: LeRobot v3.0's on-disk layout, read back with pyarrow and ffmpeg.

LeRobot's own ``LeRobotDataset`` cannot be installed here (its wheel pins another
torch), so the files are checked against the layout its loader reads.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torchrl.envs import GymEnv

from trlrec import TensorDictRecorder, TrajectoryReader
from trlrec.errors import ConfigError, MissingDependencyError
from trlrec.export import to_lerobot
from trlrec.specs import specs_from_json, specs_to_json

from .loggers.logger_readback import mp4_fps, read_mp4

pq = pytest.importorskip("pyarrow.parquet")


def _record_pixels(path, stub_env_cls, steps=23):
    env = stub_env_cls(episode_lengths=(6, 9), pixels=(40, 36, 3))
    with TensorDictRecorder(path, metadata={"task": "count up"}) as rec:
        env.append_transform(rec).rollout(steps, break_when_any_done=False)


def _info(root):
    return json.loads((root / "meta" / "info.json").read_text())


def test_pixel_store_to_lerobot_layout(tmp_path, stub_env_cls):
    _record_pixels(tmp_path / "a", stub_env_cls)
    result = to_lerobot(tmp_path / "a", tmp_path / "lr", fps=10, progress=False)
    assert any("H.264" in n and "lossy" in n for n in result.notes)
    reader = TrajectoryReader(tmp_path / "a")
    root = tmp_path / "lr"
    info = _info(root)
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"]) == (reader.num_episodes, reader.num_steps)
    assert info["fps"] == 10
    assert info["splits"] == {"train": f"0:{reader.num_episodes}"}
    feats = info["features"]
    assert feats["observation.images.pixels"]["dtype"] == "video"
    assert feats["observation.images.pixels"]["shape"] == [40, 36, 3]
    assert feats["observation.state"] == {
        "dtype": "float32",
        "shape": [4],
        "names": None,
        "info": {
            "trlrec_spec": specs_to_json(
                reader.specs["output_spec", "full_observation_spec", "observation"]
            )["spec"]
        },
    }
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert name in feats
    # the frames: every non-video feature is a column, with the store's values
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    assert set(data.column_names) == {k for k, f in feats.items() if f["dtype"] != "video"}
    assert data.num_rows == reader.num_steps
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == list(range(reader.num_episodes))
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.to_pylist() == [{"task_index": 0, "task": "count up"}]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    for i, ep in enumerate(episodes):
        td = reader.episodes[i]
        T = td.shape[0]
        assert ep["length"] == T
        assert ep["tasks"] == ["count up"]
        rows = data.slice(ep["dataset_from_index"], T).to_pydict()
        assert rows["episode_index"] == [i] * T
        assert rows["frame_index"] == list(range(T))
        np.testing.assert_array_equal(
            np.array(rows["timestamp"]), (np.arange(T) / 10).astype(np.float32)
        )
        np.testing.assert_array_equal(
            np.array(rows["observation.state"]), td["observation"].numpy()
        )
        np.testing.assert_array_equal(np.array(rows["action"]), td["action"].reshape(-1).numpy())
        np.testing.assert_array_equal(
            np.array(rows["next.reward"]), td["next", "reward"].reshape(-1).numpy()
        )
        np.testing.assert_array_equal(
            np.array(rows["next.done"]), td["next", "done"].reshape(-1).numpy()
        )
        mean = td["observation"].double().mean(0).numpy()
        np.testing.assert_allclose(ep["stats/observation.state/mean"], mean)
        pixels = td["pixels"].double().numpy() / 255
        for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
            expected = fn(pixels, axis=(0, 1, 2)).reshape(3, 1, 1)
            np.testing.assert_allclose(ep[f"stats/observation.images.pixels/{stat}"], expected)
        # one video per episode, T frames of the recorded size, close to the recorded pixels
        assert ep["videos/observation.images.pixels/from_timestamp"] == 0.0
        assert ep["videos/observation.images.pixels/to_timestamp"] == pytest.approx(T / 10)
        video = root / info["video_path"].format(
            video_key="observation.images.pixels", chunk_index=0, file_index=i
        )
        frames = read_mp4(video)
        assert mp4_fps(video) == 10
        assert frames.shape == (T, 40, 36, 3)
        error = np.abs(frames.astype(float) - td["pixels"].numpy()).mean()
        assert error < 5, error  # measured ~2.9 at crf 18 on these noise-like frames
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert stats["observation.state"]["count"] == [reader.num_steps]
    assert np.array(stats["observation.images.pixels"]["mean"]).shape == (3, 1, 1)
    all_obs = torch.cat([ep["observation"] for ep in reader.episodes]).double()
    np.testing.assert_allclose(
        stats["observation.state"]["std"], all_obs.std(0, unbiased=False).numpy()
    )


def test_cartpole_keeps_its_specs_and_has_no_videos(tmp_path):
    with TensorDictRecorder(tmp_path / "a") as rec:
        GymEnv("CartPole-v1").append_transform(rec).rollout(30, break_when_any_done=False)
    to_lerobot(tmp_path / "a", tmp_path / "lr", progress=False)
    info = _info(tmp_path / "lr")
    assert info["video_path"] is None
    action = info["features"]["action"]
    assert (action["dtype"], action["shape"]) == ("int64", [2])  # one-hot, as recorded
    doc = {"format": "trlrec-specs", "version": 1, "spec": action["info"]["trlrec_spec"]}
    assert specs_from_json(doc) == GymEnv("CartPole-v1").action_spec
    data = pq.read_table(tmp_path / "lr/data/chunk-000/file-000.parquet")
    td = TrajectoryReader(tmp_path / "a").episodes[0]
    np.testing.assert_array_equal(
        np.array(data["action"].to_pylist()[: td.shape[0]]), td["action"].numpy()
    )


def test_errors(tmp_path, stub_env_cls, monkeypatch):
    _record_pixels(tmp_path / "a", stub_env_cls, steps=4)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="full.*not an empty directory"):
        to_lerobot(tmp_path / "a", tmp_path / "full", progress=False)
    with pytest.raises(ConfigError, match="fps must be a positive whole number"):
        to_lerobot(tmp_path / "a", tmp_path / "b", fps=12.5, progress=False)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'trlrec\[lerobot\]'"):
        to_lerobot(tmp_path / "a", tmp_path / "c", progress=False)


def test_command_line(tmp_path, stub_env_cls, capsys):
    from trlrec.cli import main

    _record_pixels(tmp_path / "a", stub_env_cls, steps=8)
    code = main(["export", "lerobot", str(tmp_path / "a"), str(tmp_path / "lr"), "--fps", "15"])
    out = capsys.readouterr().out
    assert code == 0
    assert "wrote 2 episodes, 8 steps to LeRobot v3.0 dataset" in out
    assert "note       image keys are H.264 videos (yuv420p): lossy" in out
    assert _info(tmp_path / "lr")["fps"] == 15


def _hf_features(features):
    """LeRobot's feature -> datasets.Features mapping (lerobot/datasets/feature_utils.py)."""
    import datasets

    out = {}
    for key, ft in features.items():
        shape = tuple(ft["shape"])
        if ft["dtype"] == "video":
            continue
        if shape == (1,):
            out[key] = datasets.Value(dtype=ft["dtype"])
        elif len(shape) == 1:
            out[key] = datasets.Sequence(length=shape[0], feature=datasets.Value(dtype=ft["dtype"]))
        else:
            raise AssertionError(f"unexpected feature shape {shape} for {key}")
    return datasets.Features(out)


def test_loads_the_way_lerobot_loads_it(tmp_path, stub_env_cls):
    """What LeRobotDatasetMetadata / LeRobotDataset do on open, with the same libraries."""
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    _record_pixels(tmp_path / "a", stub_env_cls)
    root = tmp_path / "lr"
    to_lerobot(tmp_path / "a", root, progress=False)
    info = _info(root)
    # load_tasks: pandas, indexed by the task text
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    tasks.index.name = "task"
    assert tasks.iloc[0].name == "count up"
    assert int(tasks.loc["count up"].task_index) == 0
    # load_episodes / load_nested_dataset: Dataset.from_parquet over chunk-*/file-*.parquet
    cache = str(tmp_path / "hf-cache")  # not ~/.cache
    episodes = datasets.Dataset.from_parquet(
        sorted(str(p) for p in (root / "meta/episodes").glob("*/*.parquet")), cache_dir=cache
    )
    episodes = episodes.select_columns([k for k in episodes.features if not k.startswith("stats/")])
    frames = datasets.Dataset.from_parquet(
        sorted(str(p) for p in (root / "data").glob("*/*.parquet")),
        features=_hf_features(info["features"]),
        cache_dir=cache,
    ).with_format("torch")
    assert len(frames) == info["total_frames"]
    reader = TrajectoryReader(tmp_path / "a")
    for ep in episodes:
        td = reader.episodes[ep["episode_index"]]
        item = frames[ep["dataset_from_index"] + 2]
        assert torch.equal(item["observation.state"], td["observation"][2])
        assert torch.equal(item["action"], td["action"][2, 0])
        assert item["timestamp"] == pytest.approx(2 / 30)
        video = root / info["video_path"].format(
            video_key="observation.images.pixels",
            chunk_index=ep["videos/observation.images.pixels/chunk_index"],
            file_index=ep["videos/observation.images.pixels/file_index"],
        )
        assert video.is_file()


def test_bfloat16_is_written_as_float32(tmp_path):
    from tensordict import TensorDict

    from trlrec import TrajectoryWriter

    with TrajectoryWriter(tmp_path / "a") as w:
        for t in range(4):
            obs = torch.full((2,), t / 3, dtype=torch.bfloat16)
            nxt = torch.full((2,), (t + 1) / 3, dtype=torch.bfloat16)
            w.append(
                TensorDict(
                    observation=obs,
                    action=torch.tensor([1]),
                    next={
                        "observation": nxt,
                        "reward": torch.ones(1),
                        "done": torch.tensor([t == 3]),
                    },
                )
            )
    result = to_lerobot(tmp_path / "a", tmp_path / "lr", progress=False)
    assert any("bfloat16" in n for n in result.notes)
    assert _info(tmp_path / "lr")["features"]["observation.state"]["dtype"] == "float32"
    data = pq.read_table(tmp_path / "lr/data/chunk-000/file-000.parquet")
    td = TrajectoryReader(tmp_path / "a").episodes[0]
    got = torch.tensor(data["observation.state"].to_pylist())
    assert torch.equal(got.to(torch.bfloat16), td["observation"])
