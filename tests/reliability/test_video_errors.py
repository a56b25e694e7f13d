"""OS errors of the video spool are trlrec errors naming the file (issue 18)."""

from __future__ import annotations

import errno
import os
import resource
import signal

import pytest
import torch
from tensordict import TensorDict

from tests.reliability._worker import in_child
from trlrec import VideoRecorder
from trlrec.errors import StoreWriteError
from trlrec.video.spool import Spool


class Never:
    def log_video(self, *args, **kwargs):
        raise AssertionError("not called")


def test_sidecar_over_the_file_size_limit_names_the_file(tmp_path):
    def child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # a sidecar is ~300 bytes
        try:
            Spool(tmp_path, "clip").open_segment(None, 8, 8, None)
        except StoreWriteError as err:
            return f"{isinstance(err, OSError)} {err.errno} {err}"
        return "no error"

    out = in_child(child)
    assert out.startswith(f"True {errno.EFBIG} "), out
    assert ".video.json" in out
    assert "file size limit" in out
    assert "ulimit -f" in out


def test_next_segment_after_a_full_disk_is_a_store_write_error(tmp_path, monkeypatch):
    vr = VideoRecorder(None, "clip", spool_dir=tmp_path, episode_trigger=lambda i: True)
    frame = torch.zeros(8, 8, 3, dtype=torch.uint8)
    done = TensorDict(pixels=frame, done=torch.tensor([True]), batch_size=[])
    vr(TensorDict(pixels=frame, batch_size=[]))
    vr(done)  # the first video ends; the next one starts with the next frame
    real_open = os.open

    def full(path, flags, *args):
        if str(path).endswith(".frames"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(StoreWriteError, match=r"\.frames'.*No space left") as info:
        vr(TensorDict(pixels=frame, batch_size=[]))
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    vr.close()


def test_more_sub_env_videos_than_open_files_is_a_store_write_error(tmp_path):
    def child():
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 24, hard))
        vr = VideoRecorder(Never(), "clip", spool_dir=tmp_path, make_grid=False)
        frames = torch.zeros(64, 1, 8, 8, 3, dtype=torch.uint8)
        try:
            vr.extend(TensorDict(pixels=frames, batch_size=[64, 1]))  # 64 sub-envs, one step
        except StoreWriteError as err:
            return f"{isinstance(err, OSError)} {err.errno} {err}"
        return "no error"

    out = in_child(child)
    assert out.startswith(f"True {errno.EMFILE} "), out
    assert "ulimit -n" in out
    assert "clip_env" in out
