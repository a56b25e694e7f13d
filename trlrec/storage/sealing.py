"""Sealing chunks: compress their columns off the step path, trim the last ones.

A chunk is *sealed* once no row of it will be written again: every chunk a commit has
gone past (the stream's rows reach into the next one), and at ``close()`` the last chunk
of each stream. Sealing a column of a compressed key (:func:`seal_column`) maps its
committed raw rows, compresses them in blocks on a worker thread (one call into the
codec a column, the GIL released throughout), writes ``<key>.zst`` to a temporary file
that is renamed into place once whole (and, for a durable writer, fsync'ed), and only
then removes the raw ``<key>.memmap``. A kill at any instant leaves either the raw file
or the whole compressed one (or both, when killed between the rename and the removal):
the reader takes ``.zst`` when present, and no half-written compressed file is ever
read. A writer that is not durable does not fsync them: its raw rows are not fsync'ed
either, so a power cut may lose its last rows whether raw or sealed (a compressed file
it cut short is refused by its checks, never read as garbage), and the fsyncs and the
journal commits they force had cost the sealing thread about a tenth of its CPU time.
Only committed rows are compressed, and a chunk is sealed only after the commit that
went past it is written (its I/O job is done), so the rows in ``.zst`` are the committed
ones.

The worker thread runs at the lowest priority the OS has (Linux: ``SCHED_IDLE``), on
CPU time no other thread wants: it otherwise takes its turns on the step loop's core
(measured: the step loop preempted for milliseconds a chunk). So that a worker kept
off the CPUs by a busy machine cannot fall behind without end, the step loop waits
for it once more than :data:`BACKLOG_CHUNKS` chunks a stream are queued.

Trimming (:func:`trim_column`) cuts a stream's last chunk files to the rows its
commit counts, so a closed store's apparent size is its allocated size.
"""

from __future__ import annotations

import logging
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trlrec.errors import CorruptStoreError, StoreWriteError
from trlrec.io.backend import IOBackend
from trlrec.storage.compression import Codec, resolve_compression
from trlrec.storage.format import (
    CompressedHeader,
    block_rows_for,
    chunk_count,
    chunk_path,
    chunk_rows_needed,
    chunk_spans,
    column_file,
    compressed_file,
    dictionary_rows,
)
from trlrec.storage.jsonio import atomic_tmp, fsync_path, read_json, write_json_atomic
from trlrec.storage.schema import Key, Schema

__all__ = ["ChunkSealer", "seal_column", "trim_column", "retag_rows", "compression_plan"]


_IOV_MAX = 1024  # buffers one pwritev takes (Linux's IOV_MAX)
BACKLOG_CHUNKS = 4
"""Chunks a stream may have queued for sealing before the step loop waits for the worker."""
_log = logging.getLogger(__name__)


def _background() -> None:
    """Run the calling thread only on CPU time no other thread wants (Linux ``SCHED_IDLE``).

    Elsewhere, or where the OS refuses, the thread keeps its priority: sealing is then
    as fast, and the step loop shares its core with it as before.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
    except (AttributeError, OSError) as err:
        _log.debug("the sealing thread keeps its priority: %s", err)


def _write_all(fd: int, parts: list[memoryview], offset: int) -> None:
    """Write ``parts`` end to end from ``offset``: a ``pwritev`` a 1,024 of them."""
    views = [v for v in parts if v.nbytes]
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i : i + _IOV_MAX], offset)
        offset += n
        while i < len(views) and n >= views[i].nbytes:  # past what was written
            n -= views[i].nbytes
            i += 1
        if n:  # a buffer written in part: its rest next
            views[i] = views[i][n:]


def seal_column(
    directory: Path,
    key: Key,
    rows: int,
    row_bytes: int,
    codec: Codec,
    level: int,
    durable: bool = True,
) -> int:
    """Compress the first ``rows`` rows of column ``key`` of a chunk into its ``.zst`` file.

    ``durable``: the compressed file, and its name, are on disk (fsync'ed) before the
    raw file is removed, so a power cut cannot lose rows the raw file held on disk.

    ``rows`` is cut to the whole rows the file holds (a chunk trimmed when a writer
    closed or rolled back holds its written rows only; the commit of a writer that
    went on counts the rows it skipped to reach a fresh chunk). Does nothing if the
    compressed file exists (a kill between its rename and the removal of the raw
    file: the raw one is removed now). Returns the compressed file's size (0 when it
    was there already).

    Raises:
        CorruptStoreError: the raw file is missing.
        StoreWriteError: the compressed file could not be written (the raw one is kept).
    """
    raw, dest = column_file(directory, key), compressed_file(directory, key)
    if dest.exists():
        raw.unlink(missing_ok=True)
        return 0
    try:
        fd = os.open(raw, os.O_RDONLY)
    except FileNotFoundError:
        raise CorruptStoreError(f"{str(raw)!r} is missing; the chunk is damaged") from None
    tmp = atomic_tmp(dest)
    try:
        rows = min(rows, os.fstat(fd).st_size // row_bytes)
        block_rows = block_rows_for(row_bytes)
        spans = [  # (start, length) of each block's raw bytes
            (b * block_rows * row_bytes, n * row_bytes)
            for b, _, n in chunk_spans(0, rows, block_rows)
        ]
        frames: list[memoryview] = []
        picked = dictionary_rows(rows, row_bytes)  # the rows every block is compressed against
        content, dictionary = b"", memoryview(b"")
        if spans:  # the raw rows mapped, every block compressed in one call
            with mmap.mmap(fd, rows * row_bytes, access=mmap.ACCESS_READ) as data:
                content = b"".join(data[r * row_bytes : (r + 1) * row_bytes] for r in picked)
                frames = codec.compress_blocks(data, spans, level, content)
            if content:
                (dictionary,) = codec.compress_blocks(content, [(0, len(content))], level)
        head = CompressedHeader.of_frames(codec.id, block_rows, rows, row_bytes, frames,
                                          dictionary, len(picked))  # fmt: skip
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(out, [memoryview(head.pack()), dictionary, *frames], 0)  # uncopied
            if durable:
                os.fsync(out)  # whole on disk before its name says it is there
        finally:
            os.close(out)
        os.replace(tmp, dest)
        if durable:
            fsync_path(dest.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StoreWriteError(
            err.errno,
            f"could not compress {str(raw)!r} into {str(dest)!r}: {err.strerror}; the raw "
            "column is kept (readable as before)",
        ) from err
    finally:
        os.close(fd)
    raw.unlink()  # a reader that mapped it keeps its pages until it lets them go
    return head.size + (head.ends[-1] if frames else 0)


def trim_column(raw: Path, size: int) -> None:
    """Cut the column file ``raw`` to ``size`` bytes if it is longer (and exists).

    Raises:
        StoreWriteError: the file could not be truncated.
    """
    try:
        if raw.stat().st_size > size:
            os.truncate(raw, size)
    except FileNotFoundError:
        return
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"could not trim {str(raw)!r} to {size} bytes: {err.strerror}"
        ) from err


def retag_rows(directory: Path, rows: int) -> None:
    """Say in a chunk's tensordict metadata (``meta.json``) that it holds ``rows`` rows.

    So ``TensorDict.load_memmap`` still opens a trimmed chunk (a shape is only lowered).

    Raises:
        StoreWriteError: a metadata file could not be rewritten.
    """
    for top, _, files in os.walk(directory):
        if "meta.json" not in files:
            continue
        path = Path(top) / "meta.json"
        meta = read_json(path)
        changed = False
        for value in (meta, *meta.values()):
            shape = value.get("shape") if isinstance(value, dict) else None
            if isinstance(shape, list) and shape and type(shape[0]) is int and shape[0] > rows:
                shape[0] = rows
                changed = True
        if changed:
            write_json_atomic(path, meta)


def compression_plan(compression: Any, schema: Schema) -> dict[Key, tuple[Codec, int]]:
    """``{stored key: (codec, level)}`` of the columns ``compression`` compresses in ``schema``."""
    keys = {e.stored_key: (e.key, e.nbytes) for e in schema.entries}
    return resolve_compression(compression, keys)


class ChunkSealer:
    """Seals a recording's chunks: compression on a worker thread, trimming at the end.

    Args:
        shard_path: the shard directory.
        compression: the writer's ``compression`` argument.
        durable: the writer's ``durable``: whether sealed files are fsync'ed.
    """

    def __init__(self, shard_path: Path, compression: Any, *, durable: bool) -> None:
        self.shard_path = shard_path
        self.compression = compression
        self.durable = durable
        self.plan: dict[Key, tuple[Codec, int]] = {}
        self._nbytes: dict[Key, int] = {}
        self._chunk_rows = 1
        self._sealed: list[int] = []  # per stream: chunks below this one are queued
        self._edge: list[int] = []  # per stream: past this many rows, one more chunk is full
        self._pending: list[tuple[int, int, int]] = []  # (commit token, stream, chunks)
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[int]] = []

    def setup(self, schema: Schema, chunk_rows: int) -> None:
        """Start (again) for ``schema``: nothing is queued (failures are raised by finish)."""
        for f in self._futures:
            f.exception()  # wait for it
        self._futures = [f for f in self._futures if f.exception() is not None]
        self._nbytes = {e.stored_key: e.nbytes for e in schema.entries}
        self._chunk_rows = chunk_rows
        self.plan = compression_plan(self.compression, schema)
        self._sealed = [0] * schema.num_streams
        self._edge = [chunk_rows] * schema.num_streams
        self._pending.clear()

    def _seal(self, stream: int, index: int, rows: int) -> None:
        if not self.plan:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                1, thread_name_prefix="trlrec-seal", initializer=_background
            )
        directory = chunk_path(self.shard_path, stream, index)
        for key, (codec, level) in self.plan.items():
            job = (directory, key, rows, self._nbytes[key], codec, level, self.durable)
            try:
                self._futures.append(self._pool.submit(seal_column, *job))
            except RuntimeError:  # the interpreter is exiting (a writer closed at exit)
                done: Future[int] = Future()
                try:
                    done.set_result(seal_column(*job))
                except BaseException as err:
                    done.set_exception(err)
                self._futures.append(done)
        self._bound()

    def _bound(self) -> None:
        """Wait until at most :data:`BACKLOG_CHUNKS` chunks a stream are left to seal."""
        limit = BACKLOG_CHUNKS * len(self.plan) * max(1, len(self._sealed))
        queued = [f for f in self._futures if not f.done()]
        if len(queued) > limit:  # one worker: they finish in order
            queued[-limit - 1].exception()

    def committed(self, io: IOBackend, group: int, token: int, streams: list[list[int]]) -> None:
        """A commit was queued as job ``token``: seal the chunks it went past once written."""
        if not self.plan:
            return
        for b, entry in enumerate(streams):  # once a step: a comparison a stream
            if entry[0] > self._edge[b]:
                full = (entry[0] - 1) // self._chunk_rows  # the chunks the rows went past
                self._pending.append((token, b, full))
                self._edge[b] = (full + 1) * self._chunk_rows
        if self._pending and io.done() >= self._pending[0][0] and io.error(group) is None:
            done = io.done()
            ready = [p for p in self._pending if p[0] <= done]
            self._pending = [p for p in self._pending if p[0] > done]
            for _, b, full in ready:
                for index in range(self._sealed[b], full):
                    self._seal(b, index, self._chunk_rows)
                self._sealed[b] = max(self._sealed[b], full)
            self._futures = [f for f in self._futures if not f.done() or f.exception()]
            self._raise()

    def resume(self, streams: list[list[int]]) -> None:
        """Continue after a commit of these streams: its chunks are sealed, its last ones trimmed.

        The writer goes on in fresh chunks, so each stream's last committed chunk is
        final: trimmed to its committed rows, its compressed keys compressed.
        """
        self._finish(streams, resumed=True)

    def finish(self, streams: list[list[int]]) -> None:
        """The recording ends after a commit of these streams: seal and trim every chunk left.

        Raises:
            StoreWriteError: a column could not be compressed or trimmed (its raw file,
                and so every committed row, is kept).
        """
        self._finish(streams, resumed=False)
        self.wait()

    def _finish(self, streams: list[list[int]], resumed: bool) -> None:
        C = self._chunk_rows
        self._pending.clear()
        for b, entry in enumerate(streams):
            next_row = entry[0]
            last = chunk_count(next_row, C)
            start = 0 if resumed else self._sealed[b]
            for index in range(start, last):  # all full but the last (and an earlier
                # session's last, trimmed when it closed)
                self._seal(b, index, chunk_rows_needed(next_row, index, C))
            if last:
                need = chunk_rows_needed(next_row, last - 1, C)
                directory = chunk_path(self.shard_path, b, last - 1)
                raw = [k for k in self._nbytes if k not in self.plan]
                for key in raw:
                    trim_column(column_file(directory, key), need * self._nbytes[key])
                if raw:
                    retag_rows(directory, need)
            self._sealed[b] = last
            self._edge[b] = (last + 1) * C

    def _raise(self) -> None:
        for f in self._futures:
            if f.done() and f.exception() is not None:
                err = f.exception()
                self._futures.clear()
                raise err  # type: ignore[misc]

    def wait(self) -> None:
        """Wait for the queued compressions; raise the first failure."""
        futures, self._futures = self._futures, []
        for f in futures:
            f.exception()
        self._futures = futures
        self._raise()
        self._futures = []

    def close(self) -> None:
        """Wait for the worker (failures were raised by :meth:`finish`) and stop it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._futures = []
