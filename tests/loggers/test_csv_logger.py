"""``CSVLogger``: its file layout (TorchRL's naming) and its use by TorchRL code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from tests.loggers.logger_readback import (
    assert_frames_close,
    expected_rgb,
    mp4_fps,
    read_mp4,
    solid_frames,
)
from trlrec.errors import UnsafeNameError, VideoError
from trlrec.loggers import CSVLogger


def test_layout(tmp_path: Path) -> None:
    with CSVLogger(exp_name="cartpole", log_dir=tmp_path / "runs", video_fps=10) as lg:
        assert lg.experiment_dir == tmp_path / "runs" / "cartpole"
        lg.log_scalar("reward", 1.0)
        lg.log_scalar("reward", 2.0, step=5)
        lg.log_video("episode", solid_frames(3, 8, 8), step=0)
        lg.log_video("episode", solid_frames(2, 8, 8))  # counter continues after step 0
        lg.log_video("episode", solid_frames(2, 8, 8), step=7, fps=25)
        lg.log_hparams({"lr": 0.1})
        lg.log_hparams({"gamma": 0.99, "env": {"id": "CartPole-v1"}})
    exp = tmp_path / "runs" / "cartpole"
    assert (exp / "scalars" / "reward.csv").read_text() == "step,value\n0,1.0\n5,2.0\n"
    videos = sorted(p.name for p in (exp / "videos").iterdir())
    assert videos == ["episode_0.mp4", "episode_1.mp4", "episode_7.mp4"]
    assert mp4_fps(exp / "videos" / "episode_0.mp4") == pytest.approx(10)
    assert mp4_fps(exp / "videos" / "episode_7.mp4") == pytest.approx(25)
    hparams = json.loads((exp / "hparams.json").read_text())
    assert hparams == {"lr": 0.1, "gamma": 0.99, "env": {"id": "CartPole-v1"}}


def test_appends_across_loggers(tmp_path: Path) -> None:
    for value in (1.0, 2.0):
        with CSVLogger("exp", log_dir=tmp_path) as lg:
            lg.log_scalar("x", value)
    assert (tmp_path / "exp" / "scalars" / "x.csv").read_text() == "step,value\n0,1.0\n0,2.0\n"


def test_default_log_dir_is_csv_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with CSVLogger("exp") as lg:
        assert lg.experiment_dir == Path("csv_logs") / "exp"
    assert (tmp_path / "csv_logs" / "exp" / "scalars").is_dir()


def test_unsafe_experiment_name(tmp_path: Path) -> None:
    with CSVLogger("../outside", log_dir=tmp_path / "logs") as lg:
        assert lg.experiment_dir == tmp_path / "logs" / "..%2Foutside"
    assert not (tmp_path / "outside").exists()
    with pytest.raises(UnsafeNameError, match="NUL"):
        CSVLogger("a\x00b", log_dir=tmp_path)


def test_other_video_formats_refused(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="mp4 only, got video_format='pt'"):
        CSVLogger("exp", log_dir=tmp_path, video_format="pt")


def test_bad_video_writes_nothing(tmp_path: Path) -> None:
    with CSVLogger("exp", log_dir=tmp_path) as lg:
        lg.log_video("v", solid_frames(2, 8, 8), step=0)
        with pytest.raises(VideoError, match="channels-last"):
            lg.log_video("v", torch.zeros(2, 8, 8, 3, dtype=torch.uint8), step=0)
        with pytest.raises(VideoError, match=r"float frame 1 has values in \[0.0, 9.0\]"):
            lg.log_video(
                "v", torch.stack([torch.zeros(3, 8, 8), torch.eye(8).expand(3, 8, 8) * 9]), step=0
            )
    # the first video is intact, nothing else is there
    assert [p.name for p in (tmp_path / "exp" / "videos").iterdir()] == ["v_0.mp4"]
    assert read_mp4(tmp_path / "exp" / "videos" / "v_0.mp4").shape == (2, 8, 8, 3)


def test_used_by_torchrl_video_recorder(tmp_path: Path) -> None:
    """TorchRL's own VideoRecorder writes through a trlrec logger (and its videos decode)."""
    from torchrl.record import VideoRecorder

    logger = CSVLogger(exp_name="cartpole", log_dir=tmp_path / "runs")
    recorder = VideoRecorder(logger, tag="episode", skip=1)
    frames = solid_frames(4, 12, 16)
    for frame in frames:  # TorchRL's pixels are (H, W, C)
        recorder(TensorDict({"pixels": frame.permute(1, 2, 0)}, []))
    recorder.dump()
    path = tmp_path / "runs" / "cartpole" / "videos" / "episode_0.mp4"
    assert_frames_close(read_mp4(path), expected_rgb(frames))
    logger.close()


def test_used_by_torchrl_trainer_hooks(tmp_path: Path) -> None:
    """TorchRL's ``log_metrics`` convention and keyword calls work unchanged."""
    with CSVLogger("exp", log_dir=tmp_path) as lg:
        lg.log_metrics({"a": 1.0, "b": torch.tensor(2.0)}, step=3)
        lg.log_scalar(name="c", value=3.0, step=4)
        lg.log_video(name="v", video=solid_frames(2, 4, 4)[None], step=0, fps=8)
    assert (tmp_path / "exp" / "scalars" / "b.csv").read_text() == "step,value\n3,2.0\n"
    assert (tmp_path / "exp" / "videos" / "v_0.mp4").is_file()


def test_failed_video_does_not_use_up_a_step(tmp_path: Path) -> None:
    with CSVLogger("exp", log_dir=tmp_path) as lg:
        with pytest.raises(VideoError, match="float frame 0"):
            lg.log_video("v", torch.full((2, 3, 4, 4), 2.0))
        lg.log_video("v", solid_frames(2, 4, 4))
    assert [p.name for p in (tmp_path / "exp" / "videos").iterdir()] == ["v_0.mp4"]
