"""``MemoryLogger``: everything kept in Python objects."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.loggers.logger_readback import solid_frames
from trlrec.loggers import LoggedVideo, MemoryLogger, experiment_dir_of


def test_keeps_everything() -> None:
    lg = MemoryLogger(video_fps=15)
    lg.log_scalar("r", 1)
    lg.log_scalar("r", 2.5, step=4)
    frames = solid_frames(3, 4, 6)
    lg.log_video("v", frames)
    lg.log_video("v", frames.float() / 255, step=9, fps=60)
    lg.log_hparams({"a": 1})
    lg.log_hparams({"b": {"c": 2}})
    lg.log_trajectory("t", Path.cwd())
    assert lg.scalars == {"r": [(0, 1.0), (4, 2.5)]}
    first, second = lg.videos["v"]
    assert isinstance(first, LoggedVideo)
    assert (first.step, first.fps, second.step, second.fps) == (0, 15.0, 9, 60.0)
    torch.testing.assert_close(first.frames, frames)
    torch.testing.assert_close(second.frames, frames)
    assert lg.hparams == {"a": 1, "b": {"c": 2}}
    assert lg.trajectories == {"t": [(0, Path.cwd().resolve())]}
    lg.close()
    assert lg.scalars["r"]  # still readable after close


def test_grid_is_tiled() -> None:
    lg = MemoryLogger()
    lg.log_video("grid", torch.zeros(4, 2, 3, 5, 7, dtype=torch.uint8))
    assert lg.videos["grid"][0].frames.shape == (2, 3, 10, 14)


def test_experiment_dir_only_with_log_dir(tmp_path: Path) -> None:
    assert MemoryLogger().experiment_dir is None
    assert experiment_dir_of(MemoryLogger()) is None
    lg = MemoryLogger("run", log_dir=tmp_path)
    assert lg.experiment_dir == tmp_path / "run"
    assert not (tmp_path / "run").exists()  # nothing is written by the logger itself
