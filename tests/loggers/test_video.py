"""``Video``: the checks made on creation and the frames it streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import MemoryMappedTensor

from tests.loggers.logger_readback import expected_rgb, solid_frames
from trlrec.errors import VideoError
from trlrec.loggers import Video


def test_tchw_uint8_tensor() -> None:
    frames = solid_frames(3, 5, 7)
    v = Video.of(frames)
    assert (v.num_frames, v.num_videos, v.channels, v.height, v.width) == (3, 1, 3, 5, 7)
    out = list(v.frames())
    assert len(out) == 3
    assert all(f.flags.c_contiguous and f.dtype == np.uint8 for f in out)
    np.testing.assert_array_equal(np.stack(out), expected_rgb(frames))
    # a tensor can be streamed twice
    assert len(list(v.frames())) == 3


def test_of_returns_a_video_unchanged() -> None:
    v = Video.of(solid_frames(1, 2, 2))
    assert Video.of(v) is v


def test_numpy_and_float_input() -> None:
    frames = solid_frames(2, 4, 4)
    np.testing.assert_array_equal(Video.of(frames.numpy()).to_tensor(), frames)
    as_float = frames.double().numpy() / 255
    np.testing.assert_array_equal(Video.of(as_float).to_tensor(), frames)
    half = (frames.float() / 255).to(torch.bfloat16)
    got = Video.of(half).to_tensor().int()
    assert (got - frames.int()).abs().max() <= 2  # bfloat16 has 8 bits of mantissa


def test_float_frames_are_not_black() -> None:
    v = Video.of(torch.full((2, 3, 4, 4), 0.5))
    assert int(next(v.frames()).min()) == 128


def test_grey_and_rgba() -> None:
    grey = solid_frames(2, 4, 4, channels=1)
    assert Video.of(grey).to_tensor().shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(Video.of(grey).to_tensor()[:, 2], grey[:, 0])
    rgba = torch.cat([solid_frames(2, 4, 4), torch.full((2, 1, 4, 4), 7, dtype=torch.uint8)], 1)
    np.testing.assert_array_equal(Video.of(rgba).to_tensor(), rgba[:, :3])


def test_grid_layout_like_torchrl() -> None:
    from torchrl.record.recorder import _make_video_grid

    videos = torch.randint(0, 255, (5, 2, 3, 4, 6), dtype=torch.uint8)
    v = Video.of(videos)
    assert v.grid == (2, 3)
    assert (v.height, v.width) == (8, 18)
    got = v.to_tensor()
    for t in range(2):
        torch.testing.assert_close(got[t], _make_video_grid(videos[:, t]))


def test_memmap_is_streamed_frame_by_frame(tmp_path: Path) -> None:
    frames = solid_frames(4, 6, 6)
    mm = MemoryMappedTensor.from_tensor(frames, filename=tmp_path / "f.memmap")
    v = Video.of(mm)
    assert v.source is mm  # not copied at creation
    it = v.frames()
    first = next(it)
    np.testing.assert_array_equal(first, expected_rgb(frames)[0])
    np.testing.assert_array_equal(np.stack([first, *it]), expected_rgb(frames))


def test_iterator_is_single_use() -> None:
    frames = solid_frames(3, 4, 4)
    v = Video.of(iter(frames))
    assert v.num_frames is None
    assert len(list(v.frames())) == 3
    with pytest.raises(VideoError, match="already been streamed"):
        list(v.frames())


def test_list_and_n_frames_iterator() -> None:
    frames = solid_frames(3, 4, 4)
    v = Video.of(list(frames))
    assert v.num_frames == 3
    assert len(list(v.frames())) == len(list(v.frames())) == 3
    # an iterator of (N, C, H, W) frames is tiled like a 5-D video
    tiled = Video.of(f[None].expand(2, -1, -1, -1) for f in frames)
    assert (tiled.num_videos, tiled.height, tiled.width) == (2, 4, 8)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(3, 4, 4, dtype=torch.uint8), r"3 dimensions.*add a time dimension"),
        (torch.zeros(2, 2, 2, 3, 4, 4, dtype=torch.uint8), r"6 dimensions"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), r"channels-last.*permute\(0, 3, 1, 2\)"),
        (torch.zeros(2, 2, 8, 8, dtype=torch.uint8), r"2 channels at dim -3"),
        (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), r"empty dimension"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int64), r"dtype int64.*uint8"),
        (np.zeros((2, 3, 8, 8), dtype=np.uint16), r"dtype uint16"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.bool), r"dtype bool"),
        ("video.mp4", r"cannot make a video from str"),
        (42, r"cannot make a video from int"),
        ([], r"sequence of frames is empty"),
        (iter([]), r"iterator of frames is empty"),
        (iter([torch.zeros(8, 8, dtype=torch.uint8)]), r"frame 0 of shape \(8, 8\)"),
        (iter([torch.full((3, 4, 4), 255.0)]), r"float frame 0 has values in \[255.0, 255.0\]"),
        (iter([torch.full((3, 4, 4), float("nan"))]), r"float frame 0 has values in \[nan"),
    ],
)
def test_bad_input_is_refused_on_creation(bad: object, match: str) -> None:
    with pytest.raises(VideoError, match=match):
        Video.of(bad)


def test_bad_frames_are_refused_while_streaming() -> None:
    v = Video.of(torch.full((3, 3, 4, 4), 2.0))  # values are only read when streamed
    with pytest.raises(VideoError, match=r"float frame 0 has values in \[2.0, 2.0\].*Divide"):
        list(v.frames())
    mixed = Video.of(iter([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 5, 4)]))
    with pytest.raises(VideoError, match=r"frame 1 has shape \(3, 5, 4\).*\(3, 4, 4\)"):
        list(mixed.frames())
    dtypes = Video.of([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 4, 4).int()])
    with pytest.raises(VideoError, match=r"frame 1 has dtype int32"):
        list(dtypes.frames())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    t=st.integers(1, 3),
    c=st.sampled_from([1, 3, 4]),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
)
def test_frames_shape_property(n: int, t: int, c: int, h: int, w: int) -> None:
    video = torch.randint(0, 256, (n, t, c, h, w), dtype=torch.uint8)
    v = Video.of(video)
    rows, cols = v.grid
    assert rows * cols >= n > (rows - 1) * cols
    out = v.to_tensor()
    assert out.shape == (t, 3, rows * h, cols * w)
    # the first video sits in the top-left tile, unchanged
    want = video[0].expand(-1, 3, -1, -1) if c == 1 else video[0, :, :3]
    torch.testing.assert_close(out[:, :, :h, :w], want)
