"""Turning user-supplied names (tags, keys, experiment names) into safe file names."""

from __future__ import annotations

import re
from pathlib import Path

from trlrec.errors import UnsafeNameError

__all__ = ["safe_name", "safe_join", "safe_path"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_name(name: str) -> str:
    """Map a user-supplied name to one path component that stays in its directory.

    Separators and other unusual characters become ``_``; the names ``.`` and
    ``..`` and names with NUL bytes are refused.

    Args:
        name: a tag, key or experiment name.

    Returns:
        A non-empty file name without separators.

    Raises:
        UnsafeNameError: for an empty name, a NUL byte, or a name made only of dots.

    Examples:
        >>> safe_name("eval/episode")
        'eval_episode'
        >>> safe_name("../x")
        '.._x'
    """
    if not isinstance(name, str):
        raise UnsafeNameError(f"a name must be a str, got {type(name).__name__}: {name!r}")
    if "\x00" in name:
        raise UnsafeNameError(f"name {name!r} contains a NUL byte; remove it")
    out = _UNSAFE.sub("_", name)
    if not out or set(out) == {"."}:
        raise UnsafeNameError(f"name {name!r} is empty or only dots; pick a name with letters")
    return out


def safe_join(directory: str | Path, name: str, suffix: str = "") -> Path:
    """Join ``directory`` and ``safe_name(name) + suffix``, checking the result stays inside.

    Examples:
        >>> safe_join("/tmp/exp", "a/b", ".mp4").as_posix()
        '/tmp/exp/a_b.mp4'
    """
    base = Path(directory)
    path = base / (safe_name(name) + suffix)
    if path.resolve().parent != base.resolve():
        raise UnsafeNameError(f"name {name!r} resolves outside {str(base)!r}; pick a plain name")
    return path


def safe_path(directory: str | Path, name: str, suffix: str = "") -> Path:
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
