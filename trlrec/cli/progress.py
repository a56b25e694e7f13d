"""A one-line progress indicator on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``label: done/total`` rewritten in place at most ten times a second.

    Args:
        label: what is being done.
        total: how many items, or None when unknown.
        stream: where to write (default ``sys.stderr``); nothing is written unless a tty.
    """

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None):
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._shown = False

    def update(self, done: int) -> None:
        """Show that ``done`` items are finished (throttled)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and (self.total is None or done < self.total):
            return
        self._last = now
        total = "" if self.total is None else f"/{self.total}"
        self.stream.write(f"\r{self.label}: {done}{total}")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Erase the line."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
