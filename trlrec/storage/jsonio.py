"""Atomic JSON writes and checked JSON reads: the only way metadata touches disk."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

from trlrec.errors import CorruptStoreError, NotAStoreError, StoreWriteError

__all__ = [
    "MAX_JSON_BYTES",
    "dumps",
    "write_json_atomic",
    "read_json",
    "loads",
    "open_regular",
    "fsync_path",
]

MAX_JSON_BYTES = 64 * 2**20  # metadata files larger than this are refused as damaged


def dumps(value: Any, what: str) -> str:
    """Serialise ``value`` to compact JSON, or say which value could not be."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{what} must be JSON-serialisable (dict/list/str/int/float/bool/None, finite "
            f"floats); got {value!r}: {err}"
        ) from err


def fsync_path(path: Path) -> None:
    """Fsync a file, or a directory (so a rename or a new entry in it survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_tmp(path: Path) -> Path:
    """The temporary file that :func:`write_json_atomic` writes, then renames to ``path``."""
    return path.with_name(f".{path.name}.tmp")


def write_json_atomic(path: Path, value: Any, *, durable: bool = False, what: str = "") -> None:
    """Write ``value`` as JSON to ``path`` atomically (temp file + rename).

    A reader sees either the old file or the new one, never a mix, even if the
    process is killed during the write. With ``durable`` the data and the
    rename are fsync'ed.
    """
    text = dumps(value, what or path.name)
    tmp = atomic_tmp(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"could not write {str(path)!r}: {err.strerror}; check space and permissions"
        ) from err


def open_regular(path: Path) -> io.BufferedReader:
    """Open a file of the store for reading; anything but a regular file is damage.

    A FIFO in a file's place would block the reader forever, a directory or a device
    is not the file the store describes: each is a ``CorruptStoreError`` naming it.

    Raises:
        NotAStoreError: the file is missing.
        CorruptStoreError: it is not a regular file, or cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise NotAStoreError(f"{str(path)!r} is missing") from err
    except (OSError, ValueError) as err:  # ValueError: a NUL in the name
        raise CorruptStoreError(f"cannot open {str(path)!r}: {err}; the store is damaged") from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device"
        raise CorruptStoreError(
            f"{str(path)!r} is a {kind}, not a regular file; the store is damaged"
        )
    os.set_blocking(fd, True)
    return io.BufferedReader(io.FileIO(fd, "rb"))


def read_json(path: Path, *, kind: type = dict, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file of the store, refusing oversized, unparsable or mistyped content.

    ``max_bytes`` is the most the file may hold (at most :data:`MAX_JSON_BYTES`); a larger
    file is refused before a byte of it is read or parsed.
    """
    limit = min(max_bytes, MAX_JSON_BYTES)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise CorruptStoreError(
                f"{str(path)!r} is {size} bytes, larger than the {limit} allowed; "
                "the file is damaged"
            )
        try:
            raw = f.read(limit + 1)
        except OSError as err:
            raise CorruptStoreError(f"cannot read {str(path)!r}: {err.strerror}") from err
    value = loads(raw, path)
    if not isinstance(value, kind):
        raise CorruptStoreError(
            f"{str(path)!r} holds a {type(value).__name__}, expected a {kind.__name__}"
        )
    return value


def loads(raw: bytes, path: Path, what: str = "") -> Any:
    """Parse JSON read from ``path`` (``what`` says which part of it), or say it is damaged.

    Deep nesting (``RecursionError``) and integers too long to convert (``ValueError``)
    are damage like any other unparsable text.
    """
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        where = f" ({what})" if what else ""
        raise CorruptStoreError(
            f"{str(path)!r}{where} is not valid JSON ({type(err).__name__}: {str(err)[:200]}); "
            "the file is damaged"
        ) from err
