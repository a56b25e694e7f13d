"""The ``Logger`` contract, read back through every backend's real storage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import MemoryMappedTensor, TensorDict

from tests.loggers.logger_readback import (
    COLOURS,
    TOL,
    Backend,
    assert_frames_close,
    expected_rgb,
    solid_frames,
)
from trlrec.errors import (
    ClosedError,
    ConfigError,
    NotAStoreError,
    UnsafeNameError,
    UnsupportedDataError,
    UnsupportedOperationError,
)
from trlrec.loggers import Logger, is_logger


def _crop(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """Drop the (at most one pixel of) padding an mp4 adds to odd sizes."""
    assert frames.shape[1] - h in (0, 1), frames.shape
    assert frames.shape[2] - w in (0, 1), frames.shape
    return frames[:, :h, :w]


def test_scalars_read_back(backend: Backend) -> None:
    lg = backend.logger
    lg.log_scalar("train/reward", 1.5)
    lg.log_scalar("train/reward", torch.tensor(2.5))
    lg.log_scalar("train/reward", np.float32(-3.0), step=10)
    lg.log_scalar("train/reward", 4)  # after an explicit step the counter continues at 11
    lg.log_metrics({"loss": torch.tensor([0.25])}, step=3)
    backend.close()
    assert backend.scalars("train/reward") == [(0, 1.5), (1, 2.5), (10, -3.0), (11, 4.0)]
    assert backend.scalars("loss") == [(3, 0.25)]


def test_video_solid_colours_odd_size(backend: Backend) -> None:
    frames = solid_frames(5, 15, 21)
    backend.logger.log_video("episode", frames, step=0)
    backend.logger.log_video("episode", solid_frames(3, 16, 16)[None])  # (N=1, T, C, H, W)
    backend.close()
    got = _crop(backend.video("episode", 0), 15, 21)
    assert_frames_close(got, expected_rgb(frames))
    assert backend.video("episode", 1).shape == (3, 16, 16, 3)


def test_video_float_grey_and_rgba_inputs(backend: Backend) -> None:
    frames = solid_frames(4, 8, 10)
    backend.logger.log_video("float", frames.float() / 255, step=0)
    grey = solid_frames(3, 8, 8, channels=1)
    backend.logger.log_video("grey", grey, step=0)
    rgba = torch.cat([frames, torch.zeros(4, 1, 8, 10, dtype=torch.uint8)], dim=1)
    backend.logger.log_video("rgba", rgba.numpy(), step=0)
    backend.close()
    assert_frames_close(backend.video("float", 0), expected_rgb(frames))
    assert_frames_close(backend.video("grey", 0), expected_rgb(grey))
    assert_frames_close(backend.video("rgba", 0), expected_rgb(frames))


def test_video_grid_memmap_and_iterator(backend: Backend, tmp_path: Path) -> None:
    # N=3 videos of (T=2, 3, 16, 16) → a 2x2 grid of 32x32, the empty cell black
    grid = torch.stack([solid_frames(2, 16, 16)[[0, 1]], solid_frames(3, 16, 16)[[1, 2]]])
    grid = torch.cat([grid, solid_frames(5, 16, 16)[[3, 4]][None]])
    backend.logger.log_video("grid", grid, step=0)
    mm = MemoryMappedTensor.from_tensor(solid_frames(5, 10, 12), filename=tmp_path / "v.memmap")
    backend.logger.log_video("memmap", mm, step=0)
    backend.logger.log_video("iter", (f for f in solid_frames(4, 10, 12)), step=0)
    backend.close()
    got = backend.video("grid", 0)
    assert got.shape == (2, 32, 32, 3)
    for t in range(2):
        cells = [got[t, :16, :16], got[t, :16, 16:], got[t, 16:, :16], got[t, 16:, 16:]]
        want = [grid[0, t], grid[1, t], grid[2, t], torch.zeros(3, 16, 16, dtype=torch.uint8)]
        for cell, w in zip(cells, want, strict=True):
            # compare the inside of each tile: the codec may ring at the tile borders
            assert_frames_close(cell[None, 1:-1, 1:-1], expected_rgb(w[None])[:, 1:-1, 1:-1])
    assert_frames_close(backend.video("memmap", 0), expected_rgb(solid_frames(5, 10, 12)))
    assert_frames_close(backend.video("iter", 0), expected_rgb(solid_frames(4, 10, 12)))


def test_unsafe_names_stay_inside(backend: Backend, tmp_path: Path) -> None:
    frames = solid_frames(2, 4, 4)
    for name in ["../evil", "a/b", "/abs/path", "..\\x"]:
        backend.logger.log_scalar(name, 1.0)
        backend.logger.log_video(name, frames)
    backend.close()
    # "../evil" would escape videos/ or scalars/ into the experiment directory or above
    for p in tmp_path.rglob("*evil*"):
        assert {"videos", "scalars"} & {a.name for a in p.relative_to(tmp_path).parents}, p
    for p in tmp_path.rglob("*.mp4"):  # W&B links its media to trlrec's files
        assert p.resolve().is_relative_to(tmp_path.resolve()), p
    assert backend.scalars("../evil") == [(0, 1.0)]
    assert backend.video("a/b", 0).shape == (2, 4, 4, 3)


def test_bad_names_and_values_raise(backend: Backend) -> None:
    lg = backend.logger
    with pytest.raises(UnsafeNameError, match="NUL"):
        lg.log_scalar("a\x00b", 1.0)
    with pytest.raises(UnsafeNameError, match="only dots"):
        lg.log_video("..", solid_frames(1, 4, 4))
    with pytest.raises(UnsupportedDataError, match=r"scalar 'x' must be a real number.*\(3,\)"):
        lg.log_scalar("x", torch.ones(3))
    with pytest.raises(UnsupportedDataError, match="step of scalar 'x' must be an int"):
        lg.log_scalar("x", 1.0, step=1.5)
    with pytest.raises(UnsupportedDataError, match="hparams must be a dict"):
        lg.log_hparams([1, 2])
    with pytest.raises(NotAStoreError, match="is not a directory"):
        lg.log_trajectory("traj", "/nonexistent/dir")


def test_closed_logger_raises(backend: Backend, tmp_path: Path) -> None:
    with backend.logger as lg:
        lg.log_scalar("x", 1.0)
    assert lg.closed
    lg.close()  # idempotent
    with pytest.raises(ClosedError, match="log_scalar"):
        lg.log_scalar("x", 1.0)
    with pytest.raises(ClosedError, match="log_video"):
        lg.log_video("x", solid_frames(1, 4, 4))
    with pytest.raises(ClosedError, match="log_hparams"):
        lg.log_hparams({})
    with pytest.raises(ClosedError, match="log_trajectory"):
        lg.log_trajectory("x", tmp_path)
    with pytest.raises(ClosedError, match="log_str"):
        lg.log_str("x", "text")
    with pytest.raises(ClosedError, match="log_histogram"):
        lg.log_histogram("x", [1.0])
    with pytest.raises(ClosedError, match="log_metrics"):
        lg.log_metrics({"x": 1.0})
    assert not lg.is_alive
    lg.flush()  # a no-op once closed


def test_hparams_and_trajectory_accepted(backend: Backend, tmp_path: Path) -> None:
    lg = backend.logger
    lg.log_hparams({"lr": 1e-3, "net": {"depth": 2}, "name": "ppo"})
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    lg.log_trajectory("rollout", data)
    lg.log_trajectory("rollout", data, step=7)
    if lg.experiment_dir is not None and backend.kind != "memory":
        lines = (lg.experiment_dir / "trajectories.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [(r["name"], r["step"], r["path"]) for r in records] == [
            ("rollout", 0, str(data.resolve())),
            ("rollout", 7, str(data.resolve())),
        ]


def test_log_metrics_flattens_tensordict(backend: Backend) -> None:
    td = TensorDict({"a": torch.tensor(1.0), "b": {"c": torch.tensor(2.0)}}, [])
    out = backend.logger.log_metrics(td, step=5)
    backend.close()
    assert out == {"a": 1.0, "b/c": 2.0}
    assert backend.scalars("b/c") == [(5, 2.0)]


def test_is_a_logger(backend: Backend) -> None:
    from torchrl.record.loggers import Logger as TorchRLLogger

    assert isinstance(backend.logger, Logger)
    assert isinstance(backend.logger, TorchRLLogger)
    assert is_logger(backend.logger)
    assert "exp" in repr(backend.logger)


def test_direct_service_api(backend: Backend) -> None:
    lg = backend.logger
    assert lg.service_backend == "direct"
    assert lg.start() is lg
    assert lg.client() is lg
    assert lg.is_alive
    lg.shutdown()
    lg.shutdown()  # idempotent
    assert lg.closed
    assert not lg.is_alive
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        lg.start()


def test_histograms_read_back(backend: Backend) -> None:
    lg = backend.logger
    if backend.kind == "csv":  # TorchRL's CSV logger raises NotImplementedError too
        with pytest.raises(NotImplementedError, match="cannot log histograms"):
            lg.log_histogram("weights", torch.randn(10), step=0, bins=2)
        with pytest.raises(UnsupportedOperationError):
            lg.log_histogram("weights", torch.randn(10))
        return
    lg.log_histogram("weights", torch.randn(10), step=0, bins=2)
    lg.log_histogram("weights", np.arange(7.0))  # the counter continues at 1
    lg.log_histogram("weights", [0.5, 1.5, 2.5], step=5, bins=3)
    with pytest.raises(UnsupportedDataError, match="histogram 'w' got no values"):
        lg.log_histogram("w", [])
    with pytest.raises(UnsupportedDataError, match="histogram 'w' takes a tensor"):
        lg.log_histogram("w", ["a", "b"])
    backend.close()
    assert backend.histograms("weights") == [(0, 10), (1, 7), (5, 3)]


def test_texts_read_back(backend: Backend) -> None:
    lg = backend.logger
    lg.log_str("notes", "first")
    lg.log_str("notes", "second, with a comma", step=4)
    with pytest.raises(UnsupportedDataError, match="log_str 'notes' takes a str, got int"):
        lg.log_str("notes", 3)  # type: ignore[arg-type]
    backend.close()
    assert backend.texts("notes") == [(0, "first"), (4, "second, with a comma")]


def test_log_metrics_keys_sep(backend: Backend) -> None:
    td = TensorDict({"loss": {"actor": torch.tensor(0.5)}}, [])
    assert backend.logger.log_metrics(td, step=2, keys_sep=".") == {"loss.actor": 0.5}
    backend.close()
    assert backend.scalars("loss.actor") == [(2, 0.5)]


def test_state_dict_restores_the_default_steps(backend: Backend, tmp_path: Path) -> None:
    lg = backend.logger
    lg.log_scalar("x", 1.0)
    lg.log_scalar("x", 2.0)
    lg.log_video("v", solid_frames(2, 4, 4))
    state = lg.state_dict()
    assert state["exp_name"] == "exp"
    assert state["local"]["counters"]["scalar"] == {"x": 2}
    json.dumps(state)  # plain data: TorchRL's Checkpoint stores it without pickle
    lg.log_scalar("x", 3.0)  # step 2, then "restore" the counters to before it
    lg.load_state_dict(state)
    lg.log_scalar("x", 4.0)
    lg.log_video("v", solid_frames(2, 4, 4))
    with pytest.raises(ConfigError, match="'counters' must map a kind"):
        lg.load_state_dict({"local": {"counters": {"scalar": {"x": "two"}}}})
    backend.close()
    assert [s for s, _ in backend.scalars("x")] == [0, 1, 2, 2]
    assert backend.video("v", 1).shape == (2, 4, 4, 3)


def test_nan_scalar_is_kept(backend: Backend) -> None:
    backend.logger.log_scalar("nan", float("nan"))
    backend.close()
    ((step, value),) = backend.scalars("nan")
    assert step == 0
    assert math.isnan(value)


def test_colour_constants_are_distinct() -> None:
    # the solid-colour checks rely on colours further apart than the tolerance
    for i, a in enumerate(COLOURS):
        for b in COLOURS[i + 1 :]:
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) > 2 * TOL


# -- TorchRL interoperability: a TorchRL logger where trlrec expects one --------------------


class _TorchRLStyleLogger:
    """Built on demand: a ``torchrl.record.loggers.Logger`` subclass recording its calls."""

    @staticmethod
    def make() -> object:
        from torchrl.record.loggers import Logger as TorchRLLogger

        class Recording(TorchRLLogger):
            def __init__(self) -> None:
                self.calls: list[tuple] = []
                super().__init__(exp_name="torchrl", log_dir=None)

            def _create_experiment(self) -> None:
                return None

            def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
                self.calls.append(("scalar", name, value, step))

            def log_video(self, name: str, video: torch.Tensor, step: int | None = None, **kw):
                self.calls.append(("video", name, tuple(video.shape), step))

            def log_hparams(self, cfg: dict) -> None:
                self.calls.append(("hparams", cfg))

            def log_histogram(self, name: str, data: object, **kwargs: object) -> None:
                raise NotImplementedError

            def __repr__(self) -> str:
                return "Recording()"

        return Recording()


def test_torchrl_logger_subclass_is_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trlrec.loggers import experiment_dir_of, log_trajectory_to

    lg = _TorchRLStyleLogger.make()
    assert is_logger(lg)
    assert not isinstance(lg, Logger)
    assert experiment_dir_of(lg) is None
    with caplog.at_level("INFO", logger="trlrec.loggers"):
        log_trajectory_to(lg, "rollout", tmp_path, step=3)
    assert str(tmp_path.resolve()) in caplog.text


def test_torchrl_csv_logger_gets_trajectory_records(tmp_path: Path) -> None:
    from torchrl.record.loggers import CSVLogger as TorchRLCSVLogger

    from trlrec.loggers import experiment_dir_of, log_trajectory_to

    lg = TorchRLCSVLogger("exp", log_dir=str(tmp_path / "logs"))
    assert is_logger(lg)
    assert experiment_dir_of(lg) == tmp_path / "logs" / "exp"
    log_trajectory_to(lg, "rollout", tmp_path, step=2)
    (line,) = (tmp_path / "logs" / "exp" / "trajectories.jsonl").read_text().splitlines()
    assert json.loads(line)["step"] == 2


def test_torchrl_tensorboard_logger_dir(tmp_path: Path) -> None:
    from torchrl.record.loggers import TensorboardLogger as TorchRLTensorboardLogger

    from trlrec.loggers import experiment_dir_of

    lg = TorchRLTensorboardLogger("exp", log_dir=str(tmp_path))
    assert experiment_dir_of(lg) == tmp_path / "exp"
    lg.experiment.close()


def test_trlrec_logger_through_helpers(tmp_path: Path) -> None:
    from trlrec.loggers import MemoryLogger, experiment_dir_of, log_trajectory_to

    lg = MemoryLogger("m", log_dir=tmp_path)
    assert experiment_dir_of(lg) == tmp_path / "m"
    log_trajectory_to(lg, "rollout", tmp_path)
    assert lg.trajectories["rollout"] == [(0, tmp_path.resolve())]
    assert not is_logger(object())


def test_import_pulls_in_no_optional_backend() -> None:
    import subprocess
    import sys

    code = (
        "import sys, trlrec.loggers\n"
        "bad = [m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard', 'moviepy')"
        " if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert out.stdout.strip() == "[]"


def test_experiment_dir_of_a_wandb_style_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from trlrec.loggers import experiment_dir_of

    run = SimpleNamespace(dir=str(tmp_path / "run" / "files"))
    assert experiment_dir_of(SimpleNamespace(experiment=run)) == tmp_path / "run" / "trlrec"
    assert experiment_dir_of(SimpleNamespace(experiment=None)) is None
