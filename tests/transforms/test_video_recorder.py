from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from tensordict import NonTensorData, TensorDict

from trlrec import VideoRecorder
from trlrec.errors import ClosedError, VideoError
from trlrec.transforms.triggers import Every

TOL = 10  # H.264 tolerance on solid colours, per channel
COLOURS = [(200, 30, 40), (20, 180, 60), (40, 60, 220), (230, 230, 230), (10, 10, 10)]
REPO = Path(__file__).resolve().parents[2]


class ListLogger:
    """A duck-typed logger keeping each video as an owned ``(T, C, H, W)`` tensor."""

    def __init__(self, experiment_dir: Path | None = None) -> None:
        self.experiment_dir = experiment_dir
        self.videos: list[SimpleNamespace] = []
        self.fail = False

    def log_video(self, name: str, video: torch.Tensor, step: int | None = None, **kwargs: Any):
        if self.fail:
            raise OSError("logger down")
        assert video.dtype == torch.uint8
        assert video.ndim == 5
        assert video.shape[0] == 1
        self.videos.append(
            SimpleNamespace(name=name, frames=video[0].clone(), step=step, kw=kwargs)
        )

    def hwc(self, i: int = 0) -> torch.Tensor:
        return self.videos[i].frames.permute(0, 2, 3, 1)

    def names(self) -> list[tuple[str, int, int]]:
        return [(v.name, v.step, v.frames.shape[0]) for v in self.videos]


def solid(n: int, h: int = 16, w: int = 24) -> torch.Tensor:
    """``(n, h, w, 3)`` uint8, frame ``i`` filled with ``COLOURS[i % 5]``."""
    return torch.stack(
        [torch.tensor(COLOURS[i % 5], dtype=torch.uint8).expand(h, w, 3) for i in range(n)]
    )


def read_mp4(path: Path) -> np.ndarray:
    gen = imageio_ffmpeg.read_frames(str(path))
    w, h = next(gen)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


def assert_solid_sequence(frames: np.ndarray, n: int) -> None:
    assert frames.shape[0] == n
    for i, frame in enumerate(frames):
        err = np.abs(frame.astype(int) - np.array(COLOURS[i % 5])).max()
        assert err <= TOL, (i, err)


def rollout_frames(td: TensorDict, key: str = "pixels") -> torch.Tensor:
    """What a recorder in the stack sees in a rollout(break_when_any_done=False) of one env."""
    out = [td[key][0]]
    for t in range(td.shape[-1]):
        out.append(td["next", key][t])
        if td["next", "done"][t].all() and t + 1 < td.shape[-1]:
            out.append(td[key][t + 1])
    return torch.stack(out)


@pytest.fixture
def logger(tmp_path: Path) -> ListLogger:
    return ListLogger(tmp_path / "exp")


# ----------------------------------------------------------------------------- transform stack


def test_transform_stack_records_every_frame_in_order(stub_env_cls, logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "ep")
    env = stub_env_cls(episode_lengths=(5,), pixels=(8, 6, 3)).append_transform(vr)
    td = env.rollout(12, break_when_any_done=False)
    vr.dump()
    assert logger.names() == [("ep", 12, 15)]  # at env frame 12; 3 resets + 12 steps, skip=1
    assert torch.equal(logger.hwc(), rollout_frames(td))
    assert vr.spool_dir == logger.experiment_dir / "video_spool"
    assert not list(vr.spool_dir.glob("*.frames"))  # sent, then deleted
    env.rollout(3)
    env.transform.dump(suffix="eval")
    assert logger.names()[-1] == ("ep_eval", 15, 4)


def test_csv_logger_mp4_decodes(tmp_path: Path) -> None:
    from trlrec.loggers import CSVLogger

    lg = CSVLogger("exp", log_dir=tmp_path)
    vr = VideoRecorder(lg, "solid", fps=10)
    vr.extend(TensorDict(pixels=solid(7), batch_size=[7]))
    vr.dump()
    vr.extend(TensorDict(pixels=solid(3), batch_size=[3]))
    vr.close()
    lg.close()
    first = read_mp4(tmp_path / "exp" / "videos" / "solid_7.mp4")  # <tag>_<env frames>
    assert first.shape == (7, 16, 24, 3)
    assert_solid_sequence(first, 7)
    assert_solid_sequence(read_mp4(tmp_path / "exp" / "videos" / "solid_10.mp4"), 3)


def test_tensorboard_logger_event_has_video(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing import event_accumulator as ea

    from trlrec.loggers import TensorBoardLogger

    lg = TensorBoardLogger("exp", log_dir=tmp_path)
    vr = VideoRecorder(lg, "tbvid")
    vr.extend(TensorDict(pixels=solid(5), batch_size=[5]))
    vr.close()
    lg.close()
    acc = ea.EventAccumulator(str(lg.experiment_dir), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    (event,) = acc.Images("tbvid")
    assert (event.height, event.width) == (16, 24)
    assert event.encoded_image_string[:6] in (b"GIF89a", b"GIF87a")


def test_wandb_offline_run_holds_mp4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        "WANDB_DISABLE_GIT": "true",
    }.items():
        monkeypatch.setenv(var, value)
    from trlrec.loggers import WandbLogger

    lg = WandbLogger("exp", offline=True, save_dir=tmp_path / "wb")
    vr = VideoRecorder(lg, "wbvid")
    vr.extend(TensorDict(pixels=solid(6), batch_size=[6]))
    vr.close()
    run_dir = Path(lg.experiment.dir)
    lg.close()
    (mp4,) = run_dir.rglob("*.mp4")
    assert_solid_sequence(read_mp4(mp4), 6)


def test_torchrl_logger_object_works(tmp_path: Path) -> None:
    from tensordict import MemoryMappedTensor
    from torchrl.record.loggers.csv import CSVLogger as TorchRLCSVLogger

    lg = TorchRLCSVLogger("exp", log_dir=str(tmp_path), video_format="memmap")
    vr = VideoRecorder(lg, "trl")
    frames = solid(4)
    vr.extend(TensorDict(pixels=frames, batch_size=[4]))
    vr.dump()
    assert vr.spool_dir == tmp_path / "exp" / "video_spool"
    path = tmp_path / "exp" / "videos" / "trl_4.memmap"
    got = MemoryMappedTensor.from_filename(path, dtype=torch.uint8, shape=(1, 4, 3, 16, 24))
    assert torch.equal(got[0].permute(0, 2, 3, 1), frames)


# ----------------------------------------------------------------------------- layouts


def _layouts() -> list[tuple[str, Any, torch.Tensor]]:
    rgb = torch.randint(0, 256, (4, 6, 8, 3), dtype=torch.uint8)
    grey = rgb[..., :1]
    rgba = torch.cat([rgb, torch.full_like(grey, 7)], -1)
    chw = rgb.permute(0, 3, 1, 2).contiguous()
    as_float = rgb.float() / 255
    return [
        ("hwc_uint8", rgb, rgb),
        ("chw_uint8", chw, rgb),
        ("grey_hw", grey[..., 0], grey.expand(-1, -1, -1, 3)),
        ("grey_hwc", grey, grey.expand(-1, -1, -1, 3)),
        ("grey_chw", grey.permute(0, 3, 1, 2), grey.expand(-1, -1, -1, 3)),
        ("rgba_hwc", rgba, rgb),
        ("rgba_chw", rgba.permute(0, 3, 1, 2), rgb),
        ("float32_hwc", as_float, rgb),
        ("float64_chw", as_float.double().permute(0, 3, 1, 2), rgb),
        ("float16_hwc", as_float.half(), None),
        ("int64_hwc", rgb.long(), rgb),
        ("numpy_hwc", rgb.numpy(), rgb),
        ("noncontiguous", rgb.transpose(1, 2).contiguous().transpose(1, 2), rgb),
    ]


@pytest.mark.parametrize(("name", "frames", "want"), _layouts(), ids=[x[0] for x in _layouts()])
def test_layouts_step_by_step(name: str, frames: Any, want: torch.Tensor | None, logger) -> None:
    vr = VideoRecorder(logger, name)
    for t in range(4):
        frame = frames[t]
        td = TensorDict(batch_size=[])
        if isinstance(frame, np.ndarray):
            td.set_non_tensor("pixels", frame)
        else:
            td["pixels"] = frame
        vr(td)
    vr.dump()
    got = logger.hwc()
    assert got.shape == (4, 6, 8, 3)
    if want is None:  # float16 rounding: within one level
        want = torch.as_tensor(frames).float().mul(255).round()
        assert (got.float() - want).abs().max() <= 1
    else:
        assert torch.equal(got, want)


def test_float_frames_are_scaled_not_black(logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "f")
    vr.extend(TensorDict(pixels=torch.full((3, 4, 4, 3), 0.5), batch_size=[3]))
    vr.dump()
    assert (logger.hwc() == 128).all()


def test_non_tensor_stack_and_numpy_batches(logger: ListLogger) -> None:
    frames = solid(3, 4, 4)
    rows = []
    for f in frames:
        td = TensorDict(batch_size=[])
        td.set_non_tensor("pixels", f.numpy())
        rows.append(td)
    vr = VideoRecorder(logger, "nts")
    vr.extend(torch.stack(rows))
    vr.dump()
    assert torch.equal(logger.hwc(), frames)
    vr(TensorDict(pixels=NonTensorData(frames[0].numpy()), batch_size=[]))
    vr.dump()
    assert torch.equal(logger.hwc(1), frames[:1])


def test_center_crop_without_torchvision(logger: ListLogger) -> None:
    frame = torch.arange(10 * 12).reshape(10, 12, 1).expand(10, 12, 3).to(torch.uint8)
    vr = VideoRecorder(logger, "crop", center_crop=4)
    vr(TensorDict(pixels=frame, batch_size=[]))
    VideoRecorder(logger, "rect", center_crop=(2, 20))(TensorDict(pixels=frame, batch_size=[]))
    vr.dump()
    assert torch.equal(logger.hwc()[0], frame[3:7, 4:8])


# ----------------------------------------------------------------------------- batched envs


def test_make_grid_tiles_sub_envs(stub_env_cls, logger: ListLogger) -> None:
    env = stub_env_cls(episode_lengths=(3, 4, 5), batch_size=(3,), pixels=(4, 6, 3))
    vr = VideoRecorder(logger, "grid")
    env = env.append_transform(vr)
    td = env.rollout(6, break_when_any_done=False)
    vr.dump()
    ((name, _step, count),) = logger.names()
    assert (name, count) == ("grid", 7)  # the first reset + 6 steps (partial resets skipped)
    video = logger.hwc()
    assert video.shape == (7, 8, 12, 3)  # 2x2 grid, one blank cell
    for b, (r, c) in enumerate([(0, 0), (0, 1), (1, 0)]):
        tile = video[:, r * 4 : (r + 1) * 4, c * 6 : (c + 1) * 6]
        assert torch.equal(tile[0], td["pixels"][b, 0])
        assert torch.equal(tile[1:], td["next", "pixels"][b])
    assert (video[:, 4:, 6:] == 0).all()


def test_make_grid_false_writes_one_video_per_env(stub_env_cls, logger: ListLogger) -> None:
    env = stub_env_cls(episode_lengths=(3, 4), batch_size=(2,), pixels=(4, 6, 3))
    vr = VideoRecorder(logger, "per", make_grid=False)
    env = env.append_transform(vr)
    td = env.rollout(7, break_when_any_done=False)
    vr.dump()
    assert sorted(logger.names()) == [("per_env0", 14, 10), ("per_env1", 14, 9)]  # 7 x 2 envs
    for v in logger.videos:
        b = int(v.name[-1])
        assert torch.equal(v.frames.permute(0, 2, 3, 1), rollout_frames(td[b]))


def test_extend_collector_batch_b_t_per_env(logger: ListLogger) -> None:
    frames = torch.stack([solid(5), solid(5).flip(0)])  # [B=2, T=5, H, W, 3]
    td = TensorDict(pixels=frames, batch_size=[2, 5])
    vr = VideoRecorder(logger, "bt", make_grid=False)
    vr.extend(td)
    vr.dump()
    assert logger.names() == [("bt_env0", 10, 5), ("bt_env1", 10, 5)]
    assert torch.equal(logger.hwc(1), frames[1])


def test_forward_on_replay_buffer_sample(logger: ListLogger) -> None:
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from torchrl.data.replay_buffers import SliceSamplerWithoutReplacement

    frames = solid(10, 4, 4)
    data = TensorDict(pixels=frames, episode=torch.zeros(10, dtype=torch.long), batch_size=[10])
    vr = VideoRecorder(logger, "rb")
    rb = ReplayBuffer(
        storage=LazyTensorStorage(10),
        sampler=SliceSamplerWithoutReplacement(slice_len=10, traj_key="episode"),
        batch_size=10,
        transform=vr,
    )
    rb.extend(data)
    sample = rb.sample()
    vr.dump()
    assert torch.equal(logger.hwc(), sample["pixels"])
    assert vr(data) is data


# ----------------------------------------------------------------------------- callback


@pytest.mark.parametrize("break_when_any_done", [True, False])
def test_rollout_callback(stub_env_cls, logger: ListLogger, break_when_any_done: bool) -> None:
    env = stub_env_cls(episode_lengths=(50,), pixels=(4, 6, 3))
    vr = VideoRecorder(logger, "cb")
    seen: list[torch.Tensor] = []

    def spy(e, td):
        seen.append(td["pixels"].clone())
        return vr(e, td)

    env.rollout(6, callback=spy, break_when_any_done=break_when_any_done)
    vr.dump()
    assert logger.names() == [("cb", 5, 5)]  # TorchRL skips the reset and the last step
    assert torch.equal(logger.hwc(), torch.stack(seen))


def test_batched_callback_grid(stub_env_cls, logger: ListLogger) -> None:
    env = stub_env_cls(episode_lengths=(50,), batch_size=(2,), pixels=(4, 6, 3))
    vr = VideoRecorder(logger, "cbg")
    env.rollout(4, callback=vr)
    vr.dump()
    assert logger.videos[0].frames.shape == (3, 3, 4, 12)


# ----------------------------------------------------------------------------- options


def test_skip_and_max_frames(logger: ListLogger) -> None:
    frames = solid(10, 2, 2)
    vr = VideoRecorder(logger, "s", skip=3, max_frames=3)
    vr.extend(TensorDict(pixels=frames, batch_size=[10]))
    vr.dump()
    assert torch.equal(logger.hwc(), frames[[0, 3, 6]])  # frame 9 dropped by max_frames
    vr.extend(TensorDict(pixels=frames, batch_size=[10]))
    vr.dump()
    assert logger.names()[-1] == ("s", 20, 3)  # the cap is per video


def test_dump_on_done_one_video_per_episode(stub_env_cls, logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "done", dump_on_done=True, fps=12)
    env = stub_env_cls(episode_lengths=(3,), pixels=(4, 4, 3)).append_transform(vr)
    env.rollout(7, break_when_any_done=False)
    assert logger.names() == [("done", 3, 4), ("done", 6, 4)]
    assert logger.videos[0].kw == {"fps": 12}


def test_episode_trigger_records_chosen_episodes(logger: ListLogger) -> None:
    n, length = 12, 3
    frames = solid(n, 2, 2)
    done = torch.tensor([(t + 1) % length == 0 for t in range(n)]).unsqueeze(-1)
    td = TensorDict(pixels=frames, next=TensorDict(done=done, batch_size=[n]), batch_size=[n])
    vr = VideoRecorder(logger, "ep", episode_trigger=Every(2))
    vr.extend(td)
    vr.dump()
    assert logger.names() == [("ep_ep0", 12, 3), ("ep_ep2", 12, 3)]  # episodes 0 and 2
    assert torch.equal(logger.hwc(1), frames[6:9])


def test_step_trigger_runs_to_episode_end_or_max_frames(logger: ListLogger) -> None:
    n = 12
    frames = solid(n, 2, 2)
    done = torch.tensor([t in (5, 11) for t in range(n)]).unsqueeze(-1)
    td = TensorDict(pixels=frames, next=TensorDict(done=done, batch_size=[n]), batch_size=[n])
    vr = VideoRecorder(logger, "st", step_trigger=lambda i: i in (2, 7), max_frames=3)
    vr.extend(td)
    vr.dump()
    assert logger.names() == [("st_ep0", 12, 3), ("st_ep1", 12, 3)]  # from steps 2 and 7
    assert torch.equal(logger.hwc(0), frames[2:5])
    assert torch.equal(logger.hwc(1), frames[7:10])


def test_triggered_videos_are_named_for_their_episode(tmp_path: Path) -> None:
    """A user looking for episode 4 finds ``videos/<tag>_ep4_<frames>.mp4``."""
    from trlrec.loggers import CSVLogger

    n, length = 15, 3
    frames = solid(n, 2, 2)
    done = torch.tensor([(t + 1) % length == 0 for t in range(n)]).unsqueeze(-1)
    td = TensorDict(pixels=frames, next=TensorDict(done=done, batch_size=[n]), batch_size=[n])
    lg = CSVLogger("exp", log_dir=tmp_path)
    vr = VideoRecorder(lg, "video", episode_trigger=Every(2))
    vr.extend(td)
    vr.close()
    names = sorted(p.name for p in (tmp_path / "exp" / "videos").iterdir())
    assert names == ["video_ep0_15.mp4", "video_ep2_15.mp4", "video_ep4_15.mp4"]
    ep4 = read_mp4(tmp_path / "exp" / "videos" / "video_ep4_15.mp4")
    assert np.abs(ep4.astype(int) - frames[12:15].numpy()).max() <= TOL


def test_per_env_triggered_names_and_one_step_axis_with_the_transitions(
    stub_env_cls, tmp_path: Path
) -> None:
    """Both recorders log at the env frame count, so their points share an x axis."""
    from trlrec import TensorDictRecorder
    from trlrec.loggers import MemoryLogger

    lg = MemoryLogger("exp", log_dir=tmp_path)
    env = stub_env_cls(episode_lengths=(3, 4), batch_size=(2,), pixels=(4, 6, 3))
    vr = VideoRecorder(lg, "v", make_grid=False, episode_trigger=lambda i: i == 1)
    rec = TensorDictRecorder(tmp_path / "store", logger=lg, tag="t")
    env = env.append_transform(vr).append_transform(rec)
    env.rollout(9, break_when_any_done=False)
    env.transform.dump()
    videos = {name: [v.step for v in logged] for name, logged in lg.videos.items()}
    assert videos == {"v_env0_ep1": [18], "v_env1_ep1": [18]}  # 9 steps x 2 envs
    assert lg.videos["v_env1_ep1"][0].frames.shape[0] == 5  # its reset frame and 4 steps
    ((step, _),) = lg.scalars["t/episode_length"]
    assert step == 18


# ----------------------------------------------------------------------------- durability


def test_new_recorder_same_tag_does_not_overwrite(tmp_path: Path) -> None:
    from trlrec.loggers import CSVLogger

    lg = CSVLogger("exp", log_dir=tmp_path)
    for _ in range(2):
        vr = VideoRecorder(lg, "again")
        vr.extend(TensorDict(pixels=solid(2), batch_size=[2]))
        vr.dump()
        vr.close()
    lg.close()
    names = sorted(p.name for p in (tmp_path / "exp" / "videos").iterdir())
    assert names == ["again_2.mp4", "again_3.mp4"]  # the second is not at frame 2 again


def test_logger_error_keeps_frames(logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "keep")
    vr.extend(TensorDict(pixels=solid(4), batch_size=[4]))
    logger.fail = True
    with pytest.raises(OSError, match="logger down"):
        vr.dump()
    logger.fail = False
    vr.extend(TensorDict(pixels=solid(2), batch_size=[2]))
    vr.dump()
    assert [v.frames.shape[0] for v in logger.videos] == [4, 2]


class KeepingLogger(ListLogger):
    """Keeps the very tensor it is given (no copy), as a logger may."""

    def log_video(self, name: str, video: torch.Tensor, step: int | None = None, **kwargs: Any):
        if self.fail:
            raise OSError("logger down")
        self.videos.append(SimpleNamespace(name=name, frames=video, step=step, kw=kwargs))


def test_other_loggers_get_a_tensor_they_may_keep_and_pickle(tmp_path: Path) -> None:
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # registers torch's reductions, as ProcessLogger's queues use

    logger = KeepingLogger(tmp_path / "exp")
    vr = VideoRecorder(logger, "keep")
    frames = solid(5)
    vr.extend(TensorDict(pixels=frames, batch_size=[5]))
    vr.dump()
    vr.close()
    assert not list(vr.spool_dir.glob("*.frames"))  # the spool file is gone...
    (kept,) = logger.videos
    assert type(kept.frames) is torch.Tensor  # ...and what the logger kept is its own
    assert torch.equal(kept.frames[0].permute(0, 2, 3, 1), frames)
    assert torch.multiprocessing.get_sharing_strategy()
    assert ForkingPickler.dumps(kept.frames)  # what a ProcessLogger's queue does with it


def test_log_video_is_called_as_torchrl_does(tmp_path: Path) -> None:
    class KeywordsOnly:  # TorchRL's VideoRecorder calls log_video(name=, video=, step=)
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def log_video(self, **kwargs: Any) -> None:
            self.calls.append(kwargs)

    logger = KeywordsOnly()
    vr = VideoRecorder(logger, "kw", spool_dir=tmp_path, fps=9)
    vr.extend(TensorDict(pixels=solid(2), batch_size=[2]))
    vr.dump(step=3)
    ((call,),) = [logger.calls]
    assert (call["name"], call["step"], call["fps"], call["video"].shape) == (
        "kw",
        3,
        9,
        (1, 2, 3, 16, 24),
    )


def test_close_does_not_raise_an_error_dump_raised(tmp_path: Path) -> None:
    logger = ListLogger(tmp_path / "exp")
    vr = VideoRecorder(logger, "again")
    vr.extend(TensorDict(pixels=solid(3), batch_size=[3]))
    logger.fail = True
    with pytest.raises(OSError, match="logger down"):
        vr.dump()  # reported here, where it happened
    vr.close()  # tried again, failed again: not raised a second time
    vr.dump()  # a no-op after close, as TorchRL's
    assert len(list(vr.spool_dir.glob("again.*.frames"))) == 1  # the frames are kept
    logger.fail = False
    VideoRecorder(logger, "again").close()  # the next recorder with the tag sends them
    assert [(name, n) for name, _, n in logger.names()] == [("again", 3)]


def test_close_raises_a_new_logger_error(tmp_path: Path) -> None:
    logger = ListLogger(tmp_path / "exp")
    vr = VideoRecorder(logger, "new")
    vr.extend(TensorDict(pixels=solid(2), batch_size=[2]))
    logger.fail = True
    with pytest.raises(OSError, match="logger down"):
        vr.close()  # never reported before: close is where it happened
    assert len(list(vr.spool_dir.glob("new.*.frames"))) == 1


def test_spool_format_and_sidecar(logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "fmt", fps=15)
    vr.extend(TensorDict(pixels=solid(3, 4, 6), batch_size=[3]))
    vr._tracks[0].segment.flush()
    (sidecar,) = vr.spool_dir.glob("fmt.*.video.json")
    meta = json.loads(sidecar.read_text())
    assert meta["format"] == "trlrec.video_spool"
    assert meta["version"] == 1
    assert (meta["height"], meta["width"], meta["channels"], meta["fps"]) == (4, 6, 3, 15)
    frames = sidecar.with_name(sidecar.name.replace(".video.json", ".frames"))
    assert frames.stat().st_size == 3 * 4 * 6 * 3
    vr.close()
    assert not frames.exists()
    assert not sidecar.exists()


def test_frames_left_by_a_dead_process_are_sent_by_the_next_recorder(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import os, torch
        from tensordict import TensorDict
        from trlrec import VideoRecorder

        class Never:
            def log_video(self, *a, **k):
                raise AssertionError("not called")

        vr = VideoRecorder(Never(), "crash", spool_dir={str(spool)!r})
        done = torch.tensor([False, False, True, False]).unsqueeze(-1)
        px = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 2, 2, 3)
        vr.extend(TensorDict(pixels=px, next=TensorDict(done=done, batch_size=[4]), batch_size=[4]))
        os._exit(0)  # killed: no dump, no close, unflushed buffer lost
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=120)
    logger = ListLogger()
    other = VideoRecorder(logger, "other", spool_dir=spool)
    other.close()
    assert logger.videos == []  # another tag's orphans are left alone
    vr = VideoRecorder(logger, "crash", spool_dir=spool)
    vr.dump()  # nothing recorded by this one: sends the orphan (flushed at the episode end)
    assert logger.names() == [("crash", 0, 3)]
    assert logger.hwc()[:, 0, 0, 0].tolist() == [0, 1, 2]
    vr.close()
    assert not list(spool.glob("*.frames"))


def test_live_recorder_videos_are_not_stolen(logger: ListLogger, tmp_path: Path) -> None:
    a = VideoRecorder(logger, "same", spool_dir=tmp_path / "s")
    b = VideoRecorder(logger, "same", spool_dir=tmp_path / "s")
    a.extend(TensorDict(pixels=solid(2), batch_size=[2]))
    b.extend(TensorDict(pixels=solid(3), batch_size=[3]))
    b.dump()
    a.dump()
    assert logger.names() == [("same", 3, 3), ("same", 4, 2)]


def test_clone_has_its_own_spool(logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "c")
    vr.extend(TensorDict(pixels=solid(2), batch_size=[2]))
    twin = vr.clone()
    twin.extend(TensorDict(pixels=solid(1), batch_size=[1]))
    twin.dump()
    vr.dump()
    assert [n for _, _, n in logger.names()] == [1, 2]


def test_anonymous_memory_stays_flat(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import torch
        from tensordict import TensorDict
        from trlrec import VideoRecorder

        def rss_anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024

        class Reader:
            def log_video(self, name, video, step=None, **kw):
                total = 0
                for t in range(video.shape[1]):
                    total += int(video[0, t, :, ::60, ::80].sum())  # touch every frame
                self.total = total

        vr = VideoRecorder(Reader(), "mem", spool_dir={str(tmp_path)!r})
        frame = torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8)
        td = TensorDict(pixels=frame, batch_size=[])
        for _ in range(50):
            vr(td)
        base = rss_anon()
        for _ in range(3000):
            vr(td)
        grown = rss_anon() - base
        vr.dump()
        after_dump = rss_anon() - base
        print(grown, after_dump)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        cwd=REPO,
        timeout=300,
        capture_output=True,
        text=True,
    )
    grown, after_dump = map(int, out.stdout.split())
    assert grown < 128 << 20, grown
    assert after_dump < 128 << 20, after_dump  # 3000 frames are 690 MB: dump streams them


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("pixels", "match"),
    [
        (
            torch.zeros(2, 4, 4, 3, dtype=torch.uint8),
            r"rank 4 after the batch dims.*\(2, 4, 4, 3\)",
        ),
        (
            torch.zeros(10, 12, 2, dtype=torch.uint8),
            r"no channel dim of size 1, 3 or 4.*\(10, 12, 2\)",
        ),
        (
            torch.zeros(2, 10, 12, dtype=torch.uint8),
            r"no channel dim of size 1, 3 or 4.*\(2, 10, 12\)",
        ),
        (torch.zeros(4, 4, 3, dtype=torch.bool), r"non-numeric dtype.*torch.bool"),
        (torch.zeros(8, dtype=torch.uint8), r"rank 1 after the batch dims"),
        (np.array([["a"] * 4] * 4), r"non-numeric dtype <U1"),
    ],
)
def test_bad_frames_raise_video_error(pixels: Any, match: str, logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "bad")
    td = TensorDict(batch_size=[])
    if isinstance(pixels, np.ndarray):
        td.set_non_tensor("pixels", pixels)
    else:
        td["pixels"] = pixels
    with pytest.raises(VideoError, match=match) as info:
        vr(td)
    assert "'pixels'" in str(info.value)


def test_size_change_mid_video_raises_and_keeps_frames(logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "size")
    vr.extend(TensorDict(pixels=solid(3, 4, 4), batch_size=[3]))
    with pytest.raises(VideoError, match=r"changed size mid-video from 4x4 to 6x4.*dump\(\)"):
        vr(TensorDict(pixels=torch.zeros(6, 4, 3, dtype=torch.uint8), batch_size=[]))
    vr.dump()
    assert logger.names() == [("size", 4, 3)]  # the refused frame was an env frame too
    vr(TensorDict(pixels=torch.zeros(6, 4, 3, dtype=torch.uint8), batch_size=[]))  # after dump: ok
    vr.dump()
    assert logger.videos[-1].frames.shape == (1, 3, 6, 4)


def test_missing_key(logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "miss", in_keys=["image"])
    with pytest.raises(VideoError, match=r"no frame under 'image'.*'observation'"):
        vr(TensorDict(observation=torch.zeros(3), batch_size=[]))
    vr.set_missing_tolerance(True)
    vr(TensorDict(observation=torch.zeros(3), batch_size=[]))
    vr.dump()
    assert logger.videos == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip": 0}, "skip must be an int >= 1, got 0"),
        ({"max_frames": 0}, "max_frames must be an int >= 1"),
        ({"center_crop": -2}, "center_crop must be a positive int"),
        ({"in_keys": ["a", "b"]}, "one frame key"),
        ({"fps": -1}, "fps must be a positive number"),
        ({"episode_trigger": 3}, "episode_trigger must be a callable"),
        ({"make_grid": "yes"}, "make_grid must be a bool"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str, logger: ListLogger) -> None:
    with pytest.raises(VideoError, match=match):
        VideoRecorder(logger, "x", **kwargs)


def test_closed_recorder_raises(logger: ListLogger) -> None:
    vr = VideoRecorder(logger, "closed")
    vr.close()
    vr.close()  # idempotent
    with pytest.raises(ClosedError, match="after close"):
        vr(TensorDict(pixels=solid(1)[0], batch_size=[]))


def test_env_close_sends_pending_video(stub_env_cls, logger: ListLogger) -> None:
    env = stub_env_cls(pixels=(4, 4, 3)).append_transform(VideoRecorder(logger, "atclose"))
    env.rollout(3)
    env.close()
    assert logger.names() == [("atclose", 3, 4)]


def test_no_logger_drops_frames(tmp_path: Path) -> None:
    vr = VideoRecorder(None, None, spool_dir=tmp_path)
    vr.extend(TensorDict(pixels=solid(2), batch_size=[2]))
    vr.dump()
    assert vr.tag == "video"
    assert not list(tmp_path.glob("*.frames"))
    assert os.listdir(tmp_path)  # step counters / lock may remain
