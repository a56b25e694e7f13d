"""``CSVLogger``: its file layout (TorchRL's) and its use by TorchRL code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensordict import MemoryMappedTensor, TensorDict

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
        assert lg.experiment.log_dir == str(lg.experiment_dir)  # TorchRL's CSVExperiment
        lg.log_scalar("reward", 1.0)
        lg.log_scalar("reward", 2.0, step=5)
        lg.log_scalar("eval/reward", 3.5, step=1)
        lg.log_video("episode", solid_frames(3, 8, 8), step=0)
        lg.log_video("episode", solid_frames(2, 8, 8))  # counter continues after step 0
        lg.log_video("episode", solid_frames(2, 8, 8), step=7, fps=25)
        lg.log_video("eval/episode", solid_frames(2, 8, 8), step=3)
        lg.log_hparams({"lr": 0.1})
        lg.log_hparams({"gamma": 0.99, "env": {"id": "CartPole-v1"}})
    exp = tmp_path / "runs" / "cartpole"
    # TorchRL's layout: no header, "/" in a name is a folder
    assert (exp / "scalars" / "reward.csv").read_text() == "0,1.0\n5,2.0\n"
    assert (exp / "scalars" / "eval" / "reward.csv").read_text() == "1,3.5\n"
    videos = sorted(p.relative_to(exp / "videos").as_posix() for p in exp.rglob("*.mp4"))
    assert videos == ["episode_0.mp4", "episode_1.mp4", "episode_7.mp4", "eval/episode_3.mp4"]
    assert mp4_fps(exp / "videos" / "episode_0.mp4") == pytest.approx(10)
    assert mp4_fps(exp / "videos" / "episode_7.mp4") == pytest.approx(25)
    # TorchRL's texts/hparams<n>.txt, one per call, plus trlrec's merged JSON
    assert (exp / "texts" / "hparams0.txt").read_text() == "lr: 0.1"
    assert (exp / "texts" / "hparams1.txt").read_text() == (
        "env: {'id': 'CartPole-v1'}\ngamma: 0.99"
    )
    hparams = json.loads((exp / "hparams.json").read_text())
    assert hparams == {"lr": 0.1, "gamma": 0.99, "env": {"id": "CartPole-v1"}}


def test_appends_across_loggers(tmp_path: Path) -> None:
    for value in (1.0, 2.0):
        with CSVLogger("exp", log_dir=tmp_path) as lg:
            lg.log_scalar("x", value)
    assert (tmp_path / "exp" / "scalars" / "x.csv").read_text() == "0,1.0\n0,2.0\n"


def test_pt_video_loads_with_weights_only(tmp_path: Path) -> None:
    video = torch.randint(0, 256, (1, 5, 1, 6, 8), dtype=torch.uint8)
    mm = MemoryMappedTensor.from_tensor(solid_frames(3, 4, 4), filename=tmp_path / "v.mm")
    with CSVLogger("exp", log_dir=tmp_path, video_format="pt") as lg:
        lg.log_video("grey", video)
        lg.log_video("memmap", mm, step=2)
        lg.log_video("list", list(solid_frames(2, 4, 4)), step=0)
        lg.log_video("view", torch.cat([video, video], dim=1)[:, 5:], step=0)
    videos = tmp_path / "exp" / "videos"
    got = torch.load(videos / "grey_0.pt", weights_only=True)
    assert torch.equal(got, video)  # the tensor as given: layout and dtype kept
    got = torch.load(videos / "memmap_2.pt", weights_only=True)
    assert type(got) is torch.Tensor
    assert torch.equal(got, solid_frames(3, 4, 4))
    assert torch.equal(torch.load(videos / "list_0.pt", weights_only=True), solid_frames(2, 4, 4))
    view = torch.load(videos / "view_0.pt", weights_only=True)
    assert torch.equal(view, video)
    assert view.untyped_storage().nbytes() == video.numel()  # only the view was saved
    assert not list(videos.glob(".*"))  # no temporary file left


def test_memmap_video_with_shape_sidecar(tmp_path: Path) -> None:
    video = torch.rand(2, 3, 3, 4, 5)
    with CSVLogger("exp", log_dir=tmp_path, video_format="memmap") as lg:
        lg.log_video("v", video, step=1)
    path = tmp_path / "exp" / "videos" / "v_1.memmap"
    meta = json.loads(path.with_name("v_1.memmap.json").read_text())
    assert meta == {"shape": [2, 3, 3, 4, 5], "dtype": "float32"}
    got = MemoryMappedTensor.from_filename(path, dtype=torch.float32, shape=meta["shape"])
    assert torch.equal(got, video)  # TorchRL's reading code works on it


def test_mp4_encoder_options_as_torchrl(tmp_path: Path) -> None:
    frames = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    with CSVLogger("exp", log_dir=tmp_path) as lg:
        lg.log_video("q", frames, step=0, options={"crf": "51", "preset": "medium"})
        lg.log_video("q", frames, step=1, options={"crf": 0})
    small, lossless = (tmp_path / "exp" / "videos" / f"q_{i}.mp4" for i in (0, 1))
    assert small.stat().st_size < lossless.stat().st_size


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


def test_unknown_video_format_refused(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"video_format must be one of .*got 'gif'"):
        CSVLogger("exp", log_dir=tmp_path, video_format="gif")  # type: ignore[arg-type]


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
    assert (tmp_path / "exp" / "scalars" / "b.csv").read_text() == "3,2.0\n"
    assert (tmp_path / "exp" / "videos" / "v_0.mp4").is_file()


def test_failed_video_does_not_use_up_a_step(tmp_path: Path) -> None:
    with CSVLogger("exp", log_dir=tmp_path) as lg:
        with pytest.raises(VideoError, match="float frame 0"):
            lg.log_video("v", torch.full((2, 3, 4, 4), 2.0))
        lg.log_video("v", solid_frames(2, 4, 4))
    assert [p.name for p in (tmp_path / "exp" / "videos").iterdir()] == ["v_0.mp4"]
