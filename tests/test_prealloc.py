"""Reservation: disk blocks allocated ahead of writes, and given back when the file is done."""

from __future__ import annotations

import os

import pytest

from trlrec.prealloc import Reservation

MiB = 2**20


def _allocated(fd: int) -> int:
    return os.fstat(fd).st_blocks * 512


@pytest.fixture
def fd(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    yield fd
    os.close(fd)


def test_appended_file_keeps_its_size_and_gives_the_tail_back(fd):
    r = Reservation(4 * MiB)
    if not r.enabled:
        pytest.skip("no fallocate(2) on this platform")
    data = os.urandom(MiB)
    r.ensure(fd, MiB)
    os.write(fd, data)
    if not r.enabled:
        pytest.skip("this file system cannot reserve blocks")
    assert os.fstat(fd).st_size == MiB  # KEEP_SIZE: the size is what was written
    assert _allocated(fd) >= 5 * MiB
    r.release(fd)
    assert MiB <= _allocated(fd) < MiB + 64 * 1024
    assert os.pread(fd, MiB, 0) == data


def test_a_window_is_reserved_once_per_window(fd):
    r = Reservation(2 * MiB)
    if not r.enabled:
        pytest.skip("no fallocate(2) on this platform")
    r.ensure(fd, 4096)
    first = r.reserved
    r.ensure(fd, first - 1)  # inside the reservation: nothing to do
    assert r.reserved == first
    r.ensure(fd, first + 1)
    assert r.reserved == first + 1 + 2 * MiB
