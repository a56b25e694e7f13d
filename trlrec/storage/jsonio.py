"""Atomic JSON writes and checked JSON reads: the only way metadata touches disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trlrec.errors import CorruptStoreError, NotAStoreError, StoreWriteError

__all__ = ["MAX_JSON_BYTES", "dumps", "write_json_atomic", "read_json", "fsync_dir"]

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


def fsync_dir(path: Path) -> None:
    """Fsync a directory so a rename inside it survives a power loss."""
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
            fsync_dir(path.parent)
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"could not write {str(path)!r}: {err.strerror}; check space and permissions"
        ) from err


def read_json(path: Path, *, kind: type = dict) -> Any:
    """Read a JSON file of the store, refusing oversized, unparsable or mistyped content."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise NotAStoreError(f"{str(path)!r} is missing") from err
    if size > MAX_JSON_BYTES:
        raise CorruptStoreError(
            f"{str(path)!r} is {size} bytes, larger than the {MAX_JSON_BYTES} allowed; "
            "the file is damaged"
        )
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptStoreError(
            f"{str(path)!r} is not valid JSON ({err}); the file is damaged"
        ) from err
    if not isinstance(value, kind):
        raise CorruptStoreError(
            f"{str(path)!r} holds a {type(value).__name__}, expected a {kind.__name__}"
        )
    return value
