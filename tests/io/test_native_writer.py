"""_pwrite.Writer: the native thread that does the spool's writes without the GIL."""

from __future__ import annotations

import errno
import os

import pytest

try:
    from trlrec.io import _pwrite
except ImportError:  # the optional extension is not built: the Python backends cover it
    _pwrite = None

pytestmark = pytest.mark.skipif(_pwrite is None, reason="the C extension is not built")


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_writes_land_in_order_and_are_reaped_once(tmp_path):
    path = tmp_path / "a.frames"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    writer = _pwrite.Writer()
    blocks = [bytes([i]) * (1 << 17) for i in range(6)]  # 128 KiB: dropped from the cache
    for i, block in enumerate(blocks):
        writer.submit(fd, memoryview(block), i * len(block), max(0, (i - 4)) * len(block), 1, i)
    writer.wait(0)
    assert writer.reap() == [(i, 0) for i in range(6)]
    assert writer.reap() == []
    writer.stop()
    os.close(fd)
    assert _read(path) == b"".join(blocks)


def test_a_failed_write_cancels_the_rest_of_its_group_only(tmp_path):
    good = os.open(tmp_path / "good", os.O_WRONLY | os.O_CREAT)
    bad = os.open(tmp_path / "bad", os.O_RDONLY | os.O_CREAT)  # its writes fail: EBADF
    writer = _pwrite.Writer()
    writer.submit(bad, b"x", 0, -1, 7, 0)
    writer.submit(good, b"ab", 0, -1, 8, 1)
    writer.submit(bad, b"y", 1, -1, 7, 2)  # after the failure: skipped, not written
    writer.submit(good, b"cd", 2, -1, 8, 3)
    writer.wait(0)
    assert writer.reap() == [(0, errno.EBADF), (1, 0), (2, errno.ECANCELED), (3, 0)]
    writer.stop()
    os.close(good)
    os.close(bad)
    assert _read(tmp_path / "good") == b"abcd"


def test_stop_writes_what_is_queued_then_refuses_more(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    writer = _pwrite.Writer()
    for i in range(50):
        writer.submit(fd, b"%02d" % i, 2 * i, -1, 1, i)
    writer.stop()
    assert [token for token, _ in writer.reap()] == list(range(50))
    assert _read(tmp_path / "f") == b"".join(b"%02d" % i for i in range(50))
    with pytest.raises(RuntimeError, match="stopped"):
        writer.submit(fd, b"x", 0, -1, 1, 50)
    os.close(fd)


def test_bad_arguments_are_refused_before_anything_is_queued():
    writer = _pwrite.Writer()
    with pytest.raises(TypeError, match=r"submit\(fd, buffer, offset, drop_from, group, token\)"):
        writer.submit(1, b"x", 0)
    with pytest.raises(ValueError, match="fd and offset must be >= 0"):
        writer.submit(-1, b"x", 0, -1, 1, 0)
    with pytest.raises(TypeError, match="bytes-like"):
        writer.submit(1, "text", 0, -1, 1, 0)
    writer.wait(0)
    assert writer.reap() == []


def test_a_forked_child_cannot_use_its_parents_writer(tmp_path):
    writer = _pwrite.Writer()
    writer.submit(os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT), b"x", 0, -1, 1, 0)
    writer.wait(0)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread does not exist here
        try:
            writer.submit(1, b"x", 0, -1, 1, 1)
        except RuntimeError as err:
            os._exit(0 if "another process" in str(err) else 2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert writer.reap() == [(0, 0)]
