"""The trlrec exception tree.

Every error trlrec raises is a :class:`TrlrecError`. Each class also subclasses
the builtin that describes it (``ValueError``, ``FileNotFoundError``...), so
code written against the builtins keeps working, as with attrs' exceptions.
Messages say what was wrong, the value received, and the fix.
"""

from __future__ import annotations

__all__ = [
    "TrlrecError",
    "SchemaError",
    "UnsupportedDataError",
    "StoreError",
    "NotAStoreError",
    "CorruptStoreError",
    "FormatVersionError",
    "ShardLockedError",
    "StoreWriteError",
    "LoggerWriteError",
    "ClosedError",
    "ReadOnlyError",
    "UnsafeNameError",
    "VideoError",
    "MissingDependencyError",
    "EncoderError",
    "PlaybackError",
    "ConfigError",
    "OutOfRangeError",
    "IndexTypeError",
    "UnsupportedOperationError",
]


class TrlrecError(Exception):
    """Base class of every error raised by trlrec."""


class SchemaError(TrlrecError, ValueError):
    """A step's keys, shapes or dtypes differ from the recording's schema."""


class UnsupportedDataError(TrlrecError, TypeError):
    """A value trlrec cannot store (a non-tensor entry, an unsupported dtype)."""


class StoreError(TrlrecError):
    """Base class of the errors about a store on disk."""


class NotAStoreError(StoreError, FileNotFoundError):
    """The path does not exist or is not a trlrec store."""


class CorruptStoreError(StoreError, ValueError):
    """A file of the store is damaged (truncated, bit-flipped, inconsistent)."""


class FormatVersionError(StoreError, ValueError):
    """The store was written by a format version this trlrec cannot read."""


class ShardLockedError(StoreError, RuntimeError):
    """Another writer holds the shard."""


class StoreWriteError(StoreError, OSError):
    """Writing to the store failed (disk full, file too large, read-only...)."""


class LoggerWriteError(TrlrecError, OSError):
    """An experiment logger could not write its files (disk full, read-only, too large...)."""


class ClosedError(TrlrecError, RuntimeError):
    """The writer, reader or recorder was used after ``close()``."""


class ReadOnlyError(StoreError, RuntimeError):
    """A write to something that only reads a store (its replay buffer, its storage)."""


class UnsafeNameError(TrlrecError, ValueError):
    """A user-supplied name would write outside its directory."""


class VideoError(TrlrecError, ValueError):
    """Frames whose layout, dtype or size cannot be made into a video."""


class MissingDependencyError(TrlrecError, ImportError):
    """An optional dependency is not installed; the message says what to install."""


class EncoderError(TrlrecError, OSError):
    """The video encoder (ffmpeg) failed or could not start; the message holds its output."""


class PlaybackError(TrlrecError, RuntimeError):
    """Replaying a recording went off script (episodes ran out, an action differs)."""


class ConfigError(TrlrecError, ValueError):
    """An argument of a trlrec class or function is invalid (a bad option, callback or path)."""


class OutOfRangeError(TrlrecError, IndexError):
    """An index past what a store holds (an episode, a transition); ``except IndexError`` works."""


class IndexTypeError(TrlrecError, TypeError):
    """An index of the wrong type (an episode index that is not an int or a slice)."""


class UnsupportedOperationError(TrlrecError, NotImplementedError):
    """The backend cannot do this (a CSV logger has no histograms, as in TorchRL)."""
