"""The dataset directory: its ``dataset.json`` marker and its shard directories."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from trlrec.errors import (
    CorruptStoreError,
    NotAStoreError,
    StoreWriteError,
    UnsupportedDataError,
)
from trlrec.naming import safe_name
from trlrec.storage.format import (
    DATASET_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    SHARDS_DIR,
    store_format,
)
from trlrec.storage.jsonio import dumps, read_json

__all__ = ["open_dataset", "create_dataset", "new_shard_dir", "shard_dirs", "check_metadata"]


def check_metadata(metadata: Any, what: str = "metadata") -> dict[str, Any]:
    """Check that ``metadata`` is a JSON-serialisable dict and return it."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise UnsupportedDataError(f"{what} must be a dict, got {type(metadata).__name__}")
    try:
        dumps(metadata, what)
    except TypeError as err:
        raise UnsupportedDataError(str(err)) from None
    return metadata


def open_dataset(path: Path) -> dict[str, Any]:
    """Read and check ``dataset.json`` of the store at ``path``."""
    if not path.is_dir():
        raise NotAStoreError(f"{str(path)!r} does not exist or is not a directory")
    marker = path / DATASET_FILE
    if not marker.is_file():
        raise NotAStoreError(f"{str(path)!r} is not a trlrec store: it has no {DATASET_FILE}")
    if os.path.dirname(os.path.realpath(marker)) != os.path.realpath(path):
        raise CorruptStoreError(
            f"{str(marker)!r} is a link to {os.path.realpath(marker)!r}, outside the store; "
            "refusing to follow it"
        )
    info = read_json(marker)
    if info.get("format") != FORMAT_NAME:
        raise NotAStoreError(f"{str(marker)!r} is not a trlrec dataset file")
    store_format(info.get("version"), marker)
    if not isinstance(info.get("metadata", {}), dict):
        raise NotAStoreError(f"{str(marker)!r}: 'metadata' is not an object")
    return info


def create_dataset(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Open the store at ``path`` for writing, creating it if needed (never overwriting)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / SHARDS_DIR).mkdir(exist_ok=True)
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"cannot create store {str(path)!r}: {err.strerror}"
        ) from err
    marker = path / DATASET_FILE
    if not marker.exists():
        # A writer killed while creating the store leaves its temp marker: not user data.
        leftover = f".{DATASET_FILE}."
        extra = [
            p.name
            for p in path.iterdir()
            if p.name != SHARDS_DIR and not (p.name.startswith(leftover) and p.suffix == ".tmp")
        ]
        if extra:
            raise NotAStoreError(
                f"{str(path)!r} is a non-empty directory that is not a trlrec store "
                f"(it holds {extra[:3]}); choose an empty or new directory"
            )
        info = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": metadata,
        }
        tmp = path / f".{DATASET_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(dumps(info, "metadata"), encoding="utf-8")
            try:
                os.link(tmp, marker)  # atomic, and never replaces another writer's marker
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        except OSError as err:
            raise StoreWriteError(
                err.errno,
                f"cannot write {str(marker)!r}: {err.strerror}; check space and permissions",
            ) from err
    return open_dataset(path)


def new_shard_dir(path: Path, shard: str | None) -> Path:
    """The shard directory for a new writer: a fresh numbered one, or the named one."""
    shards = path / SHARDS_DIR
    try:
        if shard is not None:
            directory = shards / safe_name(shard)
            directory.mkdir(exist_ok=True)
            return directory
        i = len(list(shards.iterdir()))
        while True:
            directory = shards / f"shard-{i:06d}"
            try:
                directory.mkdir()
                return directory
            except FileExistsError:
                i += 1
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"cannot create a shard in {str(shards)!r}: {err.strerror}"
        ) from err


def shard_dirs(path: Path) -> list[Path]:
    """Every entry of the store's ``shards/`` directory, in name order (committed or not)."""
    shards = path / SHARDS_DIR
    return sorted(shards.iterdir()) if shards.is_dir() else []
