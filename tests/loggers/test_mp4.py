"""The streaming encoders: ``Mp4Writer`` / ``encode_mp4`` (and the shared ``FfmpegWriter``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import MemoryMappedTensor

from tests.loggers.logger_readback import (
    assert_frames_close,
    expected_rgb,
    mp4_fps,
    read_mp4,
    solid_frames,
)
from trlrec.errors import ClosedError, EncoderError, MissingDependencyError, VideoError
from trlrec.loggers import Mp4Writer, encode_mp4
from trlrec.loggers import mp4 as mp4_module


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 21), (84, 84), (1, 3)])
def test_round_trip_keeps_size_and_colours(tmp_path: Path, h: int, w: int) -> None:
    frames = solid_frames(7, h, w)
    path = encode_mp4(frames, tmp_path / "v.mp4", fps=12)
    got = read_mp4(path)
    # yuv420p needs even sizes: odd ones gain exactly one replicated row/column
    assert got.shape == (7, h + h % 2, w + w % 2, 3)
    assert_frames_close(got[:, :h, :w], expected_rgb(frames))
    if h % 2:
        assert_frames_close(got[:, h], got[:, h - 1], tol=2)
    if w % 2:
        assert_frames_close(got[:, :, w], got[:, :, w - 1], tol=2)
    assert mp4_fps(path) == pytest.approx(12)
    assert _leftovers(tmp_path) == ["v.mp4"]


def test_fractional_fps(tmp_path: Path) -> None:
    path = encode_mp4(solid_frames(3, 8, 8), tmp_path / "v.mp4", fps=29.97)
    assert mp4_fps(path) == pytest.approx(29.97, abs=0.01)


def test_memmap_larger_than_a_frame_is_streamed(tmp_path: Path) -> None:
    frames = solid_frames(40, 32, 32)
    mm = MemoryMappedTensor.from_tensor(frames, filename=tmp_path / "big.memmap")
    path = encode_mp4(mm, tmp_path / "v.mp4")
    assert_frames_close(read_mp4(path), expected_rgb(frames))


def test_writer_streams_one_frame_at_a_time(tmp_path: Path) -> None:
    frames = expected_rgb(solid_frames(5, 10, 10))
    with Mp4Writer(tmp_path / "v.mp4", 10, 10, fps=5, preset="veryfast", crf=10) as w:
        for f in frames:
            w.write(f)
            # nothing appears under the final name while encoding
            assert not (tmp_path / "v.mp4").exists()
    assert w.num_frames == 5
    assert_frames_close(read_mp4(tmp_path / "v.mp4"), frames)


def test_error_inside_the_block_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"previous")

    def fail_midway() -> None:
        with Mp4Writer(tmp_path / "v.mp4", 4, 4) as w:
            w.write(np.zeros((4, 4, 3), np.uint8))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    # the older file is untouched and no temporary file remains
    assert (tmp_path / "v.mp4").read_bytes() == b"previous"
    assert _leftovers(tmp_path) == ["v.mp4"]


def test_bad_frame_mid_video_leaves_nothing(tmp_path: Path) -> None:
    frames = [torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), torch.full((3, 4, 4), 3.0)]
    with pytest.raises(VideoError, match=r"float frame 2 has values in \[3.0, 3.0\]"):
        encode_mp4(iter(frames), tmp_path / "v.mp4")
    assert _leftovers(tmp_path) == []


def test_wrong_frame_for_writer(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "v.mp4", 4, 4) as w:
        with pytest.raises(VideoError, match=r"shape \(4, 5, 3\).*uint8 \(4, 4, 3\)"):
            w.write(np.zeros((4, 5, 3), np.uint8))
        with pytest.raises(VideoError, match=r"dtype float32"):
            w.write(np.zeros((4, 4, 3), np.float32))
        w.write(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ClosedError, match="closed"):
        w.write(np.zeros((4, 4, 3), np.uint8))
    assert w.close() == tmp_path / "v.mp4"  # idempotent


def test_no_frames_is_an_error(tmp_path: Path) -> None:
    w = Mp4Writer(tmp_path / "v.mp4", 4, 4)
    with pytest.raises(VideoError, match="no frame was written"):
        w.close()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fps", [0, -1, "fast", float("nan")])
def test_bad_fps(tmp_path: Path, fps: object) -> None:
    with pytest.raises(VideoError, match="fps must be a positive number"):
        encode_mp4(solid_frames(1, 4, 4), tmp_path / "v.mp4", fps=fps)  # type: ignore[arg-type]


def test_ffmpeg_failure_is_an_encoder_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match=r"(?s)ffmpeg exited with status.*invalid preset"):
        encode_mp4(solid_frames(30, 8, 8), tmp_path / "v.mp4", preset="no-such-preset")
    assert _leftovers(tmp_path) == []


def test_missing_ffmpeg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(MissingDependencyError, match="pip install 'imageio-ffmpeg"):
        encode_mp4(solid_frames(1, 4, 4), tmp_path / "v.mp4")


def test_unstartable_ffmpeg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mp4_module, "ffmpeg_exe", lambda: str(tmp_path / "no-ffmpeg"))
    with pytest.raises(EncoderError, match="could not start ffmpeg"):
        encode_mp4(solid_frames(1, 4, 4), tmp_path / "v.mp4")


def test_abort_kills_ffmpeg(tmp_path: Path) -> None:
    w = Mp4Writer(tmp_path / "v.mp4", 8, 8)
    w.write(np.zeros((8, 8, 3), np.uint8))
    proc = w._proc
    assert proc is not None
    w.abort()
    assert proc.poll() is not None
    assert _leftovers(tmp_path) == []


def test_concurrent_writers(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            encode_mp4(solid_frames(10, 8, 8), tmp_path / f"{i}.mp4")
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _leftovers(tmp_path) == [f"{i}.mp4" for i in range(4)]


def test_killed_process_leaves_no_final_file(tmp_path: Path) -> None:
    code = (
        "import os, numpy as np\n"
        "from trlrec.loggers import Mp4Writer\n"
        f"w = Mp4Writer({str(tmp_path / 'v.mp4')!r}, 8, 8)\n"
        "w.write(np.zeros((8, 8, 3), np.uint8))\n"
        "os._exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    subprocess.run([sys.executable, "-c", code], env=env, check=False, timeout=60)
    assert not (tmp_path / "v.mp4").exists()


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_memmap_video_is_not_loaded_in_ram(tmp_path: Path) -> None:
    """A 92 MB memory-mapped video is encoded with a few MB of anonymous memory."""
    mm = MemoryMappedTensor.empty((100, 3, 480, 640), dtype=torch.uint8, filename=tmp_path / "v.mm")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_kb())
            done.wait(0.002)

    base = _rss_anon_kb()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        encode_mp4(mm, tmp_path / "v.mp4")
    finally:
        done.set()
        sampler.join()
    assert (peak[0] - base) / 1024 < 40, f"RssAnon grew by {(peak[0] - base) / 1024:.0f} MB"
    assert read_mp4(tmp_path / "v.mp4").shape == (100, 480, 640, 3)
