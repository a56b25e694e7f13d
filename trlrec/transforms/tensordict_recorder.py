"""TensorDictRecorder: a TorchRL transform that writes every transition to a trlrec store."""

from __future__ import annotations

import inspect
import logging
import numbers
import os
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey, unravel_key
from torchrl.envs import EnvBase
from torchrl.envs.transforms import Transform

from trlrec.closing import Closeable
from trlrec.device_copy import DeviceCopies
from trlrec.errors import ClosedError, ConfigError, SchemaError, UnsupportedDataError
from trlrec.naming import safe_name
from trlrec.storage.dataset import check_metadata
from trlrec.storage.lanes import Lanes, merge_stats
from trlrec.storage.writer import TrajectoryWriter

__all__ = ["TensorDictRecorder"]

Key = tuple[str, ...]
StepFn = Callable[[TensorDictBase], "Mapping[str, Any] | None"]
EpisodeFn = Callable[[TensorDictBase], "Mapping[str, Any] | Sequence[Any] | None"]

STEP_METADATA = "step_metadata"
"""Root sub-tensordict holding what ``step_fn`` returns, one tensor per name."""
_DONE_NAMES = ("done", "terminated", "truncated")
_OWN_WRITER_ARGS = ("path", "metadata")
_WRITER_ARGS = frozenset(inspect.signature(TrajectoryWriter).parameters) - set(_OWN_WRITER_ARGS)


def _as_key(key: Any) -> Key:
    try:
        key = unravel_key(key)
    except Exception:  # tensordict raises several types for a bad key
        raise ConfigError(f"in_keys holds {key!r}, which is not a str or tuple of str") from None
    return (key,) if isinstance(key, str) else tuple(key)


def _leaves(td: TensorDictBase) -> list[Key]:
    return [(k,) if isinstance(k, str) else tuple(k) for k in td.keys(True, True)]


class TensorDictRecorder(Transform, Closeable):
    """Records every transition of a TorchRL rollout to a memory-mapped trlrec store.

    A transition is a rollout row: the root keys (observation, action, done flags,
    policy outputs...) and the ``"next"`` sub-tensordict. Read the store back with
    :class:`~trlrec.TrajectoryReader`: its episodes equal the rollout's rows, key by
    key, bit for bit. Data is committed at episode ends and every
    ``commit_every_steps`` / ``commit_every_seconds`` (writer options), so a
    forgotten :meth:`dump` or a crash loses at most the last commit interval.

    Three ways to use it:

    1. **As a transform** (``env.append_transform(rec)``, ``TransformedEnv(env, rec)``
       or inside a ``Compose``): each ``env.step`` records the root (with the action)
       and ``"next"``; each reset ends the reset sub-envs' episodes. The data flowing
       through is not modified and the specs pass through unchanged. Put it last in
       the stack: it records ``"next"`` as the transforms before it left it, and the
       root as the inverse transforms after it made it.
    2. **As a rollout callback** (``env.rollout(n, callback=rec)``): TorchRL calls
       ``rec(env, tensordict)``. With ``break_when_any_done=False`` the callback gets
       full rows and they are recorded as in 1, except that TorchRL never calls the
       callback for the last step of a rollout (``rollout(n)`` records ``n - 1``
       transitions) and episodes are split by done flags and by observations that do
       not continue the previous step (no reset signal). With
       ``break_when_any_done=True`` (TorchRL's default) the callback only gets the
       step-MDP'd root: the next observation, done flags and the action that led there;
       no reward, no ``"next"``, and no call for the step that ends the episode. The
       recorder then pairs consecutive calls into transitions without reward (root:
       call ``k - 1``'s observation with call ``k``'s action; ``"next"``: call ``k``):
       ``rollout(n)`` gives ``n - 2`` transitions at most, and never the done step; the
       recorder warns once when this happens. Use ``break_when_any_done=False``, or 1
       or 3, to record rewards and whole episodes.
    3. **From collector batches** (:meth:`extend`): the batches of every TorchRL
       collector: ``Collector`` and ``AsyncCollector`` (``[T]``, or ``[B, T]`` over a
       batched env), ``MultiSyncCollector`` (workers stacked as rows, or one after the
       other along time with ``cat_results=-1``) and ``MultiAsyncCollector`` (one
       worker's batch at a time, interleaved). Episodes are stitched across batches by
       ``("collector", "traj_ids")`` and by continuity of the observations, and the
       workers of a multi-process collector are kept apart: a batch (or the part of
       one) that continues another worker's trajectories than the last goes to that
       worker's *lane*, a shard of its own (:mod:`trlrec.storage.lanes` states the
       rule), so no episode is cut that the env did not end. What a batch must carry
       for that: ``("collector", "traj_ids")`` (TorchRL's collectors write it unless
       ``track_traj_ids=False``; ids unique across the batches given to one recorder,
       as one collector's are) and the ``"next"`` done flags. Without trajectory ids
       the batches are one stream of steps, as before routing existed.

    Batched envs (``batch_size=[B]``, ``SerialEnv``, ``ParallelEnv``) give one episode
    stream per sub-env.

    **In worker processes**: an env factory whose env holds a recorder at one path,
    handed to a collector or to ``ParallelEnv``, makes each worker record a shard of
    its own of one dataset (shards are named ``<host>[-r<rank>]-p<pid>-NNNNNN``, so
    they never collide across processes or machines). A worker's recorder does not
    need ``close()`` (TorchRL's workers do not call it on a plain ``EnvBase``): its
    writer commits on its own clock and at the worker's normal exit. A recorder that
    recorded in the parent before a worker was forked from it writes a new shard in
    the worker too; the parent's stays the parent's. See ``docs/SCALING.md``. Every
    step is copied when it is recorded, so shared buffers (``ParallelEnv``) may be
    reused. Steps and :meth:`extend` batches on a GPU are
    copied to pinned host memory on a side stream (:mod:`trlrec.device_copy`) and handed
    to the store one step (or batch) later (at once by :meth:`dump` and :meth:`close`),
    so the env's stream never waits and the step loop waits for no copy.

    The first arguments are ``torchrl.record.TensorDictRecorder``'s, in its order
    (``out_file_base``, ``skip_reset``, ``skip``, ``in_keys``), so switching is an
    import change; ``out_file_base`` names the store directory (TorchRL's is a file
    prefix), and ``skip`` defaults to 1 (TorchRL: 4).

    Args:
        path: the store directory (created, or appended to as a new shard). May be
            omitted when ``logger`` is given: the data then goes to
            ``<logger's experiment directory>/<tag>``.
        skip_reset: TorchRL's: do not record what ``env.reset()`` returns as an item
            of its own. trlrec never does (the reset observation is the root of the
            episode's first transition), so both values record the same.
        logger: a trlrec or TorchRL logger; :meth:`dump` logs episode statistics to it
            and tells it where the trajectories are.
        tag: the name of the recording in the logger (scalars ``<tag>/episode_return``,
            ``<tag>/episode_length``, ``<tag>/episodes``) and its directory name when
            ``path`` is omitted.
        in_keys: the keys to keep (default: all). A key ``k`` keeps ``k`` in the root
            and in ``"next"``; ``("next", k)`` keeps it in ``"next"`` only. Done flags
            (``done``, ``terminated``, ``truncated``), the collectors' trajectory ids
            and ``step_metadata`` are always kept.
        skip: keep every ``skip``-th transition (``skip=1``: all). With ``skip > 1``
            kept transitions are not consecutive, and the store keeps an episode as
            consecutive timesteps, so **each kept transition is stored as an episode of
            one step**, flagged done (``episode_info(i)["flags"] == 1``) when it ended
            the env's episode; episode statistics are then not logged. Tag the steps
            with ``step_fn`` to regroup them.
        out_file_base: TorchRL's name for ``path`` (pass one of the two).
        metadata: a JSON-serialisable dict stored once with the recording.
        step_fn: ``step_fn(transition) -> dict | None`` called for each recorded
            transition (a rollout row, ``[]`` or ``[B]``; in :meth:`extend` the whole
            ``[T]``/``[B, T]`` batch). Each value, a number or a tensor whose leading
            dims are the transition's batch size, is stored under
            ``("step_metadata", name)``. Return the same names, shapes and dtypes at
            every step (a recording keeps one schema).
        episode_fn: ``episode_fn(transition) -> dict | None`` called for each recorded
            transition (``[]`` or ``[B]``, also in :meth:`extend`); a dict (or one per
            sub-env) of JSON values attached to the transition's episode, the last
            non-None one kept (``TrajectoryReader.episode_metadata(i)``).
        max_lanes: the most shards :meth:`extend` opens to keep interleaved collector
            workers apart (default 64: more than a collector's workers). Past it, a
            batch starting new trajectories goes to the lane written longest ago, ending
            its open episodes (flagged cut): the bound for a collector that restarts
            its envs at every batch (``reset_at_each_iter=True``).
        **writer_kwargs: passed to :class:`~trlrec.TrajectoryWriter` (``chunk_rows``,
            ``commit_every_steps``, ``commit_every_seconds``, ``durable``, ``shard``...).
            The env's specs are recorded from the transform's parent or the rollout
            callback's env; for collector batches pass ``specs=collector.env.specs``.

    Raises:
        ConfigError: for an invalid argument, or no ``path`` and a logger without an
            experiment directory.
        UnsupportedDataError: ``metadata`` is not a JSON-serialisable dict.

    While recording, a key, shape or dtype that changes raises
    :class:`~trlrec.errors.SchemaError` naming the key and both shapes and dtypes, a
    value that cannot be stored :class:`~trlrec.errors.UnsupportedDataError`;
    everything committed before stays readable.

    Examples:
        >>> import tempfile
        >>> from torchrl.envs import GymEnv
        >>> from trlrec import TensorDictRecorder, TrajectoryReader
        >>> path = tempfile.mkdtemp() + "/cartpole"
        >>> with TensorDictRecorder(path, metadata={"agent": "random"}) as rec:
        ...     env = GymEnv("CartPole-v1").append_transform(rec)
        ...     rollout = env.rollout(20, break_when_any_done=False)
        >>> r = TrajectoryReader(path)
        >>> r.num_steps, r.metadata
        (20, {'agent': 'random'})
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        skip_reset: bool = True,
        skip: int = 1,
        in_keys: Sequence[NestedKey] | None = None,
        *,
        out_file_base: str | os.PathLike[str] | None = None,
        logger: Any = None,
        tag: str = "trajectories",
        metadata: dict[str, Any] | None = None,
        step_fn: StepFn | None = None,
        episode_fn: EpisodeFn | None = None,
        max_lanes: int = 64,
        **writer_kwargs: Any,
    ):
        keys = None if in_keys is None else [_as_key(k) for k in _key_list(in_keys)]
        super().__init__(in_keys=None if keys is None else [k for k in keys])
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
            raise ConfigError(f"skip must be an int >= 1, got {skip!r}")
        if isinstance(max_lanes, bool) or not isinstance(max_lanes, int) or max_lanes < 1:
            raise ConfigError(f"max_lanes must be an int >= 1, got {max_lanes!r}")
        self.max_lanes = max_lanes
        for name, fn in (("step_fn", step_fn), ("episode_fn", episode_fn)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"{name} must be callable or None, got {type(fn).__name__}")
        unknown = sorted(set(writer_kwargs) - _WRITER_ARGS)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown}; TensorDictRecorder passes these to "
                f"TrajectoryWriter: {sorted(_WRITER_ARGS)}"
            )
        self.tag = tag
        safe_name(tag)
        self.logger = logger
        self.skip = skip
        self.metadata = check_metadata(metadata)
        self.step_fn = step_fn
        self.episode_fn = episode_fn
        self.writer_kwargs = dict(writer_kwargs)
        self._keep = keys
        self.skip_reset = _torchrl_skip_reset(skip_reset)
        self.path = self._resolve_path(_torchrl_path(path, out_file_base))
        self._closed = False
        self._new_runtime()

    # ---------------------------------------------------------------- set-up
    def _resolve_path(self, path: str | os.PathLike[str] | None) -> Path:
        if path is not None:
            if not isinstance(path, str | os.PathLike):
                raise ConfigError(f"path must be a str or os.PathLike, got {type(path).__name__}")
            return Path(path)
        if self.logger is None:
            raise ConfigError("TensorDictRecorder needs a path, or a logger to put the data under")
        from trlrec.loggers.base import experiment_dir_of

        directory = experiment_dir_of(self.logger)
        if directory is None:
            raise ConfigError(
                f"the logger {type(self.logger).__name__} has no experiment directory (no "
                "'experiment_dir', nor 'experiment.log_dir'); pass path=... to say where the "
                "trajectories go"
            )
        return Path(directory) / safe_name(self.tag)

    def _new_runtime(self) -> None:
        """State that belongs to one recording process (never shared by clones/pickles/forks)."""
        _RECORDERS.add(self)
        self._writer: TrajectoryWriter | None = None
        self._lanes: Lanes | None = None  # extend()'s writers, one per interleaved worker
        self._direct: TrajectoryWriter | None = None  # the writer, when _record passes steps as-is
        self._select: tuple[list[Key], list[Key]] | None = None
        self._seen = 0
        self._prev: TensorDictBase | None = None
        self._async: bool | None = None
        self._copies = DeviceCopies()  # the device path: steps and batches on a GPU
        self._pending_reset: torch.Tensor | None = None  # a reset behind an in-flight copy

    def _open_writer(self, env: EnvBase | None = None) -> TrajectoryWriter:
        kwargs = self.writer_kwargs
        if env is not None and kwargs.get("specs") is None:
            kwargs = {**kwargs, "specs": _storable_specs(env)}
        self._writer = TrajectoryWriter(self.path, metadata=self.metadata, **kwargs)
        return self._writer

    def _lanes_of(self, writer: TrajectoryWriter) -> Lanes:
        """The lanes :meth:`extend` routes batches to; the first is ``writer``."""
        if self._lanes is None:
            kwargs = dict(self.writer_kwargs)
            shard = kwargs.pop("shard", None)

            def open_lane(i: int) -> TrajectoryWriter:
                name = None if shard is None else f"{shard}-lane{i}"
                return TrajectoryWriter(self.path, metadata=self.metadata, shard=name, **kwargs)

            key = kwargs.get("episode_key", ("collector", "traj_ids"))
            key = (key,) if isinstance(key, str) else key
            self._lanes = Lanes(writer, open_lane, key, self.max_lanes)
        return self._lanes

    def clone(self) -> TensorDictRecorder:
        """A recorder with the same settings and no parent; it writes its own new shard."""
        out = super().clone()
        out._new_runtime()
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        runtime = (
            "_writer",
            "_lanes",
            "_direct",
            "_select",
            "_prev",
            "_async",
            "_copies",
            "_pending_reset",
        )
        for name in runtime:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._new_runtime()

    # ------------------------------------------------------------ call forms
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``rec(env, td)`` (a rollout callback) or ``rec(td)`` (as :meth:`forward`)."""
        if len(args) == 2 and not kwargs and isinstance(args[0], EnvBase):
            if not isinstance(args[1], TensorDictBase):
                raise SchemaError(
                    f"the rollout callback got {type(args[1]).__name__}, expected a TensorDict"
                )
            self._check_open()
            self._record_callback(args[0], args[1])
            return None
        return super().__call__(*args, **kwargs)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Records a rollout row (unbatched) or a ``[T]``/``[B, T]`` batch; returns it as is."""
        if not isinstance(tensordict, TensorDictBase):
            raise SchemaError(f"forward takes a TensorDict, got {type(tensordict).__name__}")
        self._check_open()
        if tensordict.batch_dims == 0:
            self._record_row(tensordict)
        else:
            self._extend(tensordict)
        return tensordict

    def extend(self, batch: TensorDictBase) -> None:
        """Records a batch of rollout rows, ``[T]`` or ``[B, T]`` (time last), as collectors give.

        Episodes continue across calls: a batch whose first step continues the
        previous batch's last one (same trajectory id, matching observation) extends
        its episode.

        Raises:
            SchemaError: not a TensorDict with a time dimension and ``"next"``, or a key,
                shape or dtype that differs from the recording's.
        """
        if not isinstance(batch, TensorDictBase) or batch.batch_dims not in (1, 2):
            raise SchemaError(
                "extend takes a TensorDict of rollout rows with batch size [T] or [B, T], got "
                f"{type(batch).__name__} of batch size {getattr(batch, 'batch_size', None)}"
            )
        if not isinstance(batch.get("next", None), TensorDictBase):
            raise SchemaError("the batch has no 'next' sub-tensordict; extend takes rollout rows")
        self._check_open()
        self._extend(batch)

    # -------------------------------------------------------- transform hooks
    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        writer = self._direct  # a plain recording: the step goes to the writer as it is
        plain = self.skip == 1 and self.step_fn is None and self.episode_fn is None
        if writer is not None and plain and not self._closed:  # (settings may change)
            writer.append_transition(tensordict, next_tensordict)
            return next_tensordict
        self._check_open()
        self._record(tensordict, next_tensordict)
        return next_tensordict

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        self._check_open()
        writer = self._writer
        if writer is not None and writer.schema is not None:
            n = writer.schema.num_streams
            mask = None if tensordict is None else tensordict.get("_reset", None)
            if mask is not None:
                mask = mask.reshape(n, -1).any(-1) if mask.numel() % n == 0 else None
            self._end_episodes(writer, mask, n)
        return tensordict_reset

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        return next_tensordict

    # ------------------------------------------------------------- recording
    def _record_callback(self, env: EnvBase, td: TensorDictBase) -> None:
        if self._writer is None:
            self._open_writer(env)  # the callback's env: its specs are recorded
        if isinstance(td.get("next", None), TensorDictBase):
            self._record_row(td)
            return
        # A step-MDP'd root: the observation after action a_k, and a_k. Pair it with the
        # previous call's: (obs_k, a_k) -> obs_k+1, without reward.
        self._warn_step_mdp_callback()
        current = td.exclude("_step", "_reset").clone()
        actions = [k for k in env.action_keys if k in current.keys(True)]
        if self._prev is not None:
            root = self._prev.exclude(*actions).update(current.select(*actions))
            self._record(root, current.exclude(*actions))
        self._prev = current

    def _warn_step_mdp_callback(self) -> None:
        """Once per recorder: the callback form with ``break_when_any_done=True`` loses data."""
        if getattr(self, "_warned_step_mdp", False):
            return
        self._warned_step_mdp = True
        warnings.warn(
            f"TensorDictRecorder({str(self.path)!r}) is a rollout callback with "
            "break_when_any_done=True (TorchRL's default), which hands it the next "
            "observation only: the recorded transitions have no reward and the step that "
            "ends the episode is missing. To record them, call env.rollout(..., "
            "callback=rec, break_when_any_done=False), or put the recorder in the env "
            "(env.append_transform(rec))",
            UserWarning,
            stacklevel=4,
        )

    def _record_row(self, row: TensorDictBase) -> None:
        next_ = row.get("next", None)
        if not isinstance(next_, TensorDictBase):
            raise SchemaError(
                "the step has no 'next' sub-tensordict; a recorder records rollout rows (root "
                "keys plus 'next')"
            )
        self._record(row, next_)

    def _record(self, root: TensorDictBase, next_: TensorDictBase) -> None:
        """Records one transition given as its two parts (``root`` may hold ``"next"``)."""
        writer = self._writer or self._open_writer(getattr(self, "parent", None))
        if self.skip > 1:  # counted only when needed: nn.Module.__setattr__ costs ~1.5 us
            self._seen += 1
            if self._seen % self.skip:
                return
        meta = None
        if self.step_fn is not None or self.episode_fn is not None:
            transition = root.copy()
            transition.set("next", next_)
            if self.episode_fn is not None:
                meta = _episode_meta(self.episode_fn(transition), transition)
            if self.step_fn is not None:
                values = _step_values(self.step_fn(transition), transition.batch_size)
                if values is not None:
                    root = root.copy()
                    root.set(STEP_METADATA, values)
        if self._keep is not None:
            root, next_ = self._selected(root, next_)
        if self._async is None:
            self._async = self._copies.wanted(next_) or self._copies.wanted(root)
        if self._async:
            self._record_async(writer, root, next_, meta)
            return
        if self._keep is None and self._direct is None:
            self._direct = writer  # _step passes plain steps as they are from now on
        writer.append_transition(root, next_, episode_metadata=meta)

    def _record_async(
        self, writer: TrajectoryWriter, root: TensorDictBase, next_: TensorDictBase, meta: Any
    ) -> None:
        """Start this step's copy to the host; the writer gets it a step later (device path)."""
        parts: dict[str, Any] = {"root": root.exclude("next"), "next": next_}
        reset = self._take_reset(parts)

        def consume(host: dict[str, Any]) -> None:
            if reset:
                writer.end_episode(host["reset"].clone())
            writer.append_transition(host["root"], host["next"], episode_metadata=meta)

        self._copies.push(parts, consume)

    def _take_reset(self, parts: dict[str, Any]) -> bool:
        """Put a pending reset's mask into the parts of the copy pushed next; whether one was."""
        mask, self._pending_reset = self._pending_reset, None
        if mask is not None:
            parts["reset"] = mask
        return mask is not None

    def _end_episodes(
        self, writer: TrajectoryWriter, mask: torch.Tensor | None, num_streams: int
    ) -> None:
        """A reset of the sub-envs in ``mask`` (None: all ``num_streams``) before the next step.

        Behind copies in flight it goes with the next push (the writer gets it in order,
        and the step loop does not wait for the copies); otherwise to the writer now.
        """
        if self._async and len(self._copies):
            if mask is None:
                mask = torch.ones(num_streams, dtype=torch.bool)
            pending = self._pending_reset
            self._pending_reset = mask if pending is None else _or_masks(pending, mask)
            return
        writer.end_episode(mask)

    def _drain(self) -> None:
        """Hand every copy in flight (and a reset behind them) to the writer."""
        self._copies.drain()
        mask, self._pending_reset = self._pending_reset, None
        if mask is not None and self._writer is not None:
            self._writer.end_episode(mask.cpu())

    def _extend(self, batch: TensorDictBase) -> None:
        writer = self._writer or self._open_writer(getattr(self, "parent", None))
        if batch.get("next", None) is None:
            raise SchemaError("the batch has no 'next' sub-tensordict; extend takes rollout rows")
        T = batch.batch_size[-1]
        if self.skip > 1:
            keep = [t for t in range(T) if (self._seen + t + 1) % self.skip == 0]
            self._seen += T
            if not keep:
                return
            batch = batch[..., torch.tensor(keep)]
            T = len(keep)
        else:
            self._seen += T
        if T == 0:
            return
        metas = None
        if self.episode_fn is not None:
            metas = [_episode_meta(self.episode_fn(batch[..., t]), batch[..., t]) for t in range(T)]
        if self.step_fn is not None:
            values = _step_values(self.step_fn(batch), batch.batch_size)
            if values is not None:
                batch = batch.copy()
                batch.set(STEP_METADATA, values)
        if self._keep is not None:
            root, next_ = self._selected(batch, batch.get("next"))
            batch = root.set("next", next_)
        if self._copies.wanted(batch):
            self._extend_async(writer, batch, metas)
            return
        self._drain()
        self._lanes_of(writer).extend(batch, metas)

    def _extend_async(self, writer: TrajectoryWriter, batch: TensorDictBase, metas: Any) -> None:
        """Start a batch's copy to the host; the writer gets it at the next push (device path)."""
        parts: dict[str, Any] = {"batch": batch}
        reset = self._take_reset(parts)

        def consume(host: dict[str, Any]) -> None:
            if reset:
                writer.end_episode(host["reset"].clone())
            self._lanes_of(writer).extend(host["batch"], metas)

        self._copies.push(parts, consume)

    def _selected(
        self, root: TensorDictBase, next_: TensorDictBase
    ) -> tuple[TensorDictBase, TensorDictBase]:
        if self._select is None:
            self._select = self._selection(root, next_)
        root_keys, next_keys = self._select
        return root.select(*root_keys, strict=False), next_.select(*next_keys, strict=False)

    def _selection(self, root: TensorDictBase, next_: TensorDictBase) -> tuple[list, list]:
        """The root and ``"next"`` keys that ``in_keys`` keeps, fixed at the first step."""
        root_leaves = [k for k in _leaves(root) if k[0] != "next"]
        next_leaves = _leaves(next_)
        root_keys: list[Key] = []
        next_keys: list[Key] = []
        for key in self._keep or []:
            found = False
            if key[0] == "next" and len(key) > 1:
                if any(k[: len(key) - 1] == key[1:] for k in next_leaves):
                    next_keys.append(key[1:])
                    found = True
            else:
                if any(k[: len(key)] == key for k in root_leaves):
                    root_keys.append(key)
                    found = True
                if any(k[: len(key)] == key for k in next_leaves):
                    next_keys.append(key)
                    found = True
            if not found:
                have = sorted(map(str, [*root_leaves, *(("next", *k) for k in next_leaves)]))
                raise ConfigError(
                    f"in_keys names {key!r}, which the recorded data does not have; it has {have}"
                )
        episode_key = self.writer_kwargs.get("episode_key", ("collector", "traj_ids"))
        if isinstance(episode_key, str):
            episode_key = (episode_key,)
        always = [k for k in root_leaves if k[-1] in _DONE_NAMES]
        always += [k for k in root_leaves if k[0] == STEP_METADATA or k == episode_key]
        root_keys += [k for k in always if k not in root_keys]
        next_keys += [k for k in next_leaves if k[-1] in _DONE_NAMES and k not in next_keys]
        return root_keys, next_keys

    # -------------------------------------------------------- dump and close
    @property
    def writer(self) -> TrajectoryWriter | None:
        """The writer of this process's shard (``None`` until something is recorded)."""
        return self._writer

    def dump(self, suffix: str | None = None, step: int | None = None) -> None:
        """Commits everything recorded so far; with a logger, also logs to it.

        For the episodes that ended with a done flag since the last dump (not with
        ``skip > 1``), logs each one's ``<tag>/return`` and ``<tag>/length`` at the env
        frame it ended at (as TorchRL users plot them), and ``<tag>/episode_return``,
        ``<tag>/episode_length`` (their means) and ``<tag>/episodes`` (their count) at
        the dump's step; then tells the logger where the trajectories are
        (``log_trajectory``, or a line in its experiment directory for a logger without
        that method).

        Steps are env frames, as TorchRL's trainers count them and as
        :meth:`VideoRecorder.dump <trlrec.VideoRecorder.dump>` logs: the transitions
        this recorder has committed, all sub-envs together (with ``skip=1``, the env
        frames). An episode of sub-env ``b`` of ``B`` (stepping together) that ended at
        its ``k``-th transition is logged at frame ``B * k``.

        Args:
            suffix: appended to the scalar names' tag as ``<tag>_<suffix>``.
            step: the step of the means, the count and the trajectory line (default:
                the transitions committed); each episode stays at its own frame.

        After :meth:`close` it does nothing (everything was committed), as TorchRL's.
        """
        if self._closed:
            return
        if suffix is not None and not isinstance(suffix, str):
            raise ConfigError(f"suffix must be a str or None, got {suffix!r}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ConfigError(f"step must be an int or None, got {step!r}")
        self._dump(suffix, step)

    def _dump(self, suffix: str | None, step: int | None) -> None:
        writer = self._writer
        if writer is not None:
            self._drain()
            for w in self.writers:
                w.flush()
        if self.logger is None or writer is None or writer.schema is None:
            return
        from trlrec.loggers.base import log_trajectory_to, writing_to

        name = self.tag if suffix is None else f"{self.tag}_{suffix}"
        lanes = self._lanes
        at = sum(w.num_transitions for w in self.writers) if step is None else step
        # the writers' own counts since the last dump; frames count every lane's steps
        finished = writer.finished_episodes() if lanes is None else lanes.finished_episodes()
        with writing_to(self.logger, f"the episode statistics of {name!r}"):
            if self.skip == 1:
                self._log_episodes(name, finished, at)
            log_trajectory_to(self.logger, name, self.path, step=at)

    def _log_episodes(
        self, name: str, episodes: list[tuple[int, float | None, int]], at: int
    ) -> None:
        """Each episode's return and length at its frame; their means and count at ``at``."""
        if not episodes:
            return
        returns = [ret for _, ret, _ in episodes if ret is not None]
        for frame, ret, length in episodes:
            if ret is not None:
                self.logger.log_scalar(f"{name}/return", ret, step=frame)
            self.logger.log_scalar(f"{name}/length", float(length), step=frame)
        if returns:
            self.logger.log_scalar(f"{name}/episode_return", _mean(returns), step=at)
        lengths = [float(length) for _, _, length in episodes]
        self.logger.log_scalar(f"{name}/episode_length", _mean(lengths), step=at)
        self.logger.log_scalar(f"{name}/episodes", float(len(episodes)), step=at)

    def close(self) -> None:
        """Commits, ends the open episodes and releases the shard. Idempotent.

        Does not log; call :meth:`dump` first to log the last episodes.
        """
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            try:
                self._drain()
            finally:
                errors = []
                for w in self.writers:
                    try:
                        w.close()
                    except Exception as err:  # the other lanes still commit and close
                        errors.append(err)
                if errors:
                    raise errors[0]

    @property
    def writers(self) -> list[TrajectoryWriter]:
        """The writers of this process's shards: :attr:`writer`, and one per extra lane.

        :meth:`extend` keeps interleaved collector workers apart in lanes of their own
        (see :mod:`trlrec.storage.lanes`), each a shard.
        """
        if self._lanes is not None:
            return self._lanes.writers
        return [] if self._writer is None else [self._writer]

    def stats(self) -> dict[str, float | int | str | None]:
        """Health of the recording, a cheap snapshot in the shape TorchRL's ``LoggerMonitor`` polls.

        The writers' :meth:`TrajectoryWriter.stats <trlrec.TrajectoryWriter.stats>`
        summed over this process's shards (``shards`` counts them;
        ``seconds_since_commit`` is the oldest commit with steps waiting behind it), and
        ``steps_in_flight``: steps still being copied from a GPU. All zero before the
        first step. Poll it from any thread:
        ``LoggerMonitor(logger).watch(rec, name="recorder")``.

        Examples:
            >>> import tempfile
            >>> from torchrl.envs import GymEnv
            >>> from trlrec import TensorDictRecorder
            >>> rec = TensorDictRecorder(tempfile.mkdtemp() + "/run")
            >>> env = GymEnv("CartPole-v1").append_transform(rec)
            >>> _ = env.rollout(10, break_when_any_done=False)  # 10 steps, across resets
            >>> rec.dump()
            >>> s = rec.stats()
            >>> s["steps_committed"], s["shards"], s["errors"]
            (10, 1, 0)
            >>> rec.close()
        """
        empty: dict[str, float | int | str | None] = {
            "steps": 0, "steps_committed": 0, "steps_pending": 0, "episodes_committed": 0,
            "bytes_written": 0, "seconds_since_commit": 0.0, "shards": 0, "errors": 0,
            "last_error": None,
        }  # fmt: skip
        writers = self.writers
        out = merge_stats([w.stats() for w in writers]) if writers else empty
        out["steps_in_flight"] = len(self._copies)
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(
                f"TensorDictRecorder({str(self.path)!r}) was used after close(); create a new one"
            )

    def __repr__(self) -> str:
        keys = None if self._keep is None else [k[0] if len(k) == 1 else k for k in self._keep]
        name = type(self).__name__
        return f"{name}({str(self.path)!r}, tag={self.tag!r}, in_keys={keys}, skip={self.skip})"


# ----------------------------------------------------------------------------- helpers


_RECORDERS: weakref.WeakSet[TensorDictRecorder] = weakref.WeakSet()
"""The recorders of this process: a forked child starts their runtime state afresh."""


def _after_fork_in_child() -> None:
    """A forked child records into shards of its own, as a pickled recorder does.

    Its recorders forget the parent's writers (left to the parent, see
    :meth:`TrajectoryWriter.forked <trlrec.TrajectoryWriter.forked>`) and open their
    own where they next record.
    """
    for rec in list(_RECORDERS):
        rec._new_runtime()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _storable_specs(env: EnvBase) -> Any:
    """``env.specs`` if they can be stored as JSON, else None (logged: recording goes on)."""
    from trlrec.specs import specs_to_json

    specs = env.specs
    try:
        specs_to_json(specs)
    except UnsupportedDataError as err:
        logging.getLogger(__name__).warning("the env's specs are not recorded: %s", err)
        return None
    return specs


def _torchrl_path(
    path: str | os.PathLike[str] | None, out_file_base: str | os.PathLike[str] | None
) -> str | os.PathLike[str] | None:
    """``path``, or TorchRL's ``out_file_base`` for it."""
    if path is not None and out_file_base is not None:
        raise ConfigError(
            f"got path={str(path)!r} and out_file_base={str(out_file_base)!r}, which mean the "
            "same (the store directory); pass one"
        )
    return out_file_base if path is None else path


def _torchrl_skip_reset(skip_reset: Any) -> bool:
    if not isinstance(skip_reset, bool):
        raise ConfigError(
            f"skip_reset must be a bool, got {skip_reset!r}; it is TorchRL's second argument "
            "(pass the store directory first, then keywords such as skip=...)"
        )
    return skip_reset


def _key_list(in_keys: Any) -> list[Any]:
    if isinstance(in_keys, str | tuple):
        return [in_keys]
    if not isinstance(in_keys, Sequence):
        raise ConfigError(f"in_keys must be a key or a list of keys, got {type(in_keys).__name__}")
    if not in_keys:
        raise ConfigError("in_keys is empty; pass None to keep every key")
    return list(in_keys)


def _or_masks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two resets' stream masks as one, on the accelerator if one is there.

    A CPU mask goes to the device (a blocking host-to-device copy of a few bytes); never
    the other way, which would sync with the env's stream or, non-blocking, be read early.
    """
    if a.device != b.device:
        if a.device.type == "cpu":
            a = a.to(b.device)
        else:
            b = b.to(a.device)
    return a | b


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _step_values(out: Any, batch_size: torch.Size) -> TensorDict | None:
    """What ``step_fn`` returned, as a tensordict of the transition's batch size."""
    if out is None:
        return None
    if not isinstance(out, Mapping):
        raise UnsupportedDataError(
            f"step_fn must return a dict of numbers/tensors or None, got {type(out).__name__}"
        )
    values = {}
    nb = len(batch_size)
    for name, value in out.items():
        if not isinstance(name, str) or not name:
            raise UnsupportedDataError(
                f"step_fn returned the name {name!r}; names are non-empty str"
            )
        key = (STEP_METADATA, name)
        if isinstance(value, numbers.Number) and not isinstance(value, torch.Tensor):
            value = torch.tensor(value)
        if not isinstance(value, torch.Tensor):
            raise UnsupportedDataError(
                f"step_fn value {key!r} is {type(value).__name__}; trlrec stores numbers and "
                "tensors only (encode it as a tensor, or put it in episode_fn's JSON)"
            )
        if tuple(value.shape[:nb]) != tuple(batch_size):
            if value.numel() != 1:
                raise SchemaError(
                    f"step_fn value {key!r} has shape {tuple(value.shape)}; its leading dims must "
                    f"be the transition's batch size {tuple(batch_size)}"
                )
            value = value.reshape(()).expand(batch_size)
        values[name] = value.detach()
    return TensorDict(values, batch_size=batch_size)


def _episode_meta(out: Any, transition: TensorDictBase) -> Any:
    """What ``episode_fn`` returned, checked: None, a dict, or one per sub-env."""
    if out is None or isinstance(out, dict):
        return out
    n = transition.batch_size.numel()
    if (
        isinstance(out, list | tuple)
        and len(out) == n
        and all(m is None or isinstance(m, dict) for m in out)
    ):
        return list(out)
    raise UnsupportedDataError(
        f"episode_fn must return a dict, None, or a list of {n} (one per sub-env), got "
        f"{type(out).__name__}"
    )
