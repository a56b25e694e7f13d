"""The spool's writer thread: frames reach the files in order, whole, and errors surface."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tensordict import TensorDict

from trlrec import VideoRecorder
from trlrec.errors import StoreWriteError, VideoError
from trlrec.video.frame_writes import FrameWriter
from trlrec.video.spool import Spool

REPO = Path(__file__).resolve().parents[2]
H, W = 84, 84
FRAME = H * W * 3


class ListLogger:
    def __init__(self) -> None:
        self.videos: list[SimpleNamespace] = []

    def log_video(self, name: str, video: torch.Tensor, step: int | None = None, **kw: Any):
        self.videos.append(SimpleNamespace(name=name, frames=video[0].permute(0, 2, 3, 1).clone()))


@pytest.fixture(autouse=True, params=["native", "python"])
def path_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the native frame copy and writes, then without them."""
    monkeypatch.setenv("TRLREC_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def numbered(i: int, h: int = H, w: int = W) -> torch.Tensor:
    """Frame ``i``: every byte is ``i % 251`` except the first, ``i // 251`` (order is checked)."""
    frame = torch.full((h, w, 3), i % 251, dtype=torch.uint8)
    frame[0, 0, 0] = i // 251
    return frame


def assert_numbered(frames: torch.Tensor, start: int = 0) -> None:
    for t, frame in enumerate(frames):
        assert torch.equal(frame, numbered(start + t, *frame.shape[:2])), f"frame {t}"


def test_segment_frames_reach_the_file_in_order_across_blocks(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "w")
    spool.writer = FrameWriter(block_bytes=3 * FRAME + 100, queued=2)  # 3 frames a block
    segment = spool.open_segment(None, H, W, None)
    frame = torch.empty(H, W, 3, dtype=torch.uint8)
    for i in range(20):
        frame.copy_(numbered(i))  # the caller reuses its buffer: the segment copied it
        segment.write(frame)
    segment.end_episode()
    segment.flush()
    (path,) = tmp_path.glob("*.frames")
    assert path.stat().st_size == 20 * FRAME
    data = torch.from_file(str(path), size=20 * FRAME, dtype=torch.uint8).view(20, H, W, 3)
    assert_numbered(data)
    segment.close()
    segment.close()  # idempotent
    spool.close()


def test_many_segments_share_a_small_writer_without_deadlock(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "many")
    spool.writer = FrameWriter(block_bytes=2 * 4 * 4 * 3, queued=1)
    segments = [spool.open_segment(env, 4, 4, None) for env in range(6)]
    for i in range(30):
        for segment in segments:
            segment.write(numbered(i, 4, 4))
    for segment in segments:
        segment.close()
    spool.close()
    for path in tmp_path.glob("*.frames"):
        data = torch.from_file(str(path), size=30 * 48, dtype=torch.uint8).view(30, 4, 4, 3)
        assert_numbered(data)


def test_write_error_surfaces_as_store_write_error_and_whole_frames_stay(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    limit = 5 * FRAME + 1000  # RLIMIT_FSIZE: the first block's write stops inside frame 5
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import torch
        from tensordict import TensorDict
        from trlrec import VideoRecorder
        from trlrec.errors import StoreWriteError
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_frame_writes import numbered

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))

        class Never:
            def log_video(self, *a, **k):
                raise AssertionError("not called")

        vr = VideoRecorder(Never(), "full", spool_dir={str(spool)!r})
        try:
            for i in range(1000):
                vr(TensorDict(pixels=numbered(i), batch_size=[]))
            vr._tracks[0].segment.flush()
        except StoreWriteError as err:
            print("raised:", err)
            sys.exit(0)
        print("no error")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        timeout=120,
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.match(
        r"raised: \[Errno 27\] writing video frames to .*full\..*\.frames' failed: File too large; "
        r"its first 5 frame\(s\) are kept",
        out.stdout,
    ), out.stdout + out.stderr
    (path,) = spool.glob("full.*.frames")
    assert path.stat().st_size == limit  # a torn frame past the 5 whole ones
    logger = ListLogger()
    vr = VideoRecorder(logger, "full", spool_dir=spool)
    vr.dump()  # the dead recorder's whole frames, not the torn one
    assert [v.frames.shape[0] for v in logger.videos] == [5]
    assert_numbered(logger.videos[0].frames)
    vr.close()


def test_error_raised_in_process_by_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vr = VideoRecorder(ListLogger(), "gone", spool_dir=tmp_path)
    writer = vr._spool.writer = FrameWriter(block_bytes=2 * FRAME, queued=1)
    io = writer._io
    unwritable = tmp_path / "unwritable"
    unwritable.mkdir()  # the file's writes go to a directory: EISDIR, on the I/O thread
    real_write = io.write

    def write(path, data, offset, group):
        return real_write(str(unwritable) if "gone" in path else path, data, offset, group)

    monkeypatch.setattr(io, "write", write)
    td = TensorDict(pixels=numbered(0), batch_size=[])
    vr(td)

    def two_more_frames():
        vr(td)  # fills the block: handed over, its write fails (on the thread, or here)
        writer.sync()
        vr(td)  # ... and the next call raises it

    with pytest.raises(StoreWriteError, match=r"writing video frames to .*gone.*frames.* failed"):
        two_more_frames()
    monkeypatch.undo()
    assert vr._tracks[0].segment is None  # the next frame opens a new file
    vr(td)
    vr.dump()
    vr.close()


def test_killed_mid_episode_leaves_only_whole_frames_in_order(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import os, sys
        from tensordict import TensorDict
        from trlrec import VideoRecorder
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_frame_writes import numbered

        class Never:
            def log_video(self, *a, **k):
                raise AssertionError("not called")

        vr = VideoRecorder(Never(), "kill", spool_dir={str(spool)!r})
        for i in range(700):  # several blocks handed over, no episode end, no flush
            vr(TensorDict(pixels=numbered(i), batch_size=[]))
        os._exit(0)  # killed: blocks being written or queued are cut anywhere
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=120)
    logger = ListLogger()
    vr = VideoRecorder(logger, "kill", spool_dir=spool)
    vr.dump()
    for video in logger.videos:
        assert_numbered(video.frames)  # a prefix of what was recorded, frame for frame
    vr.close()


def test_step_loop_fast_path_follows_setting_changes(stub_env_cls, tmp_path: Path) -> None:
    logger = ListLogger()
    vr = VideoRecorder(logger, "fast", spool_dir=tmp_path)
    env = stub_env_cls(episode_lengths=(50,), pixels=(8, 6, 3)).append_transform(vr)
    td = env.rollout(6, break_when_any_done=False)
    assert vr._fast is not None  # the step loop took the fast path
    vr.skip = 2
    assert vr._fast is None
    td2 = env.rollout(6, break_when_any_done=False)
    vr.dump()
    want = torch.cat([td["pixels"][:1], td["next", "pixels"], td2["pixels"][:1]])
    # after skip=2: frames 0, 2, 4... of the stream counted from its start (7 before)
    stream2 = torch.cat([td2["pixels"][:1], td2["next", "pixels"]])
    want = torch.cat([want[:7], stream2[1::2]])
    assert torch.equal(logger.videos[0].frames, want)


def test_step_loop_shape_change_names_key_and_shapes(tmp_path: Path) -> None:
    vr = VideoRecorder(ListLogger(), "shape", spool_dir=tmp_path)
    done = torch.zeros(1, dtype=torch.bool)
    vr._step(TensorDict(), TensorDict(pixels=numbered(0, 4, 4), done=done))
    vr._step(TensorDict(), TensorDict(pixels=numbered(1, 4, 4), done=done))
    assert vr._fast is not None
    with pytest.raises(VideoError, match=r"'pixels'.*from 4x4 to 6x4.*\(6, 4, 3\)"):
        vr._step(TensorDict(), TensorDict(pixels=numbered(2, 6, 4), done=done))
    with pytest.raises(VideoError, match=r"'pixels'.*non-numeric dtype.*torch.bool"):
        vr._step(TensorDict(), TensorDict(pixels=torch.zeros(4, 4, 3, dtype=torch.bool), done=done))
    vr.close()


def test_a_forked_child_writes_its_frames_with_a_writer_of_its_own(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "fork")
    spool.writer = FrameWriter(block_bytes=2 * FRAME, queued=1)
    parent = spool.open_segment(None, H, W, None)
    for i in range(5):
        parent.write(numbered(i))  # two blocks handed over, one frame still in the block
    pid = os.fork()
    if pid == 0:  # the child: the parent's writer thread does not exist here
        code = 1
        try:
            child = spool.open_segment(1, H, W, None)
            for i in range(7):
                child.write(numbered(100 + i))
            child.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent.close()
    spool.close()
    sizes = {p.name.split(".")[0]: p for p in tmp_path.glob("*.frames")}
    for path, count, start in ((sizes["fork"], 5, 0), (sizes["fork_env1"], 7, 100)):
        data = torch.from_file(str(path), size=count * FRAME, dtype=torch.uint8)
        assert path.stat().st_size == count * FRAME
        assert_numbered(data.view(count, H, W, 3), start)
