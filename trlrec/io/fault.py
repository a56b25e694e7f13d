"""A backend that fails on purpose: the shipped fake for tests of error handling.

Like httpx's ``MockTransport``: a real (inline) backend whose jobs fail where a rule
says, so a test can make the Nth write, a write to some file, or the commit's
replacement fail with the errno it chooses (``ENOSPC`` by default), and check what the
caller does about it.
"""

from __future__ import annotations

import errno as errnos
from collections.abc import Callable

from trlrec.io.backend import Buffer
from trlrec.io.inline import InlineBackend

__all__ = ["FaultBackend"]


class FaultBackend(InlineBackend):
    """An inline backend whose jobs fail by rule.

    Args:
        fail_write: the writes to fail: an int ``n`` fails the n-th write (1-based)
            and every later one while ``sticky``; a callable ``(path, n) -> bool``
            decides per write.
        fail_replace: a callable ``(path) -> bool``: which file replacements fail
            (``lambda p: p.endswith("COMMIT")`` fails the commits).
        code: the errno of the failures.
        sticky: with an int ``fail_write``, fail every write from the n-th on (a
            full disk stays full), not only the n-th.

    Attributes:
        writes: writes submitted so far; ``failures``: jobs failed so far.

    Examples:
        >>> import os, tempfile
        >>> from trlrec.io.fault import FaultBackend
        >>> path = os.path.join(tempfile.mkdtemp(), "f")
        >>> open(path, "wb").close()
        >>> io = FaultBackend(fail_write=2)
        >>> g = io.new_group()
        >>> _ = io.write(path, b"ab", 0, g); _ = io.write(path, b"cd", 2, g)
        >>> print(io.error(g))  # doctest: +ELLIPSIS
        [Errno 28] could not write '...f': No space left on device; ...
        >>> open(path, "rb").read()
        b'ab'
    """

    name = "fault"

    def __init__(
        self,
        fail_write: int | Callable[[str, int], bool] | None = None,
        fail_replace: Callable[[str], bool] | None = None,
        code: int = errnos.ENOSPC,
        sticky: bool = True,
    ) -> None:
        super().__init__()
        self._fail_write = fail_write
        self._fail_replace = fail_replace
        self.code = code
        self.sticky = sticky
        self.writes = 0
        self.failures = 0

    def heal(self) -> None:
        """Stop failing (the disk has room again); groups that failed stay failed."""
        self._fail_write = None
        self._fail_replace = None

    def _fail(self) -> None:
        self.failures += 1
        raise OSError(self.code, "injected by FaultBackend")

    def _do_write(self, path: str, data: Buffer, offset: int, keep: bool) -> None:
        self.writes += 1
        rule = self._fail_write
        if callable(rule):
            if rule(path, self.writes):
                self._fail()
        elif rule is not None and (self.writes == rule or (self.sticky and self.writes > rule)):
            self._fail()
        super()._do_write(path, data, offset, keep)

    def _do_replace(self, path: str, data: bytes, durable: bool) -> None:
        if self._fail_replace is not None and self._fail_replace(path):
            self._fail()
        super()._do_replace(path, data, durable)
