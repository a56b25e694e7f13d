from __future__ import annotations

from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from tensordict import NonTensorData
from torchrl.envs import GymEnv, SerialEnv, check_env_specs

from trlrec import PixelRenderTransform, VideoRecorder
from trlrec.errors import VideoError


@pytest.fixture(autouse=True)
def _headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


def cartpole() -> GymEnv:
    return GymEnv("CartPole-v1", render_mode="rgb_array")


def read_mp4(path: Path) -> np.ndarray:
    gen = imageio_ffmpeg.read_frames(str(path))
    w, h = next(gen)["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])


@pytest.fixture
def reset_count(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    count = {"reset": 0}
    original = GymEnv._reset

    def counting(self: GymEnv, *args: Any, **kwargs: Any) -> Any:
        count["reset"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GymEnv, "_reset", counting)
    return count


def test_cartpole_filmed_to_mp4(tmp_path: Path) -> None:
    from trlrec.loggers import CSVLogger

    logger = CSVLogger("cartpole", log_dir=tmp_path)
    env = cartpole().append_transform(PixelRenderTransform())
    env = env.append_transform(VideoRecorder(logger, "episode"))
    env.set_seed(0)
    td = env.rollout(5)
    env.transform.dump()
    logger.close()
    assert td["pixels"].shape == (5, 400, 600, 3)
    frames = read_mp4(tmp_path / "cartpole" / "videos" / "episode_5.mp4")  # at env frame 5
    assert frames.shape == (6, 400, 600, 3)  # reset + 5 steps
    want = torch.cat([td["pixels"][:1], td["next", "pixels"]]).numpy().astype(np.int16)
    err = np.abs(frames.astype(np.int16) - want).mean(axis=(1, 2, 3))
    assert err.max() < 3, err
    assert np.abs(frames[1].astype(int) - frames[5]).mean() > 0.01  # the cart moves


def test_serial_env_of_two_cartpoles(tmp_path: Path) -> None:
    from trlrec.loggers import CSVLogger

    logger = CSVLogger("serial", log_dir=tmp_path)
    env = SerialEnv(2, cartpole).append_transform(PixelRenderTransform())
    env = env.append_transform(VideoRecorder(logger, "grid", make_grid=True))
    td = env.rollout(3, break_when_any_done=False)
    td2 = env.rollout(2, break_when_any_done=False)  # torchrl's crashes after the first step
    env.transform.dump()
    env.close()
    logger.close()
    assert td["pixels"].shape == (2, 3, 400, 600, 3)
    assert td2["next", "pixels"].shape == (2, 2, 400, 600, 3)
    frames = read_mp4(tmp_path / "serial" / "videos" / "grid_10.mp4")  # 5 steps x 2 envs
    assert frames.shape == (1 + 3 + 1 + 2, 400, 1200, 3)  # two resets, five steps, side by side


def test_spec_read_does_not_reset_a_seeded_env(reset_count: dict[str, int]) -> None:
    base = cartpole()
    base.set_seed(0)
    after_seed = reset_count["reset"]
    env = base.append_transform(PixelRenderTransform())
    spec = env.observation_spec["pixels"]
    assert reset_count["reset"] == after_seed
    assert spec.shape == (400, 600, 3)
    assert spec.dtype == torch.uint8
    check_env_specs(env)


def test_spec_resets_a_never_reset_env_only_once(reset_count: dict[str, int]) -> None:
    env = cartpole().append_transform(PixelRenderTransform())
    assert env.observation_spec["pixels"].shape == (400, 600, 3)
    assert reset_count["reset"] == 1
    env.empty_cache()
    assert env.observation_spec["pixels"].shape == (400, 600, 3)
    assert reset_count["reset"] == 1


def test_switch_turns_rendering_off_and_on() -> None:
    prt = PixelRenderTransform()
    env = cartpole().append_transform(prt)
    prt.switch()
    assert not prt.enabled
    assert "pixels" not in env.rollout(2).keys()
    prt.enabled = True
    assert env.rollout(2)["pixels"].shape == (2, 400, 600, 3)
    prt.switch("off")
    assert not prt.enabled
    prt.switch(True)
    assert prt.enabled
    with pytest.raises(VideoError, match="switch\\(\\) takes True/False, 'on'/'off' or None"):
        prt.switch("maybe")


def test_recorder_skips_steps_while_rendering_is_off(tmp_path: Path) -> None:
    from trlrec.loggers import MemoryLogger

    logger = MemoryLogger("m", log_dir=tmp_path)
    prt = PixelRenderTransform()
    vr = VideoRecorder(logger, "v")
    vr.set_missing_tolerance(True)
    env = cartpole().append_transform(prt).append_transform(vr)
    env.rollout(2)
    prt.switch("off")
    env.rollout(2)
    vr.dump()
    assert logger.videos["v"][0].frames.shape == (3, 3, 400, 600)


@pytest.mark.filterwarnings("ignore:.*render method without specifying any render mode")
def test_missing_render_mode_is_a_clear_error() -> None:
    env = GymEnv("CartPole-v1").append_transform(PixelRenderTransform())
    with pytest.raises(VideoError, match=r"render\(\) returned None.*render_mode='rgb_array'"):
        env.rollout(2)


class _Renderable:
    """Mixin: a StubEnv whose render() returns one frame per sub-env (a list when batched)."""

    def render(self, **kwargs: Any) -> Any:
        value = [np.full((4, 6, 3), int(t) % 256, np.uint8) for t in self._t]
        if self.batch_size == ():
            return value[0]
        if kwargs.get("stacked"):
            return np.stack(value)
        return value if not kwargs.get("one_image") else value[0]


def _render_stub(stub_env_cls: type, batch_size: tuple[int, ...]) -> Any:
    cls = type("RenderStub", (_Renderable, stub_env_cls), {})
    return cls(episode_lengths=(50,), batch_size=batch_size)


def test_batched_list_render_is_stacked_every_step(stub_env_cls: type) -> None:
    env = _render_stub(stub_env_cls, (3,)).append_transform(PixelRenderTransform(out_keys="img"))
    td = env.rollout(4)
    assert td["next", "img"].shape == (3, 4, 4, 6, 3)
    assert td["next", "img"][:, :, 0, 0, 0].tolist() == [[1, 2, 3, 4]] * 3
    assert env.observation_spec["img"].shape == (3, 4, 6, 3)


def test_one_image_for_a_batch_is_non_tensor_and_recordable(stub_env_cls, tmp_path) -> None:
    from trlrec.loggers import MemoryLogger

    logger = MemoryLogger("m")
    prt = PixelRenderTransform(one_image=True)
    env = _render_stub(stub_env_cls, (2,)).append_transform(prt)
    vr = VideoRecorder(logger, "nt", spool_dir=tmp_path)
    td = env.reset()
    assert isinstance(td.get("pixels"), NonTensorData)
    vr(td)
    vr.dump()
    assert logger.videos["nt"][0].frames.shape == (1, 3, 4, 6)


def test_preproc_and_as_non_tensor(stub_env_cls: type) -> None:
    prt = PixelRenderTransform(preproc=lambda a: a[:2], as_non_tensor=True)
    td = _render_stub(stub_env_cls, ()).append_transform(prt).reset()
    assert isinstance(td.get("pixels"), NonTensorData)
    assert td["pixels"].shape == (2, 6, 3)


@pytest.mark.parametrize("render_kwargs", [{}, {"stacked": True}])
def test_preproc_gets_each_frame_of_a_batched_env(stub_env_cls: type, render_kwargs) -> None:
    seen: list[tuple[int, ...]] = []

    def half(frame: np.ndarray) -> np.ndarray:  # a per-frame function, as in the examples
        seen.append(frame.shape)
        return frame[::2, ::2]

    prt = PixelRenderTransform(preproc=half, **render_kwargs)
    td = _render_stub(stub_env_cls, (3,)).append_transform(prt).rollout(2)
    assert td["next", "pixels"].shape == (3, 2, 2, 3, 3)
    assert set(seen) == {(4, 6, 3)}
    assert td["next", "pixels"][:, :, 0, 0, 0].tolist() == [[1, 2]] * 3


def test_preproc_on_a_serial_env_of_cartpoles() -> None:
    env = SerialEnv(2, cartpole)
    env = env.append_transform(PixelRenderTransform())
    env = env.append_transform(
        PixelRenderTransform(out_keys="small", preproc=lambda img: img[::2, ::2])
    )
    td = env.rollout(2, break_when_any_done=False)
    env.close()
    assert td["next", "small"].shape == (2, 2, 200, 300, 3)
    assert torch.equal(td["next", "small"], td["next", "pixels"][..., ::2, ::2, :])


def test_bad_arguments() -> None:
    with pytest.raises(VideoError, match="writes one key"):
        PixelRenderTransform(out_keys=["a", "b"])
    with pytest.raises(VideoError, match="preproc must be callable"):
        PixelRenderTransform(preproc=3)


def test_missing_render_method(stub_env_cls: type) -> None:
    env = stub_env_cls()
    with pytest.raises(VideoError, match=r"callable StubEnv.nope\(\)"):
        env.append_transform(PixelRenderTransform(render_method="nope"))
