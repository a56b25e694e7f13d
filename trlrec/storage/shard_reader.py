"""Read one shard: its commit record, episode index and chunks, each checked against the files."""

from __future__ import annotations

import json
import math
import os
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from tensordict import MemoryMappedTensor, TensorDict

from trlrec.errors import CorruptStoreError
from trlrec.storage.format import (
    COMMIT_FILE,
    EPISODE_FIELDS,
    EPISODE_META_FILE,
    EPISODE_RECORD_BYTES,
    EPISODES_FILE,
    FLAG_OPEN,
    SCHEMA_FILE,
    SHARD_FILE,
    STREAMS_DIR,
    chunk_dir_name,
)
from trlrec.storage.jsonio import read_json
from trlrec.storage.schema import Entry, Key, Schema
from trlrec.storage.shard import read_commit

__all__ = ["ShardReader", "EpisodeInfo"]

_CACHE = 16


class EpisodeInfo(dict):
    """Where an episode lives: shard, stream, rows, steps and flags."""


def _inside(root: Path, path: Path) -> Path:
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise CorruptStoreError(
            f"{str(path)!r} resolves to {str(real)!r}, outside the store {str(root)!r}; "
            "refusing to follow it"
        )
    return real


class ShardReader:
    """A read-only view of one shard's committed data."""

    def __init__(self, root: Path, directory: Path):
        self.root = root
        self.directory = _inside(root, directory)
        self.name = directory.name
        self.commit = read_commit(_inside(root, directory / COMMIT_FILE))
        self.schema = Schema.from_json(
            read_json(_inside(root, directory / SCHEMA_FILE)), directory / SCHEMA_FILE
        )
        shard_file = directory / SHARD_FILE
        self.metadata: dict[str, Any] = (
            read_json(_inside(root, shard_file)).get("metadata", {}) if shard_file.exists() else {}
        )
        self.chunk_rows: int = self.commit["chunk_rows"]
        self.streams: list[list[int]] = self.commit["streams"]
        if len(self.streams) != self.schema.num_streams:
            raise CorruptStoreError(
                f"{str(directory / COMMIT_FILE)!r} lists {len(self.streams)} streams, the schema "
                f"{self.schema.num_streams}; the shard is damaged"
            )
        self.num_closed = self.commit["episodes"]
        self._check_rows()
        self._records = self._map_records()
        self.open_episodes = [
            (b, s[2], s[3], s[4]) for b, s in enumerate(self.streams) if s[2] >= 0 and s[3] > 0
        ]
        self.num_episodes = self.num_closed + len(self.open_episodes)
        self.num_steps = sum(s[1] for s in self.streams)
        self._chunks: OrderedDict[tuple[int, int], dict[Key, torch.Tensor]] = OrderedDict()

    def _check_rows(self) -> None:
        """Check the commit's row counts against the chunks and index files that exist."""
        commit = self.directory / COMMIT_FILE
        for b, (next_row, *_rest) in enumerate(self.streams):
            if next_row == 0:
                continue
            last = chunk_dir_name((next_row - 1) // self.chunk_rows)
            if not (self.directory / STREAMS_DIR / str(b) / last).is_dir():
                raise CorruptStoreError(
                    f"{str(commit)!r} counts {next_row} rows in stream {b}, but its chunk "
                    f"{last} does not exist; the commit record or the chunks are damaged"
                )
        meta_bytes = self.commit["episode_meta_bytes"]
        if meta_bytes:
            path = _inside(self.root, self.directory / EPISODE_META_FILE)
            size = path.stat().st_size if path.exists() else 0
            if size < meta_bytes:
                raise CorruptStoreError(
                    f"{str(path)!r} is {size} bytes; its commit record counts {meta_bytes}. "
                    "The file is truncated"
                )

    def _map_records(self) -> torch.Tensor | None:
        if self.num_closed == 0:
            return None
        path = _inside(self.root, self.directory / EPISODES_FILE)
        need = self.num_closed * EPISODE_RECORD_BYTES
        size = path.stat().st_size if path.exists() else 0
        if size < need:
            raise CorruptStoreError(
                f"{str(path)!r} is {size} bytes; its commit record counts {self.num_closed} "
                f"episodes ({need} bytes). The file is truncated"
            )
        data = torch.from_file(str(path), shared=False, size=need // 8, dtype=torch.int64)
        return data.view(self.num_closed, len(EPISODE_FIELDS))

    def info(self, i: int) -> EpisodeInfo:
        """Where episode ``i`` of this shard lives, checked against the commit record."""
        if i < self.num_closed:
            rec = dict(zip(EPISODE_FIELDS, self._records[i].tolist(), strict=True))
        else:
            b, start, steps, first = self.open_episodes[i - self.num_closed]
            rec = dict(
                stream=b, start_row=start, num_steps=steps, flags=FLAG_OPEN,
                first_transition=first, meta_offset=-1, meta_length=0, reserved=0,
            )  # fmt: skip
        b, start, steps = rec["stream"], rec["start_row"], rec["num_steps"]
        if not (0 <= b < len(self.streams)) or start < 0 or steps < 1:
            raise CorruptStoreError(
                f"{str(self.directory / EPISODES_FILE)!r}: episode {i} has stream {b}, start "
                f"{start}, {steps} steps; the index is damaged"
            )
        if start + steps >= self.streams[b][0]:
            raise CorruptStoreError(
                f"{str(self.directory / EPISODES_FILE)!r}: episode {i} ends at row {start + steps}"
                f", past the {self.streams[b][0]} committed rows of stream {b}; index damaged"
            )
        return EpisodeInfo(shard=self.name, index=i, **rec)

    def episode_metadata(self, i: int) -> dict[str, Any]:
        """The metadata attached to episode ``i`` (``{}`` when none)."""
        info = self.info(i)
        if i >= self.num_closed:
            b = info["stream"]
            return dict(self.commit["open_meta"].get(str(b), {}))
        offset, length = info["meta_offset"], info["meta_length"]
        if offset < 0:
            return {}
        path = _inside(self.root, self.directory / EPISODE_META_FILE)
        if length < 0 or offset + length > self.commit["episode_meta_bytes"]:
            raise CorruptStoreError(
                f"{str(path)!r}: episode {i} points at bytes {offset}..{offset + length}, past "
                f"the {self.commit['episode_meta_bytes']} committed; the index is damaged"
            )
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset + length > size:  # never read (allocate) past the file's real end
                    raise CorruptStoreError(
                        f"{str(path)!r} is {size} bytes; episode {i}'s metadata lies at bytes "
                        f"{offset}..{offset + length}. The file is truncated"
                    )
                f.seek(offset)
                raw = f.read(length)
        except OSError as err:
            raise CorruptStoreError(f"cannot read {str(path)!r}: {err.strerror}") from err
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptStoreError(f"{str(path)!r}: metadata of episode {i} is damaged") from err
        if not isinstance(value, dict):
            raise CorruptStoreError(f"{str(path)!r}: metadata of episode {i} is not an object")
        return value

    def _leaf(self, directory: Path, e: Entry) -> torch.Tensor:
        *parents, last = e.stored_key
        path = directory.joinpath(*parents, f"{last}.memmap")
        real = _inside(self.root, path)
        numel = self.chunk_rows * math.prod(e.shape)  # Python ints: no int64 overflow
        need = numel * torch.empty((), dtype=e.dtype).element_size()
        try:
            st = real.stat()
        except FileNotFoundError:
            raise CorruptStoreError(f"{str(path)!r} is missing; the chunk is damaged") from None
        if not stat.S_ISREG(st.st_mode):
            raise CorruptStoreError(f"{str(path)!r} is not a regular file; the chunk is damaged")
        size = st.st_size
        if size < need:
            raise CorruptStoreError(
                f"{str(path)!r} is {size} bytes, shorter than the {need} its shape "
                f"{(self.chunk_rows, *e.shape)} and dtype {e.dtype} need; the chunk is truncated"
            )
        if numel == 0:
            return MemoryMappedTensor(torch.empty((self.chunk_rows, *e.shape), dtype=e.dtype))
        try:
            data = torch.from_file(str(real), shared=False, size=numel, dtype=e.dtype)
        except RuntimeError as err:
            raise CorruptStoreError(f"{str(path)!r} cannot be mapped: {err}") from err
        return MemoryMappedTensor(data.view(self.chunk_rows, *e.shape))

    def chunk(self, stream: int, index: int) -> dict[Key, torch.Tensor]:
        """The leaves of a chunk (mapped copy-on-write: the store is never modified)."""
        key = (stream, index)
        leaves = self._chunks.get(key)
        if leaves is None:
            directory = self.directory / STREAMS_DIR / str(stream) / chunk_dir_name(index)
            leaves = {e.stored_key: self._leaf(directory, e) for e in self.schema.entries}
            self._chunks[key] = leaves
            if len(self._chunks) > _CACHE:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        return leaves

    def rows(self, stream: int, start: int, count: int) -> dict[Key, torch.Tensor]:
        """Rows ``[start, start + count)`` of a stream: zero-copy unless they span chunks."""
        pieces: dict[Key, list[torch.Tensor]] = {e.stored_key: [] for e in self.schema.entries}
        row, end = start, start + count
        while row < end:
            index, offset = divmod(row, self.chunk_rows)
            n = min(end - row, self.chunk_rows - offset)
            for k, v in self.chunk(stream, index).items():
                pieces[k].append(v[offset : offset + n])
            row += n
        return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in pieces.items()}

    def episode(self, i: int) -> TensorDict:
        """Episode ``i`` as a ``[T]`` TensorDict of rollout rows (root keys + ``"next"``)."""
        info = self.info(i)
        steps = info["num_steps"]
        rows = self.rows(info["stream"], info["start_row"], steps + 1)
        out = TensorDict({}, batch_size=[steps])
        for e in self.schema.entries:
            if e.role != "next":
                out.set(e.key, rows[e.stored_key][:-1])
        nxt = TensorDict({}, batch_size=[steps])
        for e in self.schema.entries:
            if e.role == "state":
                nxt.set(e.key, rows[e.stored_key][1:])
            elif e.role == "next":
                nxt.set(e.key, rows[e.stored_key][:-1])
        out.set("next", nxt)
        return out
