"""The I/O backends: one contract, run against every backend (and the fault-injecting one)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from tests.storage.helpers import IO_KINDS
from trlrec.errors import ClosedError, ConfigError, StoreWriteError
from trlrec.io import IOBackend, open_backend
from trlrec.io.fault import FaultBackend


@pytest.fixture(params=IO_KINDS)
def io(request):
    backend = open_backend(request.param)
    yield backend
    backend.close()


def _files(tmp_path, n):
    paths = [str(tmp_path / f"f{i}.memmap") for i in range(n)]
    for p in paths:
        with open(p, "wb") as f:
            f.write(b"." * 8)
    return paths


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_the_chosen_backend_is_the_one_asked_for(io):
    assert isinstance(io, IOBackend)
    assert io.name in ("inline", "thread", "native")
    assert repr(io).startswith(type(io).__name__)


def test_writes_land_at_their_offsets_across_more_files_than_stay_open(tmp_path, io):
    paths = _files(tmp_path, 80)  # more than any backend keeps open
    big = bytes(range(256)) * 512  # 128 KiB: dropped from the page cache behind it
    g = io.new_group()
    tokens = [io.write(p, memoryview(f"<{i}>".encode()), 2, g) for i, p in enumerate(paths)]
    tokens.append(io.write(paths[3], memoryview(big), 8, g))
    assert tokens == list(range(1, 82))
    io.wait(tokens[-1])
    assert io.done() >= tokens[-1]
    assert io.error(g) is None
    for i, p in enumerate(paths):
        head = f"..<{i}>".encode()
        data = _read(p)
        assert data[: len(head)] == head
        assert data[8:] == (big if i == 3 else b"")


def test_a_failed_write_names_its_file_and_skips_the_rest_of_its_group_only(tmp_path, io):
    a, b = _files(tmp_path, 2)
    bad = tmp_path / "dir.memmap"
    bad.mkdir()  # a write to a directory fails: EISDIR
    g, other = io.new_group(), io.new_group()
    io.write(a, memoryview(b"xy"), 0, g)
    io.write(str(bad), memoryview(b"xy"), 0, g)
    io.write(b, memoryview(b"xy"), 0, g)  # after the failure: skipped
    io.write(b, memoryview(b"zz"), 4, other)  # another group: written
    io.barrier()
    err = io.error(g)
    assert isinstance(err, StoreWriteError)
    assert isinstance(err, OSError)
    assert err.errno == errno.EISDIR
    assert "dir.memmap" in str(err)
    assert "committed before stays readable" in str(err)
    assert io.error(other) is None
    assert _read(a)[:2] == b"xy"
    assert _read(b) == b"....zz.."


def test_replace_is_atomic_and_ordered_after_the_writes_before_it(tmp_path, io):
    (target,) = _files(tmp_path, 1)
    final = str(tmp_path / "COMMIT")
    g = io.new_group()
    io.write(target, memoryview(b"data"), 0, g)
    token = io.replace(final, b'{"seq": 1}', g)
    io.wait(token)
    assert _read(final) == b'{"seq": 1}'
    assert _read(target)[:4] == b"data"
    assert not (tmp_path / ".COMMIT.tmp").exists()
    io.replace(final, b'{"seq": 2}', g, durable=True)
    io.barrier()
    assert _read(final) == b'{"seq": 2}'


def test_a_replace_after_a_failed_write_of_its_group_is_skipped(tmp_path, io):
    bad = tmp_path / "dir.memmap"
    bad.mkdir()
    final = tmp_path / "COMMIT"
    final.write_bytes(b"old")
    g = io.new_group()
    io.write(str(bad), memoryview(b"x"), 0, g)
    io.replace(str(final), b"new", g)
    io.barrier()
    assert io.error(g) is not None
    assert final.read_bytes() == b"old"  # nothing lands after a torn write


def test_close_files_then_close_refuses_later_jobs(tmp_path, io):
    (path,) = _files(tmp_path, 1)
    g = io.new_group()
    io.write(path, memoryview(b"ab"), 0, g)
    io.close_files()
    assert _read(path)[:2] == b"ab"
    io.write(path, memoryview(b"cd"), 2, g)  # reopened after close_files
    io.close()
    assert _read(path)[:4] == b"abcd"
    if io.name != "inline":
        with pytest.raises(ClosedError, match="closed"):
            io.write(path, memoryview(b"x"), 0, g)


def test_thread_backends_do_not_write_on_the_callers_thread(tmp_path, monkeypatch):
    (path,) = _files(tmp_path, 1)
    io = open_backend("thread")
    seen = []
    real = io._do_write

    def spy(*args):
        seen.append(threading.current_thread().name)
        real(*args)

    monkeypatch.setattr(io, "_do_write", spy)
    io.wait(io.write(path, memoryview(b"x"), 0, io.new_group()))
    io.close()
    assert seen == ["trlrec-io"]


def test_an_unknown_or_missing_backend_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="unknown I/O backend 'disk'"):
        open_backend("disk")
    monkeypatch.setenv("TRLREC_NATIVE", "0")
    with pytest.raises(ConfigError, match="native I/O backend is not built"):
        open_backend("native")
    assert open_backend("auto").name == "thread"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_the_fault_backend_fails_the_nth_write_and_what_follows(tmp_path, code):
    (path,) = _files(tmp_path, 1)
    io = FaultBackend(fail_write=2, code=code)
    g = io.new_group()
    for i in range(4):
        io.write(path, memoryview(b"w"), i, g)
    assert io.error(g).errno == code
    assert io.failures == 1  # the later writes of the group were skipped
    assert _read(path)[:4] == b"w..."


def test_the_fault_backend_fails_chosen_files_and_commits(tmp_path):
    a, b = _files(tmp_path, 2)
    io = FaultBackend(fail_write=lambda p, n: p == b, fail_replace=lambda p: p.endswith("COMMIT"))
    g1, g2, g3 = io.new_group(), io.new_group(), io.new_group()
    io.write(a, memoryview(b"ok"), 0, g1)
    io.write(b, memoryview(b"no"), 0, g2)
    io.replace(str(tmp_path / "COMMIT"), b"{}", g3)
    assert io.error(g1) is None
    assert "f1.memmap" in str(io.error(g2))
    assert "COMMIT" in str(io.error(g3))
    assert not os.path.exists(tmp_path / "COMMIT")
