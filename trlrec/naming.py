"""Turning user-supplied names (tags, keys, experiment names) into safe file names.

The mapping is one-to-one: distinct names give distinct files. Letters and digits
(unicode ones too, so ``"эпизод"`` stays readable) and ``. _ = + -`` are kept; every
other character becomes ``%XX``, the uppercase hex of its UTF-8 bytes (``/`` is
``%2F``, a space ``%20``, ``%`` itself ``%25``). A name whose file name would pass
200 bytes is cut there and ends with ``~`` and 16 hex digits of its SHA-256 (a ``~``
never appears otherwise), leaving room for suffixes within a file name's 255 bytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trlrec.errors import UnsafeNameError

__all__ = ["safe_name", "safe_join", "safe_path"]

_KEPT = frozenset("._=+-")
_MAX_BYTES = 200  # of a safe name: callers add suffixes ("_<step>.mp4", ".csv", ...)
_CUT_BYTES = _MAX_BYTES - 17  # a cut name keeps this much, then "~" and 16 hex digits


def _escape(char: str) -> str:
    if char.isalnum() or char in _KEPT:
        return char
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


def safe_name(name: str) -> str:
    """Map a user-supplied name to one path component that stays in its directory.

    Distinct names give distinct file names (see the module's docstring for the
    mapping); the names ``.`` and ``..``, names made only of dots and names with NUL
    bytes are refused.

    Args:
        name: a tag, key or experiment name.

    Returns:
        A non-empty file name without separators, of at most 200 bytes.

    Raises:
        UnsafeNameError: for an empty name, a NUL byte, or a name made only of dots.

    Examples:
        >>> safe_name("eval/episode"), safe_name("eval_episode")
        ('eval%2Fepisode', 'eval_episode')
        >>> safe_name("../x"), safe_name("эпизод 1")
        ('..%2Fx', 'эпизод%201')
    """
    if not isinstance(name, str):
        raise UnsafeNameError(f"a name must be a str, got {type(name).__name__}: {name!r}")
    if "\x00" in name:
        raise UnsafeNameError(f"name {name!r} contains a NUL byte; remove it")
    if not name or set(name) == {"."}:
        raise UnsafeNameError(f"name {name!r} is empty or only dots; pick a name with letters")
    parts = [_escape(c) for c in name]
    out = "".join(parts)
    if len(out.encode("utf-8")) <= _MAX_BYTES:
        return out
    kept, size = [], 0
    for part in parts:  # cut between characters, never inside an escape
        size += len(part.encode("utf-8"))
        if size > _CUT_BYTES:
            break
        kept.append(part)
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return "".join(kept) + "~" + digest


def safe_join(directory: str | os.PathLike[str], name: str, suffix: str = "") -> Path:
    """Join ``directory`` and ``safe_name(name) + suffix``, checking the result stays inside.

    Examples:
        >>> safe_join("/tmp/exp", "a/b", ".mp4").as_posix()
        '/tmp/exp/a%2Fb.mp4'
    """
    base = Path(directory)
    path = base / (safe_name(name) + suffix)
    if path.resolve().parent != base.resolve():
        raise UnsafeNameError(f"name {name!r} resolves outside {str(base)!r}; pick a plain name")
    return path


def safe_path(directory: str | os.PathLike[str], name: str, suffix: str = "") -> Path:
    """Join ``directory`` and ``name``, each ``/`` of the name a sub-directory (TorchRL's layout).

    Each part of the name is made safe with :func:`safe_name`; empty and ``.`` parts are
    dropped and a ``..`` part becomes ``__``, so the result stays inside ``directory``.

    Raises:
        UnsafeNameError: for a name :func:`safe_name` refuses, or one with no part left.

    Examples:
        >>> safe_path("/tmp/exp", "eval/reward", ".csv").as_posix()
        '/tmp/exp/eval/reward.csv'
        >>> safe_path("/tmp/exp", "../x").as_posix()
        '/tmp/exp/__/x'
    """
    safe_name(name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    parts = ["_" * len(p) if set(p) == {"."} else safe_name(p) for p in parts]
    if not parts:
        raise UnsafeNameError(f"name {name!r} has no part left once made safe; pick a plain name")
    base = Path(directory)
    path = base.joinpath(*parts[:-1], parts[-1] + suffix)
    if not path.resolve().is_relative_to(base.resolve()):
        raise UnsafeNameError(f"name {name!r} resolves outside {str(base)!r}; pick a plain name")
    return path
