"""Merging stores recorded separately into one, linking their files rather than copying them.

``trlrec merge SRC... DST``: every committed shard of every source becomes a shard of a
new store ``DST``. A store is many shards already (one per writer), and a shard is
self-contained (its schema, index, commit record and chunks), so merging is putting the
shards side by side: each column file (``*.memmap``, the data) is **hard-linked** where
the filesystem allows it (no data copied, no space used) and copied otherwise (another
filesystem, or links refused); the small files (commit record, index, JSON) are copied.

Linking the columns is safe because trlrec never rewrites a committed row: a writer
continuing a shard (in a source or in the merged store) goes on in a fresh chunk, and
the index files it appends to and truncates are not shared. Pass ``copy=True`` if the
sources may be changed otherwise.

Crash-safe: the new store is built in a hidden directory next to ``DST`` and renamed to
``DST`` once complete; a crash leaves that directory (``.<DST>.merge-*``), never a
partial ``DST``. Refused: a ``DST`` that exists, a source that is not a store, a shard
still being written (its lock is held), a damaged shard (its commit record or schema),
and shards whose columns (keys, roles, shapes, dtypes) differ from the first one's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trlrec.errors import ConfigError, CorruptStoreError, SchemaError, ShardLockedError, StoreError
from trlrec.naming import safe_name
from trlrec.storage.dataset import create_dataset, open_dataset, shard_dirs
from trlrec.storage.format import COMMIT_FILE, LOCK_FILE, SCHEMA_FILE, SHARDS_DIR
from trlrec.storage.jsonio import fsync_path, read_json
from trlrec.storage.schema import Schema

__all__ = ["MergeResult", "merge_stores"]

_SPECS_FILE = "specs.json"  # trlrec.specs.SPECS_FILE (not imported: it imports torchrl)


@dataclass
class MergeResult:
    """What :func:`merge_stores` did."""

    path: Path
    shards: list[str] = field(default_factory=list)  # the new store's shard names
    linked: int = 0  # column files hard-linked
    copied: int = 0  # column files copied (no link possible, or copy=True)
    bytes_linked: int = 0  # their sizes
    bytes_copied: int = 0
    skipped: list[str] = field(default_factory=list)  # uncommitted shards left out


def merge_stores(
    sources: list[str | os.PathLike[str]], dest: str | os.PathLike[str], *, copy: bool = False
) -> MergeResult:
    """Make a new store ``dest`` holding every committed shard of ``sources``.

    Args:
        sources: the stores to merge (at least one).
        dest: the new store; it must not exist.
        copy: copy every file instead of hard-linking it.

    Returns:
        What was merged: the shard names, the files linked and copied.

    Raises:
        ConfigError: no source, or ``dest`` exists or is one of the sources.
        NotAStoreError: a source is not a trlrec store.
        ShardLockedError: a shard is still being written.
        SchemaError: a shard's columns differ from the first shard's.
        CorruptStoreError: a shard's commit record or schema is damaged.

    Examples:
        >>> import tempfile, torch
        >>> from tensordict import TensorDict
        >>> from trlrec import TrajectoryReader, TrajectoryWriter
        >>> root = tempfile.mkdtemp()
        >>> step = TensorDict(observation=torch.zeros(2), next=TensorDict(
        ...     observation=torch.ones(2), done=torch.tensor([True])))
        >>> for name in ("a", "b"):
        ...     with TrajectoryWriter(f"{root}/{name}") as w:
        ...         w.append(step)
        >>> result = merge_stores([f"{root}/a", f"{root}/b"], f"{root}/ab")
        >>> TrajectoryReader(f"{root}/ab").num_episodes, len(result.shards)
        (2, 2)
    """
    if not sources:
        raise ConfigError("merge needs at least one source store")
    dst = Path(dest)
    srcs = [Path(s) for s in sources]
    if dst.exists() or dst.is_symlink():
        raise ConfigError(f"{str(dst)!r} exists; merge writes a new store: pick a new path")
    for src in srcs:
        if src.resolve() == dst.resolve():
            raise ConfigError(f"{str(dst)!r} is also a source; pick a new path for the merge")
    infos = [open_dataset(src) for src in srcs]
    plan, skipped = _plan(srcs)
    tmp = dst.parent / f".{dst.name}.merge-{os.getpid()}-{secrets.token_hex(4)}"
    result = MergeResult(dst, skipped=skipped)
    try:
        create_dataset(tmp, _metadata(srcs, infos))
        first_specs = next((s / _SPECS_FILE for s in srcs if (s / _SPECS_FILE).is_file()), None)
        if first_specs is not None:
            _place(first_specs, tmp / _SPECS_FILE, True, None)
        for directory, name in plan:
            _place_tree(directory, tmp / SHARDS_DIR / name, copy, result)
            result.shards.append(name)
        fsync_path(tmp / SHARDS_DIR)
        fsync_path(tmp)
        os.rename(tmp, dst)  # the whole store appears at once (a directory: never replaced)
        fsync_path(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _plan(srcs: list[Path]) -> tuple[list[tuple[Path, str]], list[str]]:
    """The shards to merge with their new names, and the uncommitted ones left out."""
    plan: list[tuple[Path, str]] = []
    skipped: list[str] = []
    taken: set[str] = set()
    first: tuple[Schema, Path] | None = None
    for i, src in enumerate(srcs):
        for directory in shard_dirs(src):
            if not directory.is_dir() or directory.is_symlink():
                raise CorruptStoreError(
                    f"{str(directory)!r} is not a shard directory; the store is damaged"
                )
            _check_not_written(directory)
            if not (directory / COMMIT_FILE).is_file():
                skipped.append(str(directory))
                continue
            schema = Schema.from_json(read_json(directory / SCHEMA_FILE), directory / SCHEMA_FILE)
            if first is None:
                first = (schema, directory)
            elif schema.entries != first[0].entries:
                raise SchemaError(
                    f"the shard {str(directory)!r} records other columns than "
                    f"{str(first[1])!r}: {_columns(schema)} vs {_columns(first[0])}; merge "
                    "only stores of the same schema"
                )
            name = directory.name
            if name in taken:
                name = safe_name(f"{name}-m{i}")
            while name in taken:
                name = safe_name(f"{name}-{secrets.token_hex(2)}")
            taken.add(name)
            plan.append((directory, name))
    return plan, skipped


def _columns(schema: Schema) -> list[str]:
    return [f"{'/'.join(e.stored_key)} {e.role} {list(e.shape)} {e.dtype}" for e in schema.entries]


def _check_not_written(directory: Path) -> None:
    """Refuse a shard whose writer still holds its lock (its files are changing)."""
    lock = directory / LOCK_FILE
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ShardLockedError(
            f"the shard {str(directory)!r} is being written (its writer holds {LOCK_FILE}); "
            "merge once its writer has closed"
        ) from None
    finally:
        os.close(fd)


def _metadata(srcs: list[Path], infos: list[dict[str, Any]]) -> dict[str, Any]:
    """The new store's metadata: the sources' if they agree, else each source's."""
    metas = [info.get("metadata", {}) for info in infos]
    if all(m == metas[0] for m in metas):
        return dict(metas[0])
    return {"merged": [{"path": str(s), "metadata": m} for s, m in zip(srcs, metas, strict=True)]}


def _place_tree(src: Path, dst: Path, copy: bool, result: MergeResult) -> None:
    """Recreate the directory ``src`` as ``dst``: its files linked (or copied), no LOCK."""
    dst.mkdir()
    for entry in sorted(src.iterdir()):
        if entry.name == LOCK_FILE:
            continue
        if entry.is_symlink():
            raise CorruptStoreError(
                f"{str(entry)!r} is a symbolic link; a store holds none. Refusing to follow it"
            )
        if entry.is_dir():
            _place_tree(entry, dst / entry.name, copy, result)
        else:
            data = entry.suffix == ".memmap"
            _place(entry, dst / entry.name, copy or not data, result if data else None)
    fsync_path(dst)


def _place(src: Path, dst: Path, copy: bool, result: MergeResult | None) -> None:
    """Hard-link ``src`` as ``dst``, or copy it when links are refused (or ``copy``).

    ``result``: counts the file (a column file), or None (a small file).
    """
    if not copy:
        try:
            os.link(src, dst)
            if result is not None:
                result.linked += 1
                result.bytes_linked += dst.stat().st_size
            return
        except OSError as err:
            if err.errno not in (
                errno.EXDEV,
                errno.EPERM,
                errno.EMLINK,
                errno.ENOTSUP,
                errno.EACCES,
            ):
                raise _write_error(err, src, dst) from err
    try:
        _copy_sparse(src, dst)
    except OSError as err:
        raise _write_error(err, src, dst) from err
    if result is not None:
        result.copied += 1
        result.bytes_copied += dst.stat().st_size


def _copy_sparse(src: Path, dst: Path) -> None:
    """Copy a file keeping its holes (a chunk is preallocated sparse: mostly holes)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        size = os.fstat(fin.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError as err:
                if err.errno != errno.ENXIO:  # ENXIO: only a hole is left
                    raise
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            fin.seek(start)
            fout.seek(start)
            left = end - start
            while left > 0:
                block = fin.read(min(left, 1 << 20))
                if not block:
                    break
                fout.write(block)
                left -= len(block)
            offset = end
        fout.truncate(size)
        fout.flush()
        os.fsync(fout.fileno())


def _write_error(err: OSError, src: Path, dst: Path) -> StoreError:
    from trlrec.errors import StoreWriteError

    return StoreWriteError(
        err.errno,
        f"cannot place {str(src)!r} as {str(dst)!r}: {err.strerror}; nothing of the merge is "
        "left behind",
    )
