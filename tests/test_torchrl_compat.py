"""trlrec through TorchRL's public API, as TorchRL's own trainers, services and tests use it.

Each test drives trlrec's classes with TorchRL code (trainer factories, ``Checkpoint``,
``ProcessLogger``, the Ray logger service, ``Evaluator``, ``check_env_specs``, TorchRL's
``VideoRecorder``) or hands TorchRL's loggers to trlrec's recorders, and reads back what
was stored through the real format.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs import GymEnv, check_env_specs
from torchrl.record.loggers import CSVLogger as TorchRLCSVLogger
from torchrl.record.loggers import Logger as TorchRLLogger

from tests.conftest import StubEnv
from tests.loggers.conftest import BACKENDS, make_backend, wandb_env  # noqa: F401 - fixture
from tests.loggers.logger_readback import (
    Backend,
    assert_frames_close,
    expected_rgb,
    read_mp4,
    solid_frames,
)
from trlrec import PixelRenderTransform, TensorDictRecorder, TrajectoryReader, VideoRecorder
from trlrec.loggers import CSVLogger, Logger, MemoryLogger


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every trlrec logger in turn (W&B offline under ``tmp_path``)."""
    if request.param == "wandb":
        request.getfixturevalue("wandb_env")
    b = make_backend(request.param, tmp_path)
    yield b
    b.logger.close()


def stub_pixels_env(length: int = 4) -> StubEnv:
    torch.manual_seed(0)
    return StubEnv(episode_lengths=(length,), pixels=(8, 12, 3))


def hwc(video: torch.Tensor) -> torch.Tensor:
    """A ``(1, T, C, H, W)`` video as ``(T, H, W, C)``."""
    return video[0].permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------- trainers


def _ppo_parts(frames: int):
    from torchrl.collectors import Collector
    from torchrl.modules import OneHotCategorical, ProbabilisticActor, ValueOperator
    from torchrl.objectives import ClipPPOLoss

    env = GymEnv("CartPole-v1")
    torch.manual_seed(0)
    module = TensorDictModule(nn.Linear(4, 2), in_keys=["observation"], out_keys=["logits"])
    actor = ProbabilisticActor(
        module,
        in_keys=["logits"],
        spec=env.action_spec,
        distribution_class=OneHotCategorical,
        return_log_prob=True,
    )
    critic = ValueOperator(nn.Linear(4, 1), in_keys=["observation"])
    loss = ClipPPOLoss(actor, critic)
    collector = Collector(env, actor, frames_per_batch=frames, total_frames=2 * frames)
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
    return collector, loss, optimizer


def test_trainer_factories_take_every_trlrec_logger(backend: Backend) -> None:
    from torchrl.trainers.algorithms.configs.trainers import _make_ppo_trainer
    from torchrl.trainers.trainers import Logger as TrainerLogger

    assert isinstance(backend.logger, TrainerLogger)  # the check every factory makes
    collector, loss, optimizer = _ppo_parts(16)
    with pytest.raises(ValueError, match="logger must be a Logger"):  # the check bites
        _make_ppo_trainer(
            collector=collector, total_frames=32, loss_module=loss, optimizer=optimizer,
            logger=object(), progress_bar=False,
        )  # fmt: skip
    trainer = _make_ppo_trainer(
        collector=collector, total_frames=32, loss_module=loss, optimizer=optimizer,
        logger=backend.logger, progress_bar=False, log_interval=1,
    )  # fmt: skip
    assert trainer.logger is backend.logger
    collector.shutdown()


def test_a_trainer_logs_through_a_trlrec_logger(tmp_path: Path) -> None:
    from torchrl.trainers.algorithms.configs.trainers import _make_ppo_trainer

    logger = CSVLogger("ppo", log_dir=tmp_path)
    collector, loss, optimizer = _ppo_parts(16)
    trainer = _make_ppo_trainer(
        collector=collector, total_frames=32, loss_module=loss, optimizer=optimizer,
        logger=logger, progress_bar=False, log_interval=1,
    )  # fmt: skip
    trainer.train()
    logger.close()
    # the trainer's hooks log at the collected frames, one row per batch
    assert (logger.scalars_dir / "r_total.csv").read_text() == "16,16.0\n32,16.0\n"
    assert (logger.scalars_dir / "optim_steps.csv").read_text() == "16,4.0\n32,8.0\n"
    for name in ("loss_objective", "loss_critic", "entropy"):
        steps = [int(row.split(",")[0]) for row in (logger.scalars_dir / f"{name}.csv").open()]
        assert steps == [16, 32]


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_saves_and_restores_a_trlrec_logger(backend: Backend, tmp_path: Path) -> None:
    from torchrl.checkpoint import Checkpoint

    lg = backend.logger
    lg.log_scalar("train/loss", 1.0)
    lg.log_scalar("train/loss", 2.0)
    path = Checkpoint(logger=lg).save(tmp_path / "ckpt")
    lg.log_scalar("train/loss", 3.0)  # step 2, then back to the checkpoint
    result = Checkpoint(logger=lg).load(path)
    assert result.loaded == {"logger"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["components"]["logger"]["adapter"] == "torchrl.state_dict"
    lg.log_scalar("train/loss", 4.0)  # continues at step 2
    backend.close()
    assert backend.scalars("train/loss") == [(0, 1.0), (1, 2.0), (2, 3.0), (2, 4.0)]


def test_checkpoint_restores_into_a_new_logger(tmp_path: Path) -> None:
    from torchrl.checkpoint import Checkpoint

    first = CSVLogger("run", log_dir=tmp_path)
    first.log_scalar("x", 1.0)
    first.log_hparams({"lr": 0.1})
    path = Checkpoint(logger=first).save(tmp_path / "ckpt")
    first.close()
    second = CSVLogger("run", log_dir=tmp_path)  # a resumed run
    Checkpoint(logger=second).load(path)
    second.log_scalar("x", 2.0)
    second.log_hparams({"gamma": 0.9})
    second.close()
    assert (second.scalars_dir / "x.csv").read_text() == "0,1.0\n1,2.0\n"
    assert (second.texts_dir / "hparams1.txt").read_text() == "gamma: 0.9"  # not overwritten


# ----------------------------------------------------------------------------- logger services


def test_process_logger_runs_a_trlrec_logger_and_takes_recorder_videos(tmp_path: Path) -> None:
    """The pattern TorchRL's Evaluator documents: a recorder in front of a logger service."""
    from torchrl.record.loggers import ProcessLogger

    # TorchRL's default "spawn" context (~10 s to start: a fresh interpreter imports torch);
    # "fork" would be quicker but is unsafe in a test process that already runs threads
    owner = CSVLogger("run", log_dir=tmp_path, video_format="pt", service_backend="process")
    assert isinstance(owner, ProcessLogger)
    assert isinstance(owner, Logger)  # TorchRL's metaclass sees the class it runs
    assert owner.service_backend == "process"
    try:
        client = owner.client()
        env = stub_pixels_env(length=3)
        env = env.append_transform(VideoRecorder(client, tag="eval/video"))
        env = env.append_transform(TensorDictRecorder(logger=client, tag="transitions"))
        td = env.rollout(3)
        env.transform.dump()  # a memory map of the spool would fail here (EBADF)
        client.log_scalar("eval/reward", 1.5, step=7)
        env.close()  # nothing left to send, nothing raised again
    finally:
        owner.shutdown()
    assert not owner.is_alive
    exp = tmp_path / "run"
    assert (exp / "scalars" / "eval" / "reward.csv").read_text() == "7,1.5\n"
    # logged at the env frame count (3 steps), as TorchRL's trainers count
    video = torch.load(exp / "videos" / "eval" / "video_3.pt", weights_only=True)
    frames = torch.cat([td["pixels"][:1], td["next", "pixels"]])
    assert torch.equal(hwc(video), frames)
    # the transitions went beside the service's experiment, their statistics to it
    assert TrajectoryReader(exp / "transitions").num_steps == 3
    assert (exp / "scalars" / "transitions" / "episode_length.csv").read_text() == "3,3.0\n"
    (record,) = (exp / "trajectories.jsonl").read_text().splitlines()
    assert json.loads(record)["path"] == str((exp / "transitions").resolve())


def test_ray_logger_service_runs_a_trlrec_logger(tmp_path: Path) -> None:
    import ray  # trlrec[ray], in dev
    from torchrl.record.loggers import RayLogger

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        owner = CSVLogger("run", log_dir=tmp_path, service_backend="ray")
        assert isinstance(owner, RayLogger)
        assert isinstance(owner, Logger)
        client = owner.client()
        client.log_metrics({"loss": torch.tensor(0.5)}, step=2)
        vr = VideoRecorder(client, tag="clip")
        frames = torch.randint(0, 256, (4, 8, 12, 3), dtype=torch.uint8)
        vr.extend(TensorDict(pixels=frames, batch_size=[4]))
        vr.dump()
        vr.close()
        owner.shutdown()
    finally:
        ray.shutdown()
    assert (tmp_path / "run" / "scalars" / "loss.csv").read_text() == "2,0.5\n"
    (clip,) = (tmp_path / "run" / "videos").glob("clip_*.mp4")  # one video, at its frame
    assert read_mp4(clip).shape == (4, 8, 12, 3)


# ----------------------------------------------------------------------------- evaluator


def test_evaluator_dumps_a_trlrec_video_recorder(tmp_path: Path) -> None:
    from torchrl.collectors import Evaluator

    logger = MemoryLogger("eval", log_dir=tmp_path)
    env = stub_pixels_env(length=4).append_transform(VideoRecorder(logger, tag="eval/video"))
    policy = env.rand_action
    evaluator = Evaluator(env, policy, num_trajectories=1, max_steps=10, dump_video=True)
    try:
        metrics = evaluator.evaluate(step=100)
        evaluator.evaluate(step=200)
    finally:
        evaluator.shutdown()
    assert metrics["eval/episode_length"] == 4
    videos = logger.videos["eval/video"]
    assert [v.step for v in videos] == [100, 200]  # Evaluator's dump(step=...)
    assert all(v.frames.shape[1:] == (3, 8, 12) for v in videos)
    assert all(v.frames.shape[0] >= 5 for v in videos)  # reset + 4 steps at least


# ----------------------------------------------------------------------------- env specs


@pytest.mark.parametrize("transform", ["tensordict_recorder", "video_recorder", "pixel_render"])
def test_check_env_specs_with_each_trlrec_transform(transform: str, tmp_path: Path) -> None:
    env = GymEnv("CartPole-v1", render_mode="rgb_array")
    if transform == "tensordict_recorder":
        t = TensorDictRecorder(tmp_path / "store")
    elif transform == "video_recorder":
        env = env.append_transform(PixelRenderTransform())
        t = VideoRecorder(MemoryLogger("exp"), tag="v")
    else:
        t = PixelRenderTransform()
    env = env.append_transform(t)
    check_env_specs(env)
    if transform == "pixel_render":
        assert env.observation_spec["pixels"].shape == (400, 600, 3)
    env.close()


# ----------------------------------------------------------------------------- both ways


def test_torchrl_loggers_in_trlrec_recorders(tmp_path: Path) -> None:
    logger = TorchRLCSVLogger("exp", log_dir=str(tmp_path), video_format="pt")
    rec = TensorDictRecorder(logger=logger, tag="transitions")
    env = stub_pixels_env(length=3)
    env = env.append_transform(VideoRecorder(logger, tag="episode")).append_transform(rec)
    td = env.rollout(3)
    env.transform.dump()
    env.close()
    exp = tmp_path / "exp"
    video = torch.load(exp / "videos" / "episode_3.pt", weights_only=True)  # at frame 3
    assert torch.equal(hwc(video), torch.cat([td["pixels"][:1], td["next", "pixels"]]))
    assert (exp / "scalars" / "transitions" / "episode_length.csv").read_text() == "3,3.0\n"
    assert TrajectoryReader(exp / "transitions").num_steps == 3


def test_trlrec_loggers_in_torchrl_video_recorder(backend: Backend) -> None:
    from torchrl.record import VideoRecorder as TorchRLVideoRecorder

    recorder = TorchRLVideoRecorder(backend.logger, tag="episode", skip=1)
    frames = solid_frames(5, 12, 16)
    for frame in frames:  # TorchRL's pixels are (H, W, C)
        recorder(TensorDict({"pixels": frame.permute(1, 2, 0)}, []))
    recorder.dump()
    backend.close()
    assert_frames_close(backend.video("episode", 0), expected_rgb(frames))


def test_a_torchrl_script_runs_after_the_import_swap(tmp_path: Path) -> None:
    """TorchRL's documented recorder pattern, with only the imports changed to trlrec."""
    # was: from torchrl.record import CSVLogger, PixelRenderTransform, VideoRecorder
    from trlrec import CSVLogger, PixelRenderTransform, VideoRecorder

    # -- the script, as written against torchrl.record --
    logger = CSVLogger("dummy", log_dir=str(tmp_path), video_format="mp4")
    env = GymEnv("CartPole-v1", render_mode="rgb_array")
    env = env.append_transform(PixelRenderTransform())
    env = env.append_transform(VideoRecorder(logger=logger, tag="pixels_record"))
    check_env_specs(env)
    env.rollout(3)
    env.transform.dump()
    env.close()
    logger.log_hparams({"lr": 1e-3})
    logger.log_metrics({"reward": torch.tensor(1.0)}, step=0)
    logger.close()
    # -- what TorchRL's own test of that pattern checks --
    # TorchRL's test looks for pixels_record_0.mp4: trlrec logs at the env frame count
    (video,) = (tmp_path / "dummy" / "videos").glob("pixels_record_*.mp4")
    assert read_mp4(video).shape[1:] == (400, 600, 3)
    assert (tmp_path / "dummy" / "texts" / "hparams0.txt").read_text() == "lr: 0.001"
    assert isinstance(logger, TorchRLLogger)
