"""The codecs of compressed columns: a registry by name and by the id stored in a file.

A compressed column (``<key>.zst``, laid out in :mod:`trlrec.storage.format`) holds
independent frames of a codec; the reader and the writer find the codec here. The
codec library is imported only when a codec is used, so a store without compressed
columns never needs it, and a missing one is a :class:`~trlrec.errors.MissingDependencyError`
saying what to install.

``zstd`` (the ``zstandard`` package) was chosen by measuring it beside ``blosc2`` on
real Atari frames (see benchmarks/bench_compress.py): on 84x84 grayscale Pong frames,
blocks of 64 rows, zstd level 3 compresses ~190x, blosc2's zstd ~105x and its lz4
~78x; zstandard releases the GIL while it compresses.

Example:
    >>> codec = get_codec("zstd")
    >>> data = bytes(1000)
    >>> (frame,) = codec.compress_blocks(data, [(0, 1000)], 3)
    >>> frame = bytes(frame)
    >>> out = bytearray(1000)
    >>> codec.decompress_into(memoryview(frame), [(0, len(frame))], memoryview(out), [1000],
    ...                       FrameSource("x.zst", [0]))
    >>> len(frame) < 50, out == data
    (True, True)
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trlrec.errors import ConfigError, CorruptStoreError, MissingDependencyError
from trlrec.storage.format import frame_crc

__all__ = [
    "Codec",
    "FrameSource",
    "CODECS",
    "DEFAULT_LEVEL",
    "get_codec",
    "codec_by_id",
    "resolve_compression",
    "check_compression",
]

DEFAULT_LEVEL = 3
"""The level used when none is given (zstd's own default)."""

_local = threading.local()  # one (de)compressor object per thread and level


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise MissingDependencyError(
            "compression='zstd' needs the zstandard package: pip install zstandard "
            "(or pip install 'trlrec[compress]')"
        ) from None
    return zstandard


@dataclass(frozen=True)
class Codec:
    """A lossless codec of compressed columns: its name, its id in a file, its levels."""

    name: str
    id: int
    levels: range

    def check(self) -> None:
        """Import the codec's library now (raises MissingDependencyError if it is absent)."""
        _zstd()

    def compress_blocks(
        self,
        data: bytes | memoryview | mmap.mmap,
        spans: list[tuple[int, int]],
        level: int,
        dictionary: bytes = b"",
    ) -> list[memoryview]:
        """Independent frames (each with its size) of the ``(start, length)`` spans.

        ``dictionary``: raw bytes every frame is compressed against (zstd's raw-content
        dictionary, also given to :meth:`decompress_into` through
        :meth:`dictionary`); none if empty.

        The frames carry no checksum of their content: the file's index holds a CRC-32
        of each frame (:func:`~trlrec.storage.format.frame_crc`), checked before a frame
        is decompressed, over its compressed bytes (XXH64 over the decompressed ones cost
        a third of a block's decompression).

        One call into the codec's library for them all, the GIL released throughout: the
        sealing thread then takes the GIL back once a column, not once a block (each time
        it does, the step loop waits). The frames are views of the library's one output
        buffer, held while any of them is.
        """
        zstd = _zstd()
        if not spans:
            return []
        if dictionary:  # one a column: a chunk's own rows
            comp = zstd.ZstdCompressor(level=level, dict_data=self.dictionary(dictionary),
                                       write_checksum=False, write_content_size=True,
                                       write_dict_id=False)  # fmt: skip
        else:
            comp = getattr(_local, "zstd", {}).get(level)
            if comp is None:
                comp = zstd.ZstdCompressor(level=level, write_checksum=False,
                                           write_content_size=True)  # fmt: skip
                _local.__dict__.setdefault("zstd", {})[level] = comp
        segments = struct.pack(f"<{2 * len(spans)}Q", *itertools.chain.from_iterable(spans))
        frames = comp.multi_compress_to_buffer(zstd.BufferWithSegments(data, segments), threads=1)
        return [memoryview(frames[i]) for i in range(len(frames))]  # views, not copies

    def dictionary(self, content: bytes) -> Any:
        """The library's dictionary of the raw bytes ``content``, for :class:`FrameSource`."""
        zstd = _zstd()
        return zstd.ZstdCompressionDict(content, dict_type=zstd.DICT_TYPE_RAWCONTENT)

    def decompress_into(
        self,
        data: bytes | memoryview | mmap.mmap,
        frames: np.ndarray | list[tuple[int, int]],
        out: np.ndarray | memoryview | bytearray,
        sizes: np.ndarray | list[int],
        where: FrameSource,
    ) -> None:
        """Decompress ``frames`` (``[start, end)`` spans of ``data``) end to end into ``out``.

        Frame ``k`` is block ``where.blocks[k]`` of the file ``where.path`` and must hold
        exactly ``sizes[k]`` bytes; ``out`` (a writable buffer) holds at least their sum.
        ``frames`` is ``[[start, end], ...]`` (a list or an int array), ``sizes`` a list
        or an int array. Each frame is checked against its CRC-32 (``where.crcs[k]``)
        before it is decompressed, or by its own content checksum (a file of layout 1:
        ``where.crcs`` is None).

        The frames are put end to end (their compressed bytes: small) and one stream
        reader decompresses them straight into ``out``, in one call: decompressing frame
        by frame cost a reader and a return to Python a frame, and threads decompressing
        side by side waited on each other for the GIL (docs/PERFORMANCE.md).

        Raises:
            CorruptStoreError: a frame is damaged (its checksum or size is wrong).
        """
        spans = np.asarray(frames, dtype=np.int64).reshape(-1, 2).tolist()
        if not spans:
            return
        want = np.asarray(sizes, dtype=np.int64).tolist()
        crcs = where.crcs if where.crcs is not None else itertools.repeat(None)
        parts = []
        for (start, end), block, crc in zip(spans, where.blocks, crcs, strict=False):
            frame = data[start:end]  # crcs may repeat None
            if crc is not None and frame_crc(frame) != crc:
                raise _damaged(where.path, block, "fails its checksum")
            parts.append(frame)
        total = sum(want)
        dst = memoryview(np.frombuffer(out, dtype=np.uint8)[:total])
        dec = _decompressor(where.dictionary)
        if _decode(dec, b"".join(parts), dst) == (total, 0):
            return
        at = 0  # a frame is damaged: decompressed one by one, the first that fails is named
        for part, block, size in zip(parts, where.blocks, want, strict=True):
            _check(_decode(dec, part, dst[at : at + size]), size, where.path, block)
            at += size
        raise _damaged(where.path, where.blocks[0], "and the next cannot be decompressed together")


_DECOMPRESSORS = 8
"""Decompressors a thread keeps, one a dictionary (each holds ~100 KiB and its dictionary)."""


def _decompressor(dictionary: Any) -> Any:
    """This thread's decompressor of frames compressed against ``dictionary`` (or none).

    Made once a dictionary and thread (a decompressor is used by one thread at a time),
    the :data:`_DECOMPRESSORS` used last kept: a sample reads a few chunks' columns over
    and over. Keyed by the dictionary object itself, held while it is kept.
    """
    kept = getattr(_local, "zstd_d", None)
    if kept is None:
        kept = _local.zstd_d = OrderedDict()
    dec = kept.get(dictionary)
    if dec is not None:
        kept.move_to_end(dictionary)
        return dec
    zstd = _zstd()
    dec = zstd.ZstdDecompressor() if dictionary is None else zstd.ZstdDecompressor(dictionary)
    kept[dictionary] = dec
    if len(kept) > _DECOMPRESSORS:
        kept.popitem(last=False)
    return dec


def _decode(dec: Any, frames: bytes | memoryview, dst: memoryview) -> tuple[int, int] | str:
    """Decompress ``frames`` (whole frames, end to end) into ``dst`` with ``dec``.

    Returns ``(bytes written, bytes past dst)`` (reading on to the frames' end checks the
    last one's content checksum), or the library's error.
    """
    zstd = _zstd()
    got = 0
    try:
        with dec.stream_reader(frames, read_across_frames=True) as reader:
            while got < len(dst):
                n = reader.readinto(dst[got:])
                if not n:
                    break
                got += n
            return got, len(reader.read(1))
    except zstd.ZstdError as err:
        return str(err)


def _check(result: tuple[int, int] | str, size: int, path: Any, block: int) -> None:
    if isinstance(result, str):
        raise _damaged(path, block, f"cannot be decompressed ({result})")
    got, extra = result
    if got != size or extra:
        held = f"{got} bytes" if got != size else f"more than {size} bytes"
        raise _damaged(path, block, f"holds {held}, expected {size}")


@dataclass(frozen=True)
class FrameSource:
    """Where frames come from, for their checks and errors: a file, its blocks, their CRCs.

    ``blocks``: each frame's block; -1 names the file's dictionary. ``dictionary``: what
    the frames were compressed against (:meth:`Codec.dictionary`; None: nothing).
    """

    path: str | os.PathLike[str]
    blocks: list[int]
    crcs: list[int] | None = None  # each frame's CRC-32 (layouts 2, 3); None: frames checksummed
    dictionary: Any = None


def _damaged(path: Any, block: int, what: str) -> CorruptStoreError:
    frame = f"block {block}" if block >= 0 else "its dictionary"
    return CorruptStoreError(
        f"{str(path)!r}: {frame} {what}; the compressed column is damaged, restore it from a copy"
    )


CODECS: Mapping[str, Codec] = {"zstd": Codec("zstd", 1, range(1, 23))}
"""The codecs by name."""


def get_codec(name: Any) -> Codec:
    """The codec called ``name``, its library imported.

    Raises:
        ConfigError: no codec has this name.
        MissingDependencyError: its library is not installed (the message says what to install).
    """
    codec = CODECS.get(name) if isinstance(name, str) else None
    if codec is None:
        raise ConfigError(f"unknown codec {name!r}; the codecs are {sorted(CODECS)}")
    codec.check()
    return codec


def codec_by_id(codec_id: int, path: str | os.PathLike[str]) -> Codec:
    """The codec of id ``codec_id``, found in the file at ``path``.

    Raises:
        CorruptStoreError: no codec has this id (the file is damaged or from a newer trlrec).
    """
    for codec in CODECS.values():
        if codec.id == codec_id:
            codec.check()
            return codec
    raise CorruptStoreError(
        f"{str(path)!r} names codec {codec_id}, which this trlrec does not know; the file is "
        "damaged or written by a newer trlrec (upgrade it)"
    )


def _choice(value: Any, where: str) -> tuple[Codec, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:  # a list: from JSON
        name, level = value
    else:
        name, level = value, DEFAULT_LEVEL
    codec = get_codec(name)
    if type(level) is not int or level not in codec.levels:
        raise ConfigError(
            f"{where}: level {level!r} of {codec.name} is not an int in "
            f"{codec.levels.start}..{codec.levels.stop - 1}"
        )
    return codec, level


def _as_key(key: Any) -> tuple[str, ...]:
    if isinstance(key, str):
        return tuple(key.split("/")) if "/" in key else (key,)
    if isinstance(key, tuple) and key and all(isinstance(k, str) for k in key):
        return key
    raise ConfigError(f"compression holds key {key!r}, which is not a str or tuple of str")


def resolve_compression(
    compression: Any, keys: Mapping[tuple[str, ...], tuple[tuple[str, ...], int]]
) -> dict[tuple[str, ...], tuple[Codec, int]]:
    """Which stored columns to compress, and how: ``{stored key: (codec, level)}``.

    Args:
        compression: ``None`` (nothing), a codec name or ``(name, level)`` (every column),
            or a mapping from keys to those (a key as given to the env, ``"pixels"``, or
            as stored, ``("next", "reward")``; ``"a/b"`` is ``("a", "b")``).
        keys: the schema's columns, ``{stored key: (key, row bytes)}``; columns of no
            bytes are never compressed.

    Raises:
        ConfigError: an unknown codec, a bad level, or a key not in ``keys``.
    """
    if compression is None:
        return {}
    if not isinstance(compression, Mapping):
        choice = _choice(compression, "compression")
        return {k: choice for k, (_, size) in keys.items() if size > 0}
    out: dict[tuple[str, ...], tuple[Codec, int]] = {}
    for key, value in compression.items():
        wanted = _as_key(key)
        hits = [s for s, (k, _) in keys.items() if wanted in (s, k)]
        if not hits:
            raise ConfigError(
                f"compression names key {key!r}, which the recording does not have; its keys "
                f"are {sorted('/'.join(s) for s in keys)}"
            )
        choice = _choice(value, f"compression[{key!r}]")
        out.update({s: choice for s in hits if keys[s][1] > 0})
    return out


def check_compression(compression: Any) -> None:
    """Check ``compression``'s codecs and levels now (its keys are checked with the schema).

    Raises:
        ConfigError: an unknown codec or a bad level, or not a codec nor a mapping.
        MissingDependencyError: the codec's library is not installed.
    """
    if compression is None:
        return
    if isinstance(compression, Mapping):
        for key, value in compression.items():
            _as_key(key)
            _choice(value, f"compression[{key!r}]")
    else:
        _choice(compression, "compression")
