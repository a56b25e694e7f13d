"""Scratch directories on the repository's disk, and what a directory takes on it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["scratch", "allocated_bytes"]

REPO = Path(__file__).resolve().parent.parent


def _base() -> Path:
    """The system temp dir when it is on the repository's disk (not tmpfs), else the repo."""
    tmp = Path(tempfile.gettempdir())
    try:
        same = os.stat(tmp).st_dev == os.stat(REPO).st_dev
    except OSError:
        same = False
    if same:
        return tmp
    base = REPO / ".bench-tmp"
    base.mkdir(exist_ok=True)
    return base


@contextmanager
def scratch(prefix: str = "trlrec-bench-") -> Iterator[Path]:
    """A fresh directory on the same disk as the repository, deleted afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_base()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def allocated_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (``st_blocks * 512``, as ``du``)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total
