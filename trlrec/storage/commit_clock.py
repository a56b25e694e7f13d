"""The commit rule, in one place: when what a writer appended must be committed.

And the writer's life outside of its calls: the commits while it is idle, its close
at interpreter exit (a forgotten ``close()``), and a fork (the child's copy leaves the
shard to the parent).

A commit is due every ``every_steps`` transitions, ``every_seconds`` after the last
commit, and ``min_interval`` after it once an episode has ended (with ``on_done``).
The writer asks :meth:`CommitClock.tick` after each append, or, where the native
capture counts its steps (:meth:`CommitClock.attach`), the clock hands the capture a
budget of steps and a deadline and is asked only at the step that spends either (or
ends an episode): the capture counts down and compares, the rule stays here. So that the rule also
holds while nobody appends (a collect-then-train loop, a worker waiting for its next
batch), one daemon thread per process (:class:`IdleCommitter`) sleeps until the
earliest deadline of the writers with uncommitted steps and has each commit then.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing.util
import os
import threading
import time
import weakref
from typing import Protocol

from trlrec.errors import ConfigError

__all__ = ["IDLE_GRACE", "CommitClock", "IdleCommitter", "StepCounter", "open_writers"]

IDLE_GRACE = 0.05
"""Seconds without a step after which the idle committer commits a due writer itself."""


class StepCounter(Protocol):
    """What counts steps for a clock between its ticks (the native capture)."""

    @property
    def pending(self) -> int:
        """Steps counted since the last :meth:`take`."""

    @property
    def ticked(self) -> float:
        """When the last step was counted (``time.monotonic()``)."""

    def take(self) -> int:
        """The steps counted since the last take; the count starts again."""

    def arm(self, budget: int, deadline: float, /) -> None:
        """Hand the clock the step that makes the count ``budget``, and any after ``deadline``."""


class CommitClock:
    """When a writer's next commit is due.

    Args:
        every_steps: commit after this many transitions.
        every_seconds: commit when this much time passed since the last commit.
        on_done: commit soon after an episode ends ...
        min_interval: ... but no sooner than this long after the last commit, so 16
            short-episode envs in a batch do not commit at every step.
    """

    __slots__ = ("_appended", "_counter", "_pending", "_ticked", "armed", "deadline",
                 "every_seconds", "every_steps", "last", "min_interval", "on_done")  # fmt: skip

    def __init__(
        self, every_steps: int, every_seconds: float, on_done: bool, min_interval: float
    ) -> None:
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ConfigError(f"commit_every_steps must be a positive int, got {every_steps!r}")
        if not every_seconds > 0:
            raise ConfigError(f"commit_every_seconds must be > 0, got {every_seconds!r}")
        if not min_interval >= 0:
            raise ConfigError(f"min_commit_interval must be >= 0, got {min_interval!r}")
        self.every_steps = every_steps
        self.every_seconds = float(every_seconds)
        self.on_done = on_done
        self.min_interval = float(min_interval)
        self.armed = math.inf  # the deadline the idle committer was told about
        self._ticked = 0.0  # when a step was last ticked
        self._pending = 0  # steps ticked since the last commit
        self._appended = 0  # steps ticked in all
        self._counter: StepCounter | None = None
        self.committed()

    @property
    def pending(self) -> int:
        """Steps appended since the last commit."""
        counter = self._counter
        return self._pending + (0 if counter is None else counter.pending)

    @property
    def ticked(self) -> float:
        """When a step was last appended (``time.monotonic()``)."""
        counter = self._counter
        return self._ticked if counter is None else max(self._ticked, counter.ticked)

    @property
    def appended(self) -> int:
        """Steps appended in all (the writer's ``num_steps``)."""
        counter = self._counter
        return self._appended + (0 if counter is None else counter.pending)

    def attach(self, counter: StepCounter | None) -> None:
        """Let ``counter`` count the steps between ticks (None: every step ticks)."""
        old = self._counter
        if old is not None:  # a replaced counter's steps were appended
            steps = old.take()
            self._pending += steps
            self._appended += steps
        self._counter = counter
        self._arm()

    def _arm(self) -> None:
        """Tell the counter which step the clock must see.

        The first after a commit (the idle committer learns of it then), else the one that
        makes the steps due; and any step at or after the deadline.
        """
        if self._counter is not None:
            budget = self.every_steps - self._pending if self._pending else 1
            self._counter.arm(budget, self.deadline)

    def committed(self) -> None:
        """A commit was made: nothing is pending, the clock starts again."""
        counter = self._counter
        if counter is not None:
            self._appended += counter.take()
        self._pending = 0
        self.last = time.monotonic()
        self.deadline = self.last + self.every_seconds
        self._arm()

    def tick(self, steps: int, ended: bool) -> bool:
        """``steps`` transitions were appended (``ended``: an episode ended); whether to commit.

        The steps the counter counted since the last tick are added to ``steps``.
        """
        counter = self._counter
        if counter is not None:
            steps += counter.take()
        self._pending += steps
        self._appended += steps
        if ended and self.on_done:
            self.deadline = min(self.deadline, self.last + self.min_interval)
        if self.deadline < self.armed:  # the idle committer must wake sooner
            self.armed = self.deadline
            IdleCommitter.get().wake()
        now = self._ticked = time.monotonic()
        self._arm()
        return self._pending >= self.every_steps or now >= self.deadline

    def due(self, now: float) -> bool:
        """Whether appended steps wait for a commit whose time has come, the writer idle.

        Idle: no step for :data:`IDLE_GRACE` seconds. A writer still being called commits
        at its own next step (:meth:`tick`), so the committer does not compete with it.
        """
        return self.pending > 0 and now >= max(self.deadline, self.ticked + IDLE_GRACE)

    def next_check(self) -> float:
        """When :meth:`due` may next become true."""
        return max(self.deadline, self.ticked + IDLE_GRACE)


class _Committing(Protocol):
    clock: CommitClock

    def commit_if_idle(self) -> bool: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def forked(self) -> None: ...


class IdleCommitter:
    """One daemon thread per process committing writers whose deadline passed while idle.

    It sleeps until the earliest deadline among the writers with pending steps (woken
    by :meth:`CommitClock.tick` when a deadline moves earlier) and then calls each
    due writer's ``commit_if_idle()``, which commits unless its own thread is in the
    middle of an append (it then commits itself). Writers are held weakly.
    """

    _instance: IdleCommitter | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._writers: weakref.WeakSet[_Committing] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._main, name="trlrec-commit", daemon=True)
        self._thread.start()

    @classmethod
    def get(cls) -> IdleCommitter:
        """This process's committer (a forked child starts its own)."""
        inst = cls._instance
        if inst is None or not inst._thread.is_alive():
            with cls._lock:
                inst = cls._instance
                if inst is None or not inst._thread.is_alive():
                    inst = cls._instance = IdleCommitter()
        return inst

    def add(self, writer: _Committing) -> None:
        """Watch ``writer``'s clock."""
        self._writers.add(writer)
        self._wake.set()

    def discard(self, writer: _Committing) -> None:
        """Stop watching ``writer``."""
        self._writers.discard(writer)

    def wake(self) -> None:
        """A deadline moved earlier: look again."""
        self._wake.set()

    def _main(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            sleep = math.inf
            for writer in list(self._writers):
                clock = writer.clock
                # commit_if_idle keeps a failure and raises it at the writer's next call
                if clock.due(now) and not writer.commit_if_idle():
                    sleep = min(sleep, 0.01)  # busy appending: it commits itself, or retry
                    continue
                if clock.pending > 0:
                    sleep = min(sleep, max(0.0, clock.next_check() - now))
                    clock.armed = clock.deadline
                else:
                    clock.armed = math.inf
            self._wake.wait(None if sleep == math.inf else sleep)


def open_writers() -> list[_Committing]:
    """The writers open in this process (those the idle committer watches).

    What a hook run in a worker process (``trlrec.ray.commit_writers``) flushes: it does
    not know the recorders the env factory made, the process does.
    """
    inst = IdleCommitter._instance
    return [] if inst is None else list(inst._writers)


@atexit.register
def _close_at_exit() -> None:
    """Commit and close writers still open when the interpreter exits (a forgotten close())."""
    inst = IdleCommitter._instance
    for writer in [] if inst is None else list(inst._writers):
        try:
            writer.close()
        except Exception:  # at exit there is no caller left to raise to: log it
            logging.getLogger(__name__).exception("closing %r at exit failed", writer)


def _after_fork_in_child() -> None:
    """A forked child has no committer thread, and its parent's writers are not its own.

    Each writer open in the parent is told it was forked (it refuses to write, commit
    or close the parent's shard); the child's own writers start a committer of their own.
    """
    for writer in open_writers():
        writer.forked()
    IdleCommitter._instance = None
    IdleCommitter._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_worker_exit(_: object) -> None:
    """Close this process's open writers when a ``multiprocessing`` child ends normally.

    The ``atexit`` close above does not run in a *forked* ``multiprocessing`` child, which
    leaves with ``os._exit`` after its target returns: a recorder inside a collector's or
    a ``ParallelEnv``'s worker would lose what it appended since its last commit. After
    each fork this registers the same close as a ``multiprocessing`` finalizer of the
    child, which its normal end runs (a spawned child runs ``atexit`` itself).
    """
    multiprocessing.util.Finalize(None, _close_at_exit, exitpriority=100)


multiprocessing.util.register_after_fork(_close_at_worker_exit, _close_at_worker_exit)
