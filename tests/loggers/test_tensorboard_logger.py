"""``TensorBoardLogger``: event files read back with TensorBoard's ``EventAccumulator``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.loggers.logger_readback import assert_frames_close, expected_rgb, read_gif, solid_frames
from trlrec.errors import MissingDependencyError
from trlrec.loggers import GifWriter, TensorBoardLogger, TensorboardLogger, Video


def _accumulator(directory: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(
        str(directory), size_guidance={ea.IMAGES: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 0}
    )
    acc.Reload()
    return acc


def test_event_file_contents(tmp_path: Path) -> None:
    data = tmp_path / "dataset"
    data.mkdir()
    with TensorBoardLogger("exp", log_dir=tmp_path / "tb") as lg:
        assert lg.experiment.get_logdir() == str(tmp_path / "tb" / "exp")
        assert lg.log_dir == tmp_path / "tb"  # as given (TorchRL rewrites it to the run dir)
        lg.log_scalar("train/reward", 1.0, step=2)
        lg.log_histogram("weights", torch.arange(6.0), step=3, bins=3)
        lg.log_video("episode", solid_frames(6, 20, 30), step=4, fps=10)
        lg.log_hparams({"lr": 0.001, "net": {"depth": 3}, "act": torch.nn.ReLU})
        lg.log_trajectory("rollout", data, step=4)
    acc = _accumulator(tmp_path / "tb" / "exp")
    tags = acc.Tags()
    assert "train/reward" in tags["scalars"]
    (hist,) = acc.Histograms("weights")
    assert (hist.step, hist.histogram_value.num, hist.histogram_value.max) == (3, 6, 5.0)
    ((event,),) = [acc.Images("episode")]
    assert (event.step, event.width, event.height) == (4, 30, 20)
    frames = read_gif(event.encoded_image_string)
    assert frames.shape == (6, 20, 30, 3)
    assert_frames_close(frames, expected_rgb(solid_frames(6, 20, 30)))
    # hparams plugin data and a readable text copy
    hp = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hp)
    assert b"net/depth" in hp["_hparams_/session_start_info"]
    (text,) = acc.Tensors("hparams/text_summary")
    config = text.tensor_proto.string_val[0].decode()
    assert json.loads(config.strip("`\n")) == {
        "lr": 0.001,
        "net": {"depth": 3},
        "act": str(torch.nn.ReLU),
    }
    (traj,) = acc.Tensors("trajectories/rollout/text_summary")
    assert traj.step == 4
    assert traj.tensor_proto.string_val[0].decode() == str(data.resolve())
    assert (tmp_path / "tb" / "exp" / "trajectories.jsonl").is_file()


def test_gif_frame_delay_follows_fps(tmp_path: Path) -> None:
    import imageio.v3 as iio

    with GifWriter(tmp_path / "a.gif", 8, 6, fps=20) as w:
        w.write_video(Video.of(solid_frames(3, 6, 8)))
    meta = iio.immeta(tmp_path / "a.gif")
    assert meta["duration"] == 50  # ms per frame
    assert meta["loop"] == 0


def test_torchrl_spelling_is_an_alias() -> None:
    assert TensorboardLogger is TensorBoardLogger


def test_flush_makes_events_visible(tmp_path: Path) -> None:
    lg = TensorBoardLogger("exp", log_dir=tmp_path)
    lg.log_scalar("x", 1.0)
    lg.flush()
    assert [e.value for e in _accumulator(tmp_path / "exp").Scalars("x")] == [1.0]
    lg.close()
    lg.flush()  # no-op once closed


def test_missing_tensorboard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.delattr(torch.utils, "tensorboard", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'trlrec\[tensorboard\]'"):
        TensorBoardLogger("exp", log_dir=tmp_path)
    assert not (tmp_path / "exp").exists()
