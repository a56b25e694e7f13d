"""The threads a large compressed read is split over, the caller's among them.

A read of many blocks (a sample's) runs in parts on a small pool of threads, each part
one call into the codec's library for its frames (which releases the GIL as it decodes
and does not come back to Python between frames): a Pong sample takes about 1.2x less
time on two threads than on one on this project's 2-vCPU VM. With a reader a frame,
each return to Python between frames made the threads wait on each other
(docs/PERFORMANCE.md). The pool is made on first use and forgotten in a forked child
(which has none of its parent's threads).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["DECODE_THREADS", "PART_BYTES", "even_parts", "run_in_parts"]

T = TypeVar("T")

DECODE_THREADS = min(4, os.cpu_count() or 1)
"""Threads a large read is split over (the caller's among them)."""
PART_BYTES = 1 << 18
"""A part decodes at least this many bytes: below it, handing a part to a thread costs more."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def run_in_parts(work: Callable[[T], None], tasks: Sequence[T], nbytes: int) -> None:
    """``work(task)`` for each of ``tasks`` (``nbytes`` to decode in all), on threads.

    At most :data:`DECODE_THREADS` threads, the caller's among them, each for at least
    :data:`PART_BYTES`; each thread takes the next task when it is done with one, so they
    finish together (threads sharing a core run at unequal speeds). Returns once every
    task is done (they write into the caller's buffers), re-raising a task's error.
    """
    threads = max(1, min(DECODE_THREADS, len(tasks), nbytes // PART_BYTES))
    if threads == 1:
        for task in tasks:
            work(task)
        return
    todo = iter(tasks)
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                task = next(todo, _DONE)
            if task is _DONE:
                return
            work(task)  # type: ignore[arg-type]

    pool = _decode_pool()
    futures = [pool.submit(drain) for _ in range(threads - 1)]
    try:
        drain()
    finally:
        for future in futures:
            future.result()


_DONE = object()


def even_parts(n: int) -> list[slice]:
    """``[0, n)`` in :data:`DECODE_THREADS` slices of equal length (the last shorter)."""
    step = max(1, -(-n // DECODE_THREADS))
    return [slice(k, k + step) for k in range(0, n, step)]


def _decode_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DECODE_THREADS - 1, thread_name_prefix="trlrec-decode")
        return _pool


def _forget_pool() -> None:  # a forked child has none of its parent's threads
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)
