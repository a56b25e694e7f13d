"""``WandbLogger``: one offline run per module, read back from its run directory."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.loggers.logger_readback import (
    assert_frames_close,
    expected_rgb,
    read_gif,
    read_mp4,
    solid_frames,
    wandb_history,
    wandb_records,
)
from trlrec.errors import ConfigError, MissingDependencyError, UnsupportedDataError, VideoError
from trlrec.loggers import WandbLogger, experiment_dir_of
from trlrec.loggers.wandb import step_key

FRAMES = solid_frames(5, 12, 18)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A run made offline through ``WANDB_MODE`` only, used by every call, then finished."""
    root = tmp_path_factory.mktemp("wandb")
    data = root / "dataset"
    data.mkdir()
    (data / "chunk.bin").write_bytes(b"\x00" * 64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_DIR", str(root))
        mp.setenv("WANDB_DISABLE_GIT", "true")
        lg = WandbLogger("exp", save_dir=root / "save", project="trlrec-tests", video_fps=12)
        env_mode = os.environ.get("WANDB_MODE")
        lg.log_scalar("train/reward", 1.0)
        lg.log_scalar("train/reward", 2.0, step=10)
        lg.log_scalar("eval/reward", 5.0, step=3)  # steps need not increase across names
        lg.log_scalar("loss", 0.5, step=4)  # no group: the "step" axis
        lg.log_scalar("batch/a", 1.0, step=6, commit=False)  # TorchRL's commit=False: one row
        lg.log_scalar("batch/b", 2.0, step=6)
        lg.log_metrics({"global/x": 7.0}, step=100, override_global_step=True)
        lg.log_metrics({"m/p": 1.0, "m/q": 2.0}, step=8)
        explicit = lg.log_metrics({"x/reward": 1.0, "x/step": 4}, step=99)  # the key wins
        lg.log_metrics({"x/reward": 2.0})  # and the counter goes on from it
        lg.log_video("episode", FRAMES, step=2)
        lg.log_video("eval/clip", FRAMES, step=1, format="gif")
        with pytest.raises(VideoError) as refused:
            lg.log_video("bad", FRAMES, format="webm")
        lg.log_hparams({"lr": 0.01, "net": {"depth": 2}})
        lg.log_trajectory("rollout", data, step=1)
        lg.trajectories = "upload"
        lg.log_trajectory("rollout", data, step=2)
        run_dir = Path(lg.experiment.dir).parent
        lg.close()
        records = wandb_records(run_dir)
        yield {
            "logger": lg,
            "run_dir": run_dir,
            "records": records,
            "data": data,
            "root": root,
            "env_mode": env_mode,
            "refused": str(refused.value),
            "explicit": explicit,
        }


def _of_kind(records: list[Any], kind: str) -> list[Any]:
    return [r for r in records if r.WhichOneof("record_type") == kind]


def test_offline_run_under_save_dir(finished: dict[str, Any]) -> None:
    run_dir = finished["run_dir"]
    assert run_dir.parent == finished["root"] / "save" / "wandb"
    assert run_dir.name.startswith("offline-run-")
    assert finished["env_mode"] == "offline"  # constructing did not rewrite WANDB_MODE
    lg = finished["logger"]
    assert lg.experiment_dir == run_dir / "trlrec"
    assert experiment_dir_of(lg) == run_dir / "trlrec"


def test_scalars_on_per_group_step_axes(finished: dict[str, Any]) -> None:
    rows = wandb_history(finished["run_dir"])

    def series(name: str) -> list[tuple[int, float]]:
        return [(int(r[step_key(name)]), float(r[name])) for r in rows if name in r]

    assert series("train/reward") == [(0, 1.0), (10, 2.0)]
    assert series("eval/reward") == [(3, 5.0)]
    metrics = {m.metric.name: m.metric.step_metric for m in _of_kind(finished["records"], "metric")}
    # TorchRL 0.14's axes: <group>/step, and "step" for names without a group
    assert metrics["train/reward"] == "train/step"
    assert metrics["eval/reward"] == "eval/step"
    assert metrics["loss"] == "step"
    (loss,) = [r for r in rows if "loss" in r]
    assert json.loads(loss["step"]) == 4
    # commit=False joined the next value's row; log_metrics logs one row
    (batch,) = [r for r in rows if "batch/a" in r]
    assert {k: json.loads(v) for k, v in batch.items() if k.startswith("batch")} == {
        "batch/a": 1.0,
        "batch/b": 2.0,
        "batch/step": 6,
    }
    (m,) = [r for r in rows if "m/p" in r]
    assert (json.loads(m["m/q"]), json.loads(m["m/step"])) == (2.0, 8)
    # a step key among the metrics is its group's step, as TorchRL
    got = [(json.loads(r["x/step"]), json.loads(r["x/reward"])) for r in rows if "x/reward" in r]
    assert got == [(4, 1.0), (5, 2.0)]
    assert finished["explicit"] == {"x/reward": 1.0, "x/step": 4}
    # override_global_step: W&B's own step, no group axis
    (glob,) = [r for r in rows if "global/x" in r]
    assert json.loads(glob["_step"]) == 100
    assert "global/step" not in glob


def test_package_versions_in_config(finished: dict[str, Any]) -> None:
    values = {}
    for config in _of_kind(finished["records"], "config"):
        values.update({item.key: json.loads(item.value_json) for item in config.config.update})
    env = values["env"]  # TorchRL's key and layout
    assert env["packages"]["torchrl"] == importlib.metadata.version("torchrl")
    assert env["packages"]["wandb"] == importlib.metadata.version("wandb")
    assert env["python"]["executable"] == sys.executable


def test_state_dict_names_the_run(finished: dict[str, Any], tmp_path: Path) -> None:
    lg = finished["logger"]
    state = lg.state_dict()
    assert state["local"]["id"] == lg.experiment.id
    assert state["local"]["counters"]["scalar"]["train/reward"] == 11
    other = {**state, "local": {**state["local"], "id": "another-run"}}
    with pytest.raises(ConfigError, match="written by run 'another-run'"):
        lg.load_state_dict(other)


def test_run_directory_holds_the_mp4(finished: dict[str, Any]) -> None:
    run_dir = finished["run_dir"]
    (media,) = (run_dir / "files" / "media" / "videos").glob("episode_*.mp4")
    assert_frames_close(read_mp4(media)[:, :12, :18], expected_rgb(FRAMES))
    (row,) = [r for r in wandb_history(run_dir) if "episode/path" in r]
    assert int(row["step"]) == 2  # "episode" has no group: the "step" axis
    assert json.loads(row["episode/path"]) == str(media.relative_to(run_dir / "files"))
    # trlrec's own copy, named like the CSV logger's
    assert (run_dir / "trlrec" / "videos" / "episode_2.mp4").is_file()


def test_gif_video_on_its_group_axis(finished: dict[str, Any]) -> None:
    run_dir = finished["run_dir"]
    (row,) = [r for r in wandb_history(run_dir) if "eval/clip/path" in r]
    assert json.loads(row["eval/step"]) == 1
    assert json.loads(row["eval/clip/path"]).endswith(".gif")
    gif = run_dir / "files" / json.loads(row["eval/clip/path"])
    assert_frames_close(read_gif(gif.read_bytes()), expected_rgb(FRAMES))
    assert "format='webm'" in finished["refused"]
    assert not [r for r in wandb_history(run_dir) if "bad/path" in r]


def test_hparams_in_config(finished: dict[str, Any]) -> None:
    values = {}
    for config in _of_kind(finished["records"], "config"):
        values.update({item.key: json.loads(item.value_json) for item in config.config.update})
    assert {k: values[k] for k in ("lr", "net")} == {"lr": 0.01, "net": {"depth": 2}}


def test_trajectories_are_dataset_artifacts(finished: dict[str, Any]) -> None:
    artifacts = [r.artifact for r in _of_kind(finished["records"], "artifact")]
    assert [(a.name, a.type) for a in artifacts] == [("rollout", "dataset")] * 2
    reference, upload = artifacts
    data = finished["data"].resolve()
    # a reference lists the files without copying (or hashing) them
    assert [e.ref for e in reference.manifest.contents] == [(data / "chunk.bin").as_uri()]
    assert [e.path for e in upload.manifest.contents] == ["chunk.bin"]
    assert json.loads(reference.metadata) == {"path": str(data), "step": 1}
    lines = (finished["run_dir"] / "trlrec" / "trajectories.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_missing_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'trlrec\[wandb\]'"):
        WandbLogger("exp", offline=True, save_dir=tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDataError, match="both save_dir and log_dir"):
        WandbLogger("exp", offline=True, save_dir=tmp_path, log_dir=tmp_path)
    with pytest.raises(UnsupportedDataError, match="trajectories must be 'reference' or 'upload'"):
        WandbLogger("exp", offline=True, save_dir=tmp_path, trajectories="copy")  # type: ignore[arg-type]
