"""The dataset directory: its ``dataset.json`` marker and its shard directories."""

from __future__ import annotations

import os
import secrets
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
from trlrec.storage.identity import shard_prefix
from trlrec.storage.jsonio import dumps, fsync_path, read_json

__all__ = ["open_dataset", "create_dataset", "new_shard_dir", "shard_dirs", "check_metadata"]


def check_metadata(
    metadata: Any, what: str = "metadata", max_bytes: int | None = None
) -> dict[str, Any]:
    """Check that ``metadata`` is a JSON-serialisable dict (of at most ``max_bytes``)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise UnsupportedDataError(f"{what} must be a dict, got {type(metadata).__name__}")
    try:
        size = len(dumps(metadata, what).encode())
    except TypeError as err:
        raise UnsupportedDataError(str(err)) from None
    if max_bytes is not None and size > max_bytes:
        raise UnsupportedDataError(
            f"{what} takes {size} bytes as JSON, more than the {max_bytes} allowed; record "
            "large values as keys of the steps instead"
        )
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


def create_dataset(
    path: Path, metadata: dict[str, Any], *, durable: bool = False
) -> dict[str, Any]:
    """Open the store at ``path`` for writing, creating it if needed (never overwriting).

    Several processes may create the same new store at once: one marker wins (a hard
    link never replaces), the others open it. ``durable``: the marker's bytes and every
    new directory entry (the store directory, ``shards/``, ``dataset.json``) are
    fsync'ed, so a durable commit's store survives a power cut.
    """
    created = _make_dirs(path, durable)
    marker = path / DATASET_FILE
    if not marker.exists():
        # A writer killed while creating the store leaves its temp marker: not user data.
        leftover = f".{DATASET_FILE}."
        extra = [
            p.name
            for p in path.iterdir()
            if p.name != SHARDS_DIR and not (p.name.startswith(leftover) and p.suffix == ".tmp")
        ]
        # another process may have linked its marker (and written more) since exists()
        if extra and not marker.exists():
            raise NotAStoreError(
                f"{str(path)!r} is a non-empty directory that is not a trlrec store "
                f"(it holds {extra[:3]}); choose an empty or new directory"
            )
        if not extra:
            _write_marker(path, metadata, durable)
            created = True
    if durable and created:
        fsync_path(path)
    return open_dataset(path)


def _make_dirs(path: Path, durable: bool) -> bool:
    """Create the store directory and ``shards/``; whether an entry was created."""
    created = False
    try:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        shards = path / SHARDS_DIR
        if not shards.exists():
            shards.mkdir(exist_ok=True)
            created = True
        if durable:
            for new in reversed(missing):  # each new directory's entry in its parent
                fsync_path(new.parent)
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"cannot create store {str(path)!r}: {err.strerror}"
        ) from err
    return created or bool(missing)


def _write_marker(path: Path, metadata: dict[str, Any], durable: bool) -> None:
    """Link a new ``dataset.json`` into ``path``, unless another process linked one first."""
    marker = path / DATASET_FILE
    info = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metadata": metadata,
    }
    tmp = path / f".{DATASET_FILE}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps(info, "metadata"))
            if durable:
                f.flush()
                os.fsync(f.fileno())
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


def new_shard_dir(path: Path, shard: str | None, *, durable: bool = False) -> Path:
    """The shard directory for a new writer: a fresh one named for this process, or the named one.

    A fresh shard is ``<host>[-r<rank>]-p<pid>-<index>``
    (:func:`~trlrec.storage.identity.shard_prefix`), claimed with an exclusive
    ``mkdir``, so that writers in other processes or on other machines sharing the
    filesystem never take the same one. ``durable``: a new directory's entry in
    ``shards/`` is fsync'ed.
    """
    shards = path / SHARDS_DIR
    try:
        if shard is not None:
            directory = shards / safe_name(shard)
            if not directory.exists():
                directory.mkdir(exist_ok=True)
                if durable:
                    fsync_path(shards)
            return directory
        prefix = shard_prefix() + "-"
        i = sum(1 for p in shards.iterdir() if p.name.startswith(prefix))
        while True:
            directory = shards / f"{prefix}{i:06d}"
            try:
                directory.mkdir()
            except FileExistsError:
                i += 1
                continue
            if durable:
                fsync_path(shards)
            return directory
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"cannot create a shard in {str(shards)!r}: {err.strerror}"
        ) from err


def shard_dirs(path: Path) -> list[Path]:
    """Every entry of the store's ``shards/`` directory, in name order (committed or not)."""
    shards = path / SHARDS_DIR
    return sorted(shards.iterdir()) if shards.is_dir() else []
