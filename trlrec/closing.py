"""Context-manager support for the objects that hold files: ``with X(...) as x:`` closes x."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closeable"]


class Closeable:
    """A mixin: ``__enter__`` returns the object, ``__exit__`` calls its ``close()``."""

    def close(self) -> object:
        """Release what the object holds (subclasses implement it).

        Returns:
            Whatever the subclass documents (``None`` for most; a writer may return the
            file it finished). ``__exit__`` ignores it.
        """
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
