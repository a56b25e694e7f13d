"""A trlrec store to a Minari dataset and back, episode by episode.

Minari (the Farama standard for offline RL, read by TorchRL's
``MinariExperienceReplay``) keeps per episode ``T + 1`` observations, ``T``
actions, rewards, terminations and truncations, and free-form infos. The export
maps them from the store's columns (:mod:`trlrec.export.layout`):

- observations: the observation state keys; one key is the observation space,
  several (or nested ones) a ``Dict`` space;
- actions: the action keys, converted to Minari's encoding (a one-hot action is
  written as its index for a ``Discrete`` space, a ``[1]``-shaped categorical one
  as a scalar);
- rewards / terminations / truncations: the scalar reward and the ``terminated``
  (else ``done``) / ``truncated`` flags of each transition;
- infos: every other column by its key (``T + 1`` values for a state key, ``T``
  for the others), so nothing is left behind.

Spaces are derived from the recorded specs (bounds, ``n``, ``nvec``). The store's
specs, key layout, metadata and episode metadata go into the dataset's metadata
(``trlrec`` entry) so that :func:`from_minari` rebuilds the store bit for bit:
same keys, shapes, dtypes, values, one-hot encodings, specs and metadata. The
default is lossless (raw arrays, ``jpeg=False``); ``jpeg=True`` lets Minari
JPEG-encode image observations (lossy, stated in the result's notes).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.data.tensor_specs import (
    Binary,
    BoundedContinuous,
    BoundedDiscrete,
    MultiCategorical,
    MultiOneHot,
    OneHot,
    TensorSpec,
    UnboundedContinuous,
    UnboundedDiscrete,
)

from trlrec.cli.columns import key_name
from trlrec.errors import ConfigError, SchemaError, UnsupportedDataError
from trlrec.export.layout import (
    column,
    episodes_with_steps,
    progress_bar,
    store_layout,
)
from trlrec.export.minari_types import EpisodeData, MinariDataset, load_minari
from trlrec.export.result import ExportResult
from trlrec.specs import SPECS_FILE, specs_from_json, specs_to_json
from trlrec.storage.dtypes import dtype_from_name, dtype_name
from trlrec.storage.jsonio import read_json
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry
from trlrec.storage.writer import TrajectoryWriter

__all__ = ["to_minari", "from_minari", "LAYOUT_VERSION"]

LAYOUT_VERSION = 1  # of the "trlrec" entry in a Minari dataset's metadata
_META_KEY = "trlrec"
_EPISODE_META_ATTR = "trlrec_episode_metadata"


# ------------------------------------------------------------ spaces, values
class _Codec:
    """A spec's gymnasium space and the conversion of ``[N, *shape]`` values both ways."""

    def __init__(
        self,
        space: Any,
        out: Callable[[torch.Tensor], np.ndarray],
        back: Callable[[np.ndarray], torch.Tensor],
    ):
        self.space, self.out, self.back = space, out, back


def _np_dtype(dtype: torch.dtype, where: str) -> np.dtype:
    if dtype is torch.bfloat16:
        return np.dtype(np.float32)  # numpy has no bfloat16; float32 holds it exactly
    if dtype.is_complex:
        raise UnsupportedDataError(f"key {where!r} is complex; Minari spaces are real")
    return torch.empty((), dtype=dtype).numpy().dtype


def _as_np(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu()
    return (x.float() if x.dtype is torch.bfloat16 else x).contiguous().numpy()


def _one_hot_index(x: torch.Tensor, where: str) -> torch.Tensor:
    ok = x.to(torch.int64).sum(-1) == 1
    if not bool(ok.all()):
        raise UnsupportedDataError(
            f"key {where!r} is a one-hot action but some values are not one-hot; Minari stores "
            "an index, which would not give them back"
        )
    return x.to(torch.int64).argmax(-1)


def _codec(spec: TensorSpec, where: str) -> _Codec:
    """The Minari space of one leaf spec and how its values are written and read back."""
    from gymnasium import spaces

    kind, shape, dtype = type(spec), tuple(spec.shape), spec.dtype

    def back_to(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(dtype).reshape(-1, *shape)

    if kind is OneHot:
        n = spec.space.n
        space = (
            spaces.Discrete(n) if len(shape) == 1 else spaces.MultiDiscrete(np.full(shape[:-1], n))
        )
        return _Codec(
            space,
            lambda x: _one_hot_index(x, where).numpy(),
            lambda a: torch.nn.functional.one_hot(torch.from_numpy(np.asarray(a, np.int64)), n).to(
                dtype
            ),
        )
    if kind is MultiOneHot:
        nvec = [int(n) for n in spec.nvec]

        def out(x: torch.Tensor) -> np.ndarray:
            parts = x.split(nvec, -1)
            return torch.stack([_one_hot_index(p, where) for p in parts], -1).numpy()

        def back(a: np.ndarray) -> torch.Tensor:
            idx = torch.from_numpy(np.asarray(a, np.int64))
            hot = [torch.nn.functional.one_hot(idx[..., i], n) for i, n in enumerate(nvec)]
            return torch.cat(hot, -1).to(dtype)

        return _Codec(spaces.MultiDiscrete(np.array(nvec)), out, back)
    if kind is Binary or (kind is UnboundedDiscrete and dtype is torch.bool):
        return _Codec(spaces.MultiBinary(list(shape) or [1]), lambda x: _as_np(x), back_to)
    if kind is Categorical:
        n = spec.space.n
        if len(shape) <= 1 and torch.Size(shape).numel() == 1:
            return _Codec(
                spaces.Discrete(n), lambda x: _as_np(x.reshape(-1).to(torch.int64)), back_to
            )
        return _Codec(
            spaces.MultiDiscrete(np.full(shape, n)), lambda x: _as_np(x.to(torch.int64)), back_to
        )
    if kind is MultiCategorical:
        nvec = spec.nvec.detach().cpu().numpy()
        return _Codec(spaces.MultiDiscrete(nvec), lambda x: _as_np(x.to(torch.int64)), back_to)
    if kind in (BoundedContinuous, BoundedDiscrete):
        np_dtype = _np_dtype(dtype, where)
        low, high = (
            _as_np(spec.space.low).astype(np_dtype),
            _as_np(spec.space.high).astype(np_dtype),
        )
        return _Codec(spaces.Box(low, high, shape, np_dtype), _as_np, back_to)
    if kind in (UnboundedContinuous, UnboundedDiscrete):
        np_dtype = _np_dtype(dtype, where)
        info = np.finfo(np_dtype) if np_dtype.kind == "f" else np.iinfo(np_dtype)
        bounds = (-np.inf, np.inf) if np_dtype.kind == "f" else (info.min, info.max)
        return _Codec(spaces.Box(*bounds, shape, np_dtype), _as_np, back_to)
    raise UnsupportedDataError(
        f"key {where!r} has a {kind.__name__} spec, which has no Minari space; leave it out "
        "of the recording (in_keys) or give the writer another spec"
    )


def _space_and_codecs(
    entries: list[Entry], specs: Composite, single_key: tuple[str, ...]
) -> tuple[Any, dict[tuple[str, ...], _Codec]]:
    """The space of several keys (a nested ``Dict``, or the leaf's own space for one key)."""
    from gymnasium import spaces

    codecs = {e.key: _codec(specs[e.key], key_name(e.key)) for e in entries}
    if len(entries) == 1 and entries[0].key == single_key:
        return codecs[entries[0].key].space, codecs
    tree: dict[str, Any] = {}
    for e in entries:
        node = tree
        for part in e.key[:-1]:
            node = node.setdefault(part, {})
        node[e.key[-1]] = codecs[e.key].space

    def build(node: dict[str, Any]) -> Any:
        return spaces.Dict({k: build(v) if isinstance(v, dict) else v for k, v in node.items()})

    return build(tree), codecs


def _nest(values: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, v in values.items():
        node = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = v
    return tree


def _pick(tree: Any, key: tuple[str, ...]) -> Any:
    for part in key:
        tree = tree[part]
    return tree


# ------------------------------------------------------------------ export
def _entry_json(e: Entry) -> dict[str, Any]:
    return {
        "key": list(e.key),
        "role": e.role,
        "shape": list(e.shape),
        "dtype": dtype_name(e.dtype),
    }


def to_minari(
    store: str | os.PathLike[str] | TrajectoryReader,
    dataset_id: str,
    *,
    env: str | None = None,
    jpeg: bool = False,
    author: str | None = None,
    description: str | None = None,
    progress: bool = True,
) -> ExportResult:
    """Write the episodes of a store as a new local Minari dataset ``dataset_id``.

    The dataset goes where Minari keeps its datasets (``MINARI_DATASETS_PATH``, by
    default ``~/.minari/datasets``) and opens with ``minari.load_dataset(dataset_id)``.

    Args:
        store: the store directory or an open reader.
        dataset_id: Minari's id, ``[namespace/]name-v<N>``.
        env: the Gymnasium id of the recorded env, so ``recover_environment()`` works.
        jpeg: let Minari JPEG-encode image observations (uint8 ``(H, W[, C])`` in
            [0, 255], at least 32 x 32): much smaller, **lossy**.
        author: the dataset's author (Minari metadata).
        description: the dataset's description (default: says it came from trlrec).
        progress: draw ``episodes done/total`` on stderr when it is a terminal.

    Returns:
        :class:`~trlrec.export.ExportResult`: the id, the dataset's directory, counts
        and the lossy steps taken (``notes``).

    Raises:
        MissingDependencyError: minari (or h5py) is not installed.
        ConfigError: the dataset id exists already or is malformed.
        UnsupportedDataError: a key has a spec with no Minari space.
    """
    minari, episode_buffer = load_minari()
    reader = store if isinstance(store, TrajectoryReader) else TrajectoryReader(store)
    layout = store_layout(reader)
    if not layout.observation:
        raise SchemaError(f"the store {str(reader.path)!r} has no observation key to export")
    specs = layout.specs
    obs_space, obs_codecs = _space_and_codecs(
        layout.observation, specs.observation, ("observation",)
    )
    if layout.action:
        act_space, act_codecs = _space_and_codecs(layout.action, specs.action, ("action",))
    else:
        from gymnasium import spaces

        act_space, act_codecs = spaces.Box(0, 0, (0,), np.float32), {}
    notes: list[str] = []
    if jpeg:
        notes.append("image observations are JPEG-encoded by Minari (jpeg=True): lossy")
    if any(e.dtype is torch.bfloat16 for e in (*layout.observation, *layout.action)):
        notes.append("bfloat16 keys are written as float32 (exact; read back as bfloat16)")
    if layout.reward is None:
        notes.append("the store has no scalar reward: Minari rewards are written as 0")
    recorded = reader.path / SPECS_FILE  # embedded as written: devices and all
    meta = {
        "version": LAYOUT_VERSION,
        "observation": [_entry_json(e) for e in layout.observation],
        "action": [_entry_json(e) for e in layout.action],
        "reward": None if layout.reward is None else _entry_json(layout.reward),
        "terminated": None if layout.terminated is None else _entry_json(layout.terminated),
        "truncated": None if layout.truncated is None else _entry_json(layout.truncated),
        "infos": [_entry_json(e) for e in layout.extra],
        "key_specs": specs_to_json(
            Composite(observation=specs.observation, action=specs.action, shape=())
        ),
        "env_specs": read_json(recorded) if recorded.is_file() else None,
        "metadata": reader.metadata,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari's "author is None" etc.
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                buffer=[],
                env=env,
                observation_space=obs_space,
                action_space=act_space,
                author=author,
                description=description or f"exported by trlrec from {reader.path.name}",
                algorithm_name=None,
                jpeg_encoding=jpeg,
                data_format="hdf5",
            )
    except ValueError as err:
        raise ConfigError(f"cannot create Minari dataset {dataset_id!r}: {err}") from err
    storage = dataset.storage
    storage.update_metadata({_META_KEY: meta})
    result = ExportResult(dataset_id, Path(storage.data_path).parent)
    flags_set_at_reset = False
    indices = list(episodes_with_steps(reader))
    with progress_bar(f"export {dataset_id}", len(indices), progress) as bar:
        for done, i in enumerate(indices):
            T = reader.episode_info(i)["num_steps"]
            obs = {e.key: obs_codecs[e.key].out(column(reader, i, e)) for e in layout.observation}
            act = {e.key: act_codecs[e.key].out(column(reader, i, e)) for e in layout.action}
            buffer = episode_buffer(
                observations=_single(obs, ("observation",)),
                actions=_single(act, ("action",)) if act else np.zeros((T, 0), np.float32),
                rewards=_scalar(reader, i, layout.reward, T, np.float32),
                terminations=_scalar(reader, i, layout.terminated, T, bool, shift=True),
                truncations=_scalar(reader, i, layout.truncated, T, bool, shift=True),
                infos=_nest({e.key: _as_np(column(reader, i, e)) for e in layout.extra}) or None,
            )
            for e in (layout.terminated, layout.truncated):
                if e is not None and bool(column(reader, i, e)[0].any()):
                    flags_set_at_reset = True
            storage.update_episodes([buffer])
            em = reader.episode_metadata(i)
            if em:
                attrs = {_EPISODE_META_ATTR: json.dumps(em, allow_nan=False)}
                storage.update_episode_metadata([attrs], [done])
            result.episodes += 1
            result.steps += T
            bar.update(done + 1)
    if flags_set_at_reset:
        notes.append(
            "some episodes start with a terminated/truncated flag set; Minari has no flag "
            "for the first observation, an import gives False there"
        )
    skipped = reader.num_episodes - len(indices)
    if skipped:
        result.notes.append(f"{skipped} episode(s) without a transition were left out")
    result.notes[:0] = notes
    return result


def _single(values: dict[tuple[str, ...], np.ndarray], single: tuple[str, ...]) -> Any:
    if len(values) == 1 and single in values:
        return values[single]
    return _nest(values)


def _scalar(
    reader: TrajectoryReader, i: int, e: Entry | None, T: int, default: Any, shift: bool = False
) -> np.ndarray:
    """A column of one value per transition (zeros of dtype ``default`` when absent)."""
    if e is None:
        return np.zeros(T, default)
    values = column(reader, i, e)
    if shift:  # a state flag: the transition's is the "next" one, rows 1..T
        values = values[1:]
    return _as_np(values.reshape(T))


# ------------------------------------------------------------------ import
def from_minari(
    dataset: str | MinariDataset,
    store: str | os.PathLike[str],
    *,
    progress: bool = True,
    **writer_kwargs: Any,
) -> ExportResult:
    """Write the episodes of a local Minari dataset to a new trlrec store.

    A dataset written by :func:`to_minari` comes back as it was recorded: the same
    keys, dtypes, values, specs (``specs.json``), metadata and episode metadata.
    Another Minari dataset becomes ``observation`` (or the keys of its ``Dict``
    space), ``action``, ``("next", "reward")`` of shape ``[1]``, the ``done`` /
    ``terminated`` / ``truncated`` flags, and its numeric infos under ``info``;
    its specs come from its spaces (``Discrete`` as ``Categorical``).

    Args:
        dataset: a Minari dataset id (local: nothing is downloaded) or a loaded
            ``MinariDataset``.
        store: the store to create (an existing store gets a new shard).
        progress: draw ``episodes done/total`` on stderr when it is a terminal.
        **writer_kwargs: passed to :class:`~trlrec.TrajectoryWriter`.

    Raises:
        MissingDependencyError: minari (or h5py) is not installed.
        NotAStoreError / ConfigError: the dataset id is not a local Minari dataset.
    """
    minari, _ = load_minari()
    if isinstance(dataset, str):
        try:
            dataset = minari.load_dataset(dataset)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(
                f"cannot open the Minari dataset {dataset!r}: {err}. It must be local: "
                "`minari list local` lists them (`minari download ID` fetches one)"
            ) from err
    raw = dataset.storage.metadata
    meta = raw.get(_META_KEY)
    plan = _TrlrecPlan(meta) if meta is not None else _ForeignPlan(dataset)
    result = ExportResult(str(store), Path(store))
    metadata = plan.metadata
    with TrajectoryWriter(store, metadata=metadata, specs=plan.env_specs, **writer_kwargs) as w:
        n = dataset.total_episodes
        with progress_bar(f"import {dataset.id}", n, progress) as bar:
            ids = dataset.episode_indices
            metas = dataset.storage.get_episode_metadata(ids)
            for done, (ep, em) in enumerate(zip(dataset.iterate_episodes(ids), metas, strict=True)):
                td = plan.transitions(ep)
                episode_meta = em.get(_EPISODE_META_ATTR)
                w.extend(
                    td,
                    episode_metadata=[None] * (td.shape[0] - 1)
                    + [None if episode_meta is None else json.loads(episode_meta)],
                )
                w.end_episode()
                result.episodes += 1
                result.steps += td.shape[0]
                bar.update(done + 1)
    result.notes = list(plan.notes)
    return result


class _TrlrecPlan:
    """How to rebuild a store from a dataset that :func:`to_minari` wrote."""

    def __init__(self, meta: dict[str, Any]):
        version = meta.get("version") if isinstance(meta, dict) else None
        if version != LAYOUT_VERSION:
            raise UnsupportedDataError(
                f"the dataset's 'trlrec' metadata has version {version!r}; this trlrec reads "
                f"version {LAYOUT_VERSION}. Upgrade trlrec"
            )
        try:
            self._read(meta)
        except (KeyError, TypeError) as err:
            raise UnsupportedDataError(
                f"the dataset's 'trlrec' metadata is damaged ({type(err).__name__}: {err}); "
                "export the store again with this trlrec"
            ) from err

    def _read(self, meta: dict[str, Any]) -> None:
        key_specs = specs_from_json(meta["key_specs"])
        self.obs = [_entry(d) for d in meta["observation"]]
        self.act = [_entry(d) for d in meta["action"]]
        self.obs_codecs = {
            e.key: _codec(key_specs["observation"][e.key], key_name(e.key)) for e in self.obs
        }
        self.act_codecs = {
            e.key: _codec(key_specs["action"][e.key], key_name(e.key)) for e in self.act
        }
        self.reward = None if meta["reward"] is None else _entry(meta["reward"])
        self.terminated = None if meta["terminated"] is None else _entry(meta["terminated"])
        self.truncated = None if meta["truncated"] is None else _entry(meta["truncated"])
        self.infos = [_entry(d) for d in meta["infos"]]
        self.env_specs = None
        self.notes: list[str] = []
        if meta["env_specs"] is not None:
            try:
                self.env_specs = specs_from_json(meta["env_specs"])
            except ConfigError as err:  # recorded on a device this machine lacks
                self.env_specs = specs_from_json(meta["env_specs"], device="cpu")
                self.notes.append(f"the specs are stored on the CPU: {err}")
        self.metadata = meta.get("metadata") or {}

    def transitions(self, ep: EpisodeData) -> Any:
        T = len(ep.rewards)
        cols: dict[Entry, torch.Tensor] = {}
        single_obs = len(self.obs) == 1 and self.obs[0].key == ("observation",)
        for e in self.obs:
            raw = ep.observations if single_obs else _pick(ep.observations, e.key)
            cols[e] = self.obs_codecs[e.key].back(raw)
        single_act = len(self.act) == 1 and self.act[0].key == ("action",)
        for e in self.act:
            raw = ep.actions if single_act else _pick(ep.actions, e.key)
            cols[e] = self.act_codecs[e.key].back(raw)
        if self.reward is not None:
            cols[self.reward] = _from(ep.rewards, self.reward)
        for flag, flags in ((self.terminated, ep.terminations), (self.truncated, ep.truncations)):
            if flag is not None:  # a state flag: False at the reset, then each transition's
                cols[flag] = _from(
                    np.concatenate([np.zeros(1, bool), np.asarray(flags, bool)]), flag
                )
        for e in self.infos:
            cols[e] = _from(_pick(ep.infos, e.key), e)
        return _transitions(cols, T)


def _entry(d: dict[str, Any]) -> Entry:
    dtype = dtype_from_name(d["dtype"])
    if dtype is None:
        raise UnsupportedDataError(f"unknown dtype {d['dtype']!r} in the dataset's trlrec layout")
    return Entry(tuple(d["key"]), d["role"], tuple(d["shape"]), dtype)


def _from(values: Any, e: Entry) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(values))
    return x.to(e.dtype).reshape(-1, *e.shape)


def _transitions(cols: dict[Entry, torch.Tensor], T: int) -> Any:
    """A ``[T]`` rollout batch from per-column values (``T + 1`` rows for state keys)."""
    from tensordict import TensorDict

    root = TensorDict({}, batch_size=[T])
    nxt = TensorDict({}, batch_size=[T])
    for e, v in cols.items():
        if e.role == "state":
            if v.shape[0] != T + 1:
                raise SchemaError(
                    f"key {key_name(e.key)!r} has {v.shape[0]} rows, expected {T + 1}"
                )
            root.set(e.key, v[:-1])
            nxt.set(e.key, v[1:])
        else:
            if v.shape[0] != T:
                raise SchemaError(f"key {key_name(e.key)!r} has {v.shape[0]} rows, expected {T}")
            (root if e.role == "root" else nxt).set(e.key, v)
    root.set("next", nxt)
    return root


class _ForeignPlan:
    """How to make a store of a Minari dataset that trlrec did not write."""

    def __init__(self, dataset: MinariDataset):
        from gymnasium import spaces
        from torchrl.envs.libs.gym import _gym_to_torchrl_spec_transform

        self.notes: list[str] = []
        obs_spec = _gym_to_torchrl_spec_transform(
            dataset.observation_space,
            device="cpu",
            categorical_action_encoding=True,
            remap_state_to_observation=False,
        )
        act_spec = _gym_to_torchrl_spec_transform(
            dataset.action_space, device="cpu", categorical_action_encoding=True
        )
        self.dict_obs = isinstance(dataset.observation_space, spaces.Dict)
        self.dict_act = isinstance(dataset.action_space, spaces.Dict)
        obs = obs_spec if self.dict_obs else Composite(observation=obs_spec)
        act = act_spec if self.dict_act else Composite(action=act_spec)
        ids = dataset.episode_indices
        first = next(iter(dataset.iterate_episodes([ids[0]])), None) if len(ids) else None
        reward_dtype = (
            torch.float64 if first is None else torch.from_numpy(np.asarray(first.rewards)).dtype
        )
        flag = Categorical(2, shape=(1,), dtype=torch.bool)
        self.obs_spec, self.act_spec = obs, act
        self.reward_dtype = reward_dtype
        self.env_specs = Composite(
            output_spec=Composite(
                full_observation_spec=obs,
                full_reward_spec=Composite(reward=Unbounded(shape=(1,), dtype=reward_dtype)),
                full_done_spec=Composite(
                    done=flag, terminated=flag.clone(), truncated=flag.clone()
                ),
            ),
            input_spec=Composite(full_action_spec=act, full_state_spec=Composite()),
        )
        self.metadata = {"minari_dataset_id": dataset.id}
        self.skipped: set[str] = set()

    def _leaves(self, spec: Composite, values: Any, dict_space: bool, name: str) -> dict:
        if not dict_space:
            return {(name,): (spec[name], values)}
        out = {}
        for key in spec.keys(True, True):
            key = (key,) if isinstance(key, str) else key
            out[key] = (spec[key], _pick(values, key))
        return out

    def transitions(self, ep: EpisodeData) -> Any:
        T = len(ep.rewards)
        cols: dict[Entry, torch.Tensor] = {}
        for role, spec, values, dict_space, name in (
            ("state", self.obs_spec, ep.observations, self.dict_obs, "observation"),
            ("root", self.act_spec, ep.actions, self.dict_act, "action"),
        ):
            for key, (leaf, v) in self._leaves(spec, values, dict_space, name).items():
                x = torch.from_numpy(np.ascontiguousarray(v)).to(leaf.dtype)
                x = x.reshape(x.shape[0], *leaf.shape)
                cols[Entry(key, role, tuple(leaf.shape), leaf.dtype)] = x
        reward = torch.from_numpy(np.ascontiguousarray(ep.rewards)).to(self.reward_dtype)
        cols[Entry(("reward",), "next", (1,), self.reward_dtype)] = reward.reshape(T, 1)
        term = torch.from_numpy(np.asarray(ep.terminations, bool))
        trunc = torch.from_numpy(np.asarray(ep.truncations, bool))
        zero = torch.zeros(1, dtype=torch.bool)
        for name, flags in (("terminated", term), ("truncated", trunc), ("done", term | trunc)):
            cols[Entry((name,), "state", (1,), torch.bool)] = torch.cat([zero, flags]).reshape(
                T + 1, 1
            )
        for key, v in _flat(ep.infos or {}):
            arr = np.asarray(v)
            if arr.dtype.kind not in "biuf" or arr.ndim == 0 or arr.shape[0] not in (T, T + 1):
                if key not in self.skipped:
                    self.skipped.add(key)
                    self.notes.append(
                        f"info {key!r} (dtype {arr.dtype}, shape {arr.shape}) is not stored"
                    )
                continue
            x = torch.from_numpy(np.ascontiguousarray(arr))
            role = "state" if arr.shape[0] == T + 1 else "next"
            cols[Entry(("info", *key.split("/")), role, tuple(x.shape[1:]), x.dtype)] = x
        return _transitions(cols, T)


def _flat(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flat(v, name + "/"))
        else:
            out.append((name, v))
    return out
