"""The schema of a recording: which keys a transition holds, and how they are stored.

A transition (a rollout row) has root keys and a ``"next"`` sub-tensordict. A key
present in both with the same shape and dtype is a *state* key: stored once per
timestep (an episode of T transitions has T + 1 state rows). Keys only in the root
(the action) and only in ``"next"`` (the reward) are stored once per transition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import (
    NonTensorData,
    NonTensorStack,
    TensorDict,
    TensorDictBase,
    is_tensor_collection,
)

from trlrec.errors import CorruptStoreError, SchemaError, UnsupportedDataError
from trlrec.storage.dtypes import dtype_from_name, dtype_name
from trlrec.storage.format import COLUMN_SUFFIX, key_file_name

__all__ = ["Entry", "Schema", "Key"]

Key = tuple[str, ...]
ROLES = ("state", "root", "next")
_NAME = re.compile(r"^[^/\\\x00]+$")
_NAME_MAX = 255  # bytes of a file name (NAME_MAX); a column's file adds COLUMN_SUFFIX


@dataclass(frozen=True)
class Entry:
    """One stored column: its key in the rollout, role, feature shape and dtype."""

    key: Key  # key without the "next" prefix
    role: str  # "state", "root" or "next"
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def stored_key(self) -> Key:
        """Where the column lives in a chunk (next-only keys under "next")."""
        return ("next", *self.key) if self.role == "next" else self.key

    @property
    def nbytes(self) -> int:
        """Bytes of one row of this column (one step's value)."""
        return torch.Size(self.shape).numel() * torch.empty((), dtype=self.dtype).element_size()

    @property
    def is_done(self) -> bool:
        """Whether this column is a done flag that ends episodes."""
        return self.key[-1] == "done" and self.dtype is torch.bool and self.role != "root"


_NAME_BYTES = 255 - len(".memmap")  # a file name's limit (NAME_MAX), with its suffix


def _check_name(key: Key) -> None:
    """Refuse key components that cannot name a column's file (others are %-encoded)."""
    for part in key:
        if not _NAME.match(part) or part in (".", ".."):
            raise SchemaError(
                f"key {key!r} has a component {part!r} that cannot be a file name "
                "(no '/', '\\', NUL, '.' or '..'); rename the key"
            )
        size = len(key_file_name(part).encode("utf-8", "surrogatepass"))
        if size > _NAME_BYTES:
            raise SchemaError(
                f"key {key!r} has a component of {size} bytes as a file name "
                f"({part[:40]!r}...), over the {_NAME_BYTES} a file name allows; "
                "rename the key"
            )


def _is_leaf(cls: type) -> bool:
    """Tensors and non-tensor data are leaves (the default walk skips non-tensors silently)."""
    return not is_tensor_collection(cls) or issubclass(cls, (NonTensorData, NonTensorStack))


def leaf_keys(td: TensorDictBase) -> list[Key]:
    """Every leaf key of ``td`` as a tuple, non-tensor entries included."""
    return [
        (k,) if isinstance(k, str) else tuple(k)
        for k in td.keys(include_nested=True, leaves_only=True, is_leaf=_is_leaf)
    ]


def _leaves(td: TensorDictBase, batch_ndim: int, where: str) -> dict[Key, tuple]:
    out: dict[Key, tuple] = {}
    for key, value in td.items(include_nested=True, leaves_only=True, is_leaf=_is_leaf):
        key = (key,) if isinstance(key, str) else tuple(key)
        if where == "root" and key[0] == "next":
            continue
        full = key if where == "root" else ("next", *key)
        if not isinstance(value, torch.Tensor):
            raise UnsupportedDataError(
                f"key {full!r} holds non-tensor data ({type(value).__name__}); trlrec stores "
                "tensors only. Leave it out with in_keys, or encode it as a tensor"
            )
        _check_name(key)
        out[key] = (tuple(value.shape[batch_ndim:]), value.dtype)
        dtype_name(value.dtype, str(full))
    return out


@dataclass(frozen=True)
class Schema:
    """The keys, roles, shapes and dtypes of a recording, fixed by its first transition."""

    batch_shape: tuple[int, ...]
    entries: tuple[Entry, ...]

    @classmethod
    def from_transition(cls, root: TensorDictBase, next_: TensorDictBase) -> Schema:
        """Build the schema of a transition given as its root and ``"next"`` parts."""
        ndim = root.batch_dims
        rleaves = _leaves(root, ndim, "root")
        nleaves = _leaves(next_, ndim, "next")
        if not rleaves and not nleaves:
            raise SchemaError("the transition holds no tensors; nothing to record")
        entries = []
        for key, (shape, dtype) in rleaves.items():
            role = "state" if nleaves.get(key) == (shape, dtype) else "root"
            entries.append(Entry(key, role, shape, dtype))
        for key, (shape, dtype) in nleaves.items():
            if rleaves.get(key) != (shape, dtype):
                entries.append(Entry(key, "next", shape, dtype))
        return cls(tuple(root.batch_size), tuple(entries))

    @property
    def num_streams(self) -> int:
        """How many independent episode streams a step holds (the batch numel)."""
        return int(torch.Size(self.batch_shape).numel())

    def by_role(self, role: str) -> list[Entry]:
        """The entries of one role, in schema order."""
        return [e for e in self.entries if e.role == role]

    def row_template(self) -> TensorDict:
        """A zero, batch-less row in the stored layout (used to create chunks)."""
        td = TensorDict({}, batch_size=[])
        for e in self.entries:
            td.set(e.stored_key, torch.zeros(e.shape, dtype=e.dtype))
        return td

    def row_bytes(self) -> int:
        """Bytes of one stored row."""
        return sum(e.nbytes for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to schema.json."""
        return {
            "batch_shape": list(self.batch_shape),
            "entries": [
                {
                    "key": list(e.key),
                    "role": e.role,
                    "shape": list(e.shape),
                    "dtype": dtype_name(e.dtype),
                }
                for e in self.entries
            ],
        }

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Schema:
        """Parse schema.json, naming the file and the field when it is damaged."""

        def bad(what: str) -> CorruptStoreError:
            return CorruptStoreError(f"{str(path)!r}: {what}; the schema file is damaged")

        def ints(v: Any, what: str) -> tuple[int, ...]:
            if not isinstance(v, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**31 for i in v
            ):
                raise bad(f"{what} must be a list of non-negative ints, got {v!r}")
            if len(v) > 16:
                raise bad(f"{what} has {len(v)} dims, more than 16")
            return tuple(v)

        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise bad("missing 'entries'")
        batch_shape = ints(data.get("batch_shape"), "batch_shape")
        entries, seen = [], set()
        for raw in data["entries"]:
            if not isinstance(raw, dict):
                raise bad(f"entry {raw!r} is not an object")
            key = raw.get("key")
            if not isinstance(key, list) or not key or not all(isinstance(k, str) for k in key):
                raise bad(f"entry key {key!r} is not a list of strings")
            key = tuple(key)
            try:
                _check_name(key)
            except SchemaError as err:
                raise bad(str(err)) from None
            for i, part in enumerate(key):  # each component is a file or directory name
                try:
                    size = len(part.encode("utf-8")) + (
                        len(COLUMN_SUFFIX) if i == len(key) - 1 else 0
                    )
                except UnicodeEncodeError:
                    raise bad(f"key {key!r} is not valid UTF-8") from None
                if size > _NAME_MAX:
                    raise bad(f"key {key!r} makes a file name of {size} bytes, over {_NAME_MAX}")
            if raw.get("role") not in ROLES:
                raise bad(f"entry {key!r} has role {raw.get('role')!r}, expected one of {ROLES}")
            dtype = dtype_from_name(raw.get("dtype"))
            if dtype is None:
                raise bad(f"entry {key!r} has unknown dtype {raw.get('dtype')!r}")
            entry = Entry(key, raw["role"], ints(raw.get("shape"), f"shape of {key!r}"), dtype)
            if entry.stored_key in seen:
                raise bad(f"key {key!r} appears twice")
            seen.add(entry.stored_key)
            entries.append(entry)
        if not entries:
            raise bad("no entries")
        for k in seen:  # a key that is a leaf cannot also be a sub-tensordict
            for n in range(1, len(k)):
                if k[:n] in seen:
                    raise bad(f"key {k[:n]!r} is both a column and the parent of {k!r}")
        return cls(batch_shape, tuple(entries))
