"""What an export or import did: where the data went, how much, and what was not exact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExportResult"]


@dataclass
class ExportResult:
    """The outcome of an export or an import.

    Attributes:
        target: the dataset written (a Minari dataset id, a directory, a store path).
        path: where it lies on disk.
        episodes: episodes written.
        steps: transitions written.
        notes: each step that was not exact (lossy encodings, dropped keys, changed
            episode flags), in words; empty when the copy is exact.

    Examples:
        >>> from trlrec.export import ExportResult
        >>> r = ExportResult("cartpole/random-v0", Path("/data/cartpole/random-v0"), 9, 200)
        >>> r.episodes, r.steps, r.notes
        (9, 200, [])
    """

    target: str
    path: Path
    episodes: int = 0
    steps: int = 0
    notes: list[str] = field(default_factory=list)
