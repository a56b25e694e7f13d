"""run_writes: a block's deferred chunk writes, natively (one GIL release) or in Python."""

from __future__ import annotations

import os

import pytest

from trlrec.errors import StoreWriteError
from trlrec.storage.chunks import PendingWrite, run_writes
from trlrec.storage.fdcache import FdCache


@pytest.fixture(params=["native", "python"])
def path_kind(request, monkeypatch):
    monkeypatch.setenv("TRLREC_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def _files(tmp_path, n):
    paths = [str(tmp_path / f"f{i}.memmap") for i in range(n)]
    for p in paths:
        with open(p, "wb") as f:
            f.write(b"." * 8)
    return paths


def test_writes_land_at_their_offsets_across_more_files_than_stay_open(tmp_path, path_kind):
    paths = _files(tmp_path, 10)
    big = bytes(range(256)) * 512  # 128 KiB: dropped from the cache behind it
    writes = [PendingWrite(p, memoryview(f"<{i}>".encode()), 2) for i, p in enumerate(paths)]
    writes.append(PendingWrite(paths[3], memoryview(big), 8))
    fds = FdCache(capacity=4)  # 10 files: the native path writes them in groups
    run_writes(writes, fds)
    fds.close()
    for i, p in enumerate(paths):
        with open(p, "rb") as f:
            data = f.read()
        head = f"..<{i}>".encode()
        assert data[: len(head)] == head
        assert data[8:] == (big if i == 3 else b"")


def test_a_failed_write_names_its_file_and_the_writes_before_it_are_done(tmp_path, path_kind):
    paths = _files(tmp_path, 3)
    fds = FdCache()
    real_get = fds.get
    read_only = os.open(paths[1], os.O_RDONLY)
    fds.get = lambda p: read_only if p == paths[1] else real_get(p)
    writes = [PendingWrite(p, memoryview(b"xy"), 0) for p in paths]
    with pytest.raises(StoreWriteError, match=r"could not write '.*f1\.memmap'.*committed"):
        run_writes(writes, fds)
    os.close(read_only)
    fds.close()
    contents = []
    for p in paths:
        with open(p, "rb") as f:
            contents.append(f.read(2))
    assert contents[:2] == [b"xy", b".."]


def test_a_file_that_cannot_be_opened_is_named(tmp_path, path_kind):
    missing = str(tmp_path / "gone.memmap")
    with pytest.raises(StoreWriteError, match=r"could not write '.*gone\.memmap'"):
        run_writes([PendingWrite(missing, memoryview(b"x"), 0)], FdCache())


def test_native_pwrite_all_refuses_bad_items():
    from trlrec.storage.native import _pwrite

    with pytest.raises(TypeError, match="list of writes"):
        _pwrite.pwrite_all(())
    with pytest.raises(TypeError, match=r"tuple \(fd, buffer, offset, drop_from\)"):
        _pwrite.pwrite_all([(1, b"x", 0)])
    with pytest.raises(ValueError, match="fd and offset must be >= 0"):
        _pwrite.pwrite_all([(-1, b"x", 0, -1)])
    with pytest.raises(TypeError, match="bytes-like"):
        _pwrite.pwrite_all([(1, "text", 0, -1)])
