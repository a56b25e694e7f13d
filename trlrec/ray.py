"""Ray: record on Ray workers into one store, and read a store as a ``ray.data.Dataset``.

Recording: an env factory whose env holds a :class:`~trlrec.TensorDictRecorder` at one
path, handed to TorchRL's ``RayCollector``, makes each remote worker write its own shard
of one dataset on a directory every worker sees. Ray ends the workers with ``ray.kill``
(no ``close()``, no exit handlers): what each writer appended is committed by its own
clock (``commit_every_seconds``) and, with ``post_collect_hook=commit_writers``, before
each batch leaves the worker. See ``docs/RAY.md``.

Reading: :func:`read_transitions` and :func:`read_episodes` plan read tasks over the
store's shards on the caller (from the commit records: nothing is read but the index)
and each task maps its shard's chunks and yields blocks of at most ``block_rows`` rows,
so a job streams a store of any size with bounded memory. Nothing from disk is
unpickled: the tasks read the store's JSON records and raw column files.

``import trlrec`` does not import Ray, nor does ``import trlrec.ray`` import Ray Data
(a collector worker that only runs :func:`commit_writers` does not pay for it); the
readers need ``pip install 'trlrec[ray]'`` and raise
:class:`~trlrec.errors.MissingDependencyError` without it. The datasource lives in
:mod:`trlrec._ray_source`.

Example:
    ``read_transitions(path)`` is ``ray.data.read_datasource(TrajectoryDatasource(path))``;
    the source plans its read tasks on the caller, and a task is what a Ray worker runs:

    >>> import tempfile, torch
    >>> from tensordict import TensorDict
    >>> from trlrec import TrajectoryWriter
    >>> from trlrec.ray import TrajectoryDatasource
    >>> obs = torch.arange(5.0).unsqueeze(-1)  # each step's "next" is the next root
    >>> steps = TensorDict({"observation": obs[:-1], "action": torch.ones(4, 1).long(),
    ...                     "next": {"observation": obs[1:],
    ...                              "done": torch.tensor([[False], [True], [False], [False]])}},
    ...                    [4])
    >>> path = tempfile.mkdtemp() + "/run"
    >>> with TrajectoryWriter(path) as w:
    ...     w.extend(steps)
    >>> source = TrajectoryDatasource(path, block_rows=3)
    >>> [task.metadata.num_rows for task in source.get_read_tasks(2)]
    [3, 1]
    >>> block = next(iter(source.get_read_tasks(1)[0]()))  # a pyarrow Table of 3 rows
    >>> block.column_names
    ['observation', 'next.observation', 'action', 'next.done', 'episode_index', 'step_index']
    >>> block["episode_index"].to_pylist(), block["step_index"].to_pylist()
    ([0, 0, 1], [0, 1, 0])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trlrec.errors import MissingDependencyError
from trlrec.storage.commit_clock import open_writers

if TYPE_CHECKING:  # at run time on first use (module __getattr__): it imports Ray Data
    from trlrec._ray_source import TrajectoryDatasource

__all__ = [
    "read_transitions",
    "read_episodes",
    "TrajectoryDatasource",
    "commit_writers",
    "EPISODE_INDEX",
    "STEP_INDEX",
    "NUM_STEPS",
    "FLAGS",
]

EPISODE_INDEX = "episode_index"
"""Column: the episode's index in the store, as :class:`~trlrec.TrajectoryReader` numbers it."""
STEP_INDEX = "step_index"
"""Column of :func:`read_transitions`: the transition's index in its episode."""
NUM_STEPS = "num_steps"
"""Column of :func:`read_episodes`: the episode's transitions ``T``."""
FLAGS = "flags"
"""Column of :func:`read_episodes`: how it ended (``trlrec.storage.format.FLAG_*``: 1 done by
the env, 2 cut, 4 still open at the commit read)."""


def _ray_data() -> Any:
    """``ray.data``, or the error saying how to install it."""
    try:
        import ray.data
    except ImportError as err:
        raise MissingDependencyError(
            f"ray is needed to read a trlrec store with Ray Data ({err}); install it with "
            "pip install 'trlrec[ray]'"
        ) from err
    return ray.data


# ----------------------------------------------------------------- recording
def commit_writers(batch: Any = None) -> None:
    """Commit what every trlrec writer open in this process appended.

    A collector's ``post_collect_hook``: ``RayCollector(..., post_collect_hook=commit_writers)``
    runs it in each remote worker after each batch, before the batch is sent, so every batch
    the driver receives is committed in the store, whatever ends the worker later (TorchRL's
    ``shutdown()`` kills the workers without closing their envs). Without it the writers
    commit on their own clock (``commit_every_seconds``, default 5 s, also while the worker
    waits), and a worker killed sooner loses what it appended since its last commit.

    Args:
        batch: the batch the collector yields (unused; the hook's signature).
    """
    for writer in open_writers():
        writer.flush()


def __getattr__(name: str) -> Any:
    if name == "TrajectoryDatasource":  # a ray.data.Datasource: Ray Data is imported now
        _ray_data()
        from trlrec._ray_source import TrajectoryDatasource

        return TrajectoryDatasource
    raise AttributeError(f"module 'trlrec.ray' has no attribute {name!r}")


def read_transitions(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    separator: str = ".",
    ids: bool = True,
    block_rows: int = 4096,
    **read_args: Any,
) -> Any:
    """A trlrec store as a ``ray.data.Dataset`` of transitions, one row per transition.

    The columns are flat: a root key's values under its name (nested keys joined by
    ``separator``: ``("agent", "obs")`` is ``agent.obs``), a ``"next"`` key's under
    ``next.<name>`` (``next.observation``, ``next.reward``, ``next.done``), so
    ``TensorDict(batch).unflatten_keys(".")`` rebuilds the rollout rows. Each value has
    the recorded dtype and shape (bfloat16 comes as float32, exactly; complex keys cannot
    be Arrow columns: leave them out with ``columns``). With ``ids``, ``episode_index``
    (as :class:`~trlrec.TrajectoryReader` numbers the episodes) and ``step_index`` (the
    transition's index in its episode) say where each row comes from.

    Read tasks go over the shards in parallel (a shard per worker, or chunks of one);
    each yields blocks of at most ``block_rows`` transitions, mapped from the store's
    column files and copied once into the block, so memory stays bounded by Ray's
    streaming, whatever the store's size. The store is read as committed when this is
    called; every Ray node must see it at ``path``. Within a block, an episode's
    transitions come in order; blocks come in Ray's order (``DataContext``'s
    ``execution_options.preserve_order`` keeps the store's).

    Args:
        path: the store directory.
        columns: the columns to read (default: all); fewer columns read fewer bytes.
        separator: joins the components of nested keys in column names.
        ids: add the ``episode_index`` and ``step_index`` columns.
        block_rows: transitions per block.
        **read_args: passed to ``ray.data.read_datasource`` (``override_num_blocks``,
            ``concurrency``, ``ray_remote_args``...).

    Returns:
        A ``ray.data.Dataset``.

    Raises:
        MissingDependencyError: Ray Data is not installed (``pip install 'trlrec[ray]'``).
        NotAStoreError: ``path`` is not a store.
        CorruptStoreError: a shard is damaged (the message names the file).
        ConfigError: an unknown column, a key holding the separator, a bad ``block_rows``.
        UnsupportedDataError: a complex key (Arrow has no complex type), shards with
            different schemas.
    """
    _ray_data()
    from trlrec._ray_source import TrajectoryDatasource

    source = TrajectoryDatasource(
        path, kind="transitions", columns=columns, separator=separator, ids=ids,
        block_rows=block_rows,
    )  # fmt: skip
    return _ray_data().read_datasource(source, **read_args)


def read_episodes(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    separator: str = ".",
    block_rows: int = 256,
    **read_args: Any,
) -> Any:
    """A trlrec store as a ``ray.data.Dataset`` of episodes, one row per episode.

    Each row holds an episode's ``[T, ...]`` array per column, named as in
    :func:`read_transitions` (``observation``, ``action``, ``next.observation``,
    ``next.reward``...: the rows of ``TrajectoryReader(path).episodes[i]``), and
    ``episode_index``, ``num_steps`` (``T``) and ``flags`` (1: ended by the env, 2: cut,
    4: still open at the commit read). A block holds at most ``block_rows`` episodes and
    about 64 MiB (one episode at least: a row is a whole episode, so an episode must fit
    in memory; stream longer ones with :func:`read_transitions`).

    Args:
        path: the store directory.
        columns: the columns to read (default: all).
        separator: joins the components of nested keys in column names.
        block_rows: episodes per block, at most.
        **read_args: passed to ``ray.data.read_datasource``.

    Returns:
        A ``ray.data.Dataset``.

    Raises:
        MissingDependencyError: Ray Data is not installed (``pip install 'trlrec[ray]'``).
        NotAStoreError, CorruptStoreError, ConfigError, UnsupportedDataError: as
            :func:`read_transitions`.
    """
    _ray_data()
    from trlrec._ray_source import TrajectoryDatasource

    source = TrajectoryDatasource(
        path, kind="episodes", columns=columns, separator=separator, block_rows=block_rows
    )
    return _ray_data().read_datasource(source, **read_args)
