"""TorchRL specs as JSON: what a recording's tensors mean (bounds, ``n``, encodings).

:func:`specs_to_json` turns any TorchRL spec (an env's ``env.specs``, one
``Composite`` or a leaf) into plain JSON values, :func:`specs_from_json` rebuilds
it, equal (``==``) to the original, with the same class, shape, dtype, device,
bounds, category counts, masks and nesting. Nothing is pickled or evaluated:
classes are looked up by name in a fixed table, tensors are lists of numbers.

Every spec class of TorchRL 0.14 is covered: ``Composite``, ``StackedComposite``,
``Stacked``, ``Bounded`` (``BoundedContinuous`` / ``BoundedDiscrete``),
``Unbounded`` (``UnboundedContinuous`` / ``UnboundedDiscrete``), ``OneHot``,
``MultiOneHot``, ``Categorical``, ``MultiCategorical``, ``Binary``, ``Choice`` and
``NonTensor`` (whose ``example_data`` must be a JSON value). Subclasses defined
elsewhere are refused, since their extra state would be lost.

The JSON document is ``{"format": "trlrec-specs", "version": 1, "spec": node}``;
``docs/FORMAT.md`` describes the nodes.

Examples:
    >>> from torchrl.data import Bounded, Composite, OneHot
    >>> from trlrec.specs import specs_from_json, specs_to_json
    >>> spec = Composite(action=OneHot(2), observation=Bounded(-1.0, 1.0, shape=(4,)))
    >>> doc = specs_to_json(spec)
    >>> doc["spec"]["entries"]["action"]["class"], doc["spec"]["entries"]["action"]["n"]
    ('OneHot', 2)
    >>> specs_from_json(doc) == spec
    True
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tensordict import NonTensorData
from torchrl.data.tensor_specs import (
    Binary,
    BoundedContinuous,
    BoundedDiscrete,
    Categorical,
    Choice,
    Composite,
    MultiCategorical,
    MultiOneHot,
    NonTensor,
    OneHot,
    Stacked,
    StackedComposite,
    TensorSpec,
    UnboundedContinuous,
    UnboundedDiscrete,
)

from trlrec.errors import (
    ConfigError,
    CorruptStoreError,
    FormatVersionError,
    SchemaError,
    StoreWriteError,
    UnsupportedDataError,
)
from trlrec.storage.dtypes import dtype_from_name, dtype_name
from trlrec.storage.jsonio import dumps, read_json

if TYPE_CHECKING:
    from trlrec.storage.reader import TrajectoryReader
    from trlrec.storage.schema import Entry, Key

__all__ = [
    "SPECS_FORMAT",
    "SPECS_VERSION",
    "SPECS_FILE",
    "specs_to_json",
    "specs_from_json",
    "write_specs",
    "read_specs",
    "unbatched",
    "StoreSpecs",
    "store_specs",
]

SPECS_FORMAT = "trlrec-specs"
SPECS_VERSION = 1
SPECS_FILE = "specs.json"  # at the store's root, next to dataset.json

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


# ------------------------------------------------------------------ tensors
def _encode_number(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _encode_tensor(t: torch.Tensor, where: str) -> dict[str, Any]:
    """A tensor as JSON, bit-exact for finite values: ``fill`` when all elements are equal."""
    t = t.detach().cpu()
    out: dict[str, Any] = {"dtype": dtype_name(t.dtype, where), "shape": list(t.shape)}
    flat = torch.view_as_real(t).reshape(-1, 2) if t.is_complex() else t.reshape(-1)
    values = [
        [_encode_number(v) for v in row] if isinstance(row, list) else _encode_number(row)
        for row in flat.tolist()
    ]
    first = repr(values[0]) if values else None  # repr: -0.0 and 0.0 differ
    if values and all(repr(v) == first for v in values):
        out["fill"] = values[0]
    else:
        out["values"] = values
    return out


def _decode_number(x: Any, where: str) -> Any:
    if isinstance(x, str):
        if x not in _NON_FINITE:
            raise CorruptStoreError(f"{where}: {x!r} is not a number")
        return _NON_FINITE[x]
    if isinstance(x, list):
        return [_decode_number(v, where) for v in x]
    if not isinstance(x, int | float):
        raise CorruptStoreError(f"{where}: {x!r} is not a number")
    return x


def _decode_tensor(node: Any, where: str, device: torch.device | None) -> torch.Tensor:
    if not isinstance(node, dict):
        raise CorruptStoreError(f"{where}: expected a tensor object, got {node!r}")
    dtype = _dtype(node.get("dtype"), where)
    shape = _shape(node.get("shape"), where)
    n = math.prod(shape)
    if "fill" in node:
        values = [_decode_number(node["fill"], where)] * n
    else:
        values = [_decode_number(v, where) for v in _list(node.get("values"), where)]
        if len(values) != n:
            raise CorruptStoreError(f"{where}: {len(values)} values for shape {shape}")
    if dtype.is_complex:
        real = torch.tensor(values, dtype=torch.float64).reshape(n, 2)
        t = torch.view_as_complex(real).to(dtype)
    else:
        t = torch.tensor(values, dtype=dtype)
    return t.reshape(shape).to(device) if device is not None else t.reshape(shape)


# ------------------------------------------------------------ field checks
def _list(x: Any, where: str) -> list:
    if not isinstance(x, list):
        raise CorruptStoreError(f"{where}: expected a list, got {x!r}")
    return x


def _shape(x: Any, where: str) -> list[int]:
    if not isinstance(x, list) or not all(isinstance(s, int) and s >= -1 for s in x):
        raise CorruptStoreError(f"{where}: expected a shape (list of ints >= -1), got {x!r}")
    return x


def _dtype(x: Any, where: str) -> torch.dtype:
    dtype = dtype_from_name(x)
    if dtype is None:
        raise CorruptStoreError(f"{where}: unknown dtype {x!r}")
    return dtype


def _int(x: Any, where: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise CorruptStoreError(f"{where}: expected an int, got {x!r}")
    return x


def _device_name(device: Any) -> str | None:
    return None if device is None else str(device)


# ------------------------------------------------------------------ encode
def _common(spec: TensorSpec, where: str) -> dict[str, Any]:
    return {
        "class": type(spec).__name__,
        "shape": list(spec.shape),
        "device": _device_name(spec.device),
        "dtype": None if spec.dtype is None else dtype_name(spec.dtype, where),
    }


def _mask(spec: TensorSpec, where: str) -> dict[str, Any] | None:
    mask = getattr(spec, "mask", None)
    return None if mask is None else _encode_tensor(mask, where + ".mask")


def _encode_entry(spec: TensorSpec | None, where: str) -> dict[str, Any] | None:
    """A nested spec, or ``None`` for an entry a ``Composite`` holds as ``None``."""
    return None if spec is None else _encode(spec, where)


def _encode(spec: TensorSpec, where: str) -> dict[str, Any]:
    kind = type(spec)
    if kind is Composite:
        return {
            "class": "Composite",
            "shape": list(spec.shape),
            "device": _device_name(spec.device),
            "names": None if spec._td_dim_names is None else list(spec._td_dim_names),
            "step_mdp_static": bool(spec.step_mdp_static),
            "data_cls": _data_cls_name(spec.data_cls, where),
            "entries": {k: _encode_entry(v, f"{where}.{k}") for k, v in spec._specs.items()},
        }
    if kind in (Stacked, StackedComposite):
        return {
            "class": kind.__name__,
            "dim": spec.dim,
            "specs": [_encode_entry(s, f"{where}[{i}]") for i, s in enumerate(spec._specs)],
        }
    out = _common(spec, where)
    if kind in (BoundedContinuous, BoundedDiscrete):
        out["domain"] = spec.domain
        out["low"] = _encode_tensor(spec.space.low, where + ".low")
        out["high"] = _encode_tensor(spec.space.high, where + ".high")
    elif kind in (UnboundedContinuous, UnboundedDiscrete):
        out["domain"] = spec.domain
    elif kind is OneHot:
        out.update(n=spec.space.n, use_register=spec.use_register, mask=_mask(spec, where))
    elif kind is MultiOneHot:
        out.update(
            nvec=[int(n) for n in spec.nvec],
            use_register=spec.use_register,
            mask=_mask(spec, where),
        )
    elif kind in (Categorical, Binary):
        out.update(n=spec.space.n, mask=_mask(spec, where))
    elif kind is MultiCategorical:
        out.update(
            nvec=_encode_tensor(spec.nvec, where + ".nvec"),
            remove_singleton=spec.remove_singleton,
            mask=_mask(spec, where),
        )
    elif kind is NonTensor:
        out.update(
            example_data=_json_value(spec.example_data, where),
            batched=spec.batched,
            feature_dims=spec.feature_dims,
        )
    elif kind is Choice:
        out["choices"] = [
            _encode_choice(c, f"{where}.choices[{i}]") for i, c in enumerate(spec._choices)
        ]
    else:
        raise UnsupportedDataError(
            f"spec {where!r} is a {kind.__module__}.{kind.__name__}, which trlrec cannot store "
            "as JSON (only TorchRL's own spec classes); give the writer specs made of those"
        )
    return out


def _encode_choice(choice: Any, where: str) -> dict[str, Any]:
    if isinstance(choice, TensorSpec):
        return _encode(choice, where)
    if type(choice) is NonTensorData:
        return {
            "class": "NonTensorData",
            "data": _json_value(choice.data, where),
            "batch_size": list(choice.batch_size),
            "device": _device_name(choice.device),
        }
    raise UnsupportedDataError(
        f"spec {where!r}: a Choice of {type(choice).__name__} cannot be stored as JSON; "
        "use TensorSpecs or NonTensorData of JSON values"
    )


def _data_cls_name(data_cls: Any, where: str) -> str | None:
    if data_cls is None:
        return None
    from tensordict import TensorDict

    if data_cls is TensorDict:
        return "TensorDict"
    raise UnsupportedDataError(
        f"spec {where!r} has data_cls={data_cls!r}; only None and TensorDict can be stored"
    )


def _json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsupportedDataError(f"spec {where!r}: example_data {value!r} is not finite")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, where) for k, v in value.items()}
    raise UnsupportedDataError(
        f"spec {where!r}: example_data of type {type(value).__name__} is not a JSON value "
        "(None, bool, int, float, str, list, dict); it cannot be stored"
    )


def specs_to_json(spec: TensorSpec) -> dict[str, Any]:
    """The JSON document of ``spec`` (any TorchRL spec, usually ``env.specs``).

    Raises:
        UnsupportedDataError: a spec class that is not TorchRL's, a ``NonTensor``
            example or ``Choice`` that is not a JSON value, or an unsupported dtype;
            the message names the spec's key.
    """
    if not isinstance(spec, TensorSpec):
        raise UnsupportedDataError(f"specs must be a TorchRL TensorSpec, got {type(spec).__name__}")
    return {"format": SPECS_FORMAT, "version": SPECS_VERSION, "spec": _encode(spec, "specs")}


# ------------------------------------------------------------------ decode
def _decode(node: Any, where: str, device: torch.device | None) -> TensorSpec | None:
    if node is None:
        return None
    if not isinstance(node, dict) or not isinstance(node.get("class"), str):
        raise CorruptStoreError(f"{where}: expected a spec object with a 'class', got {node!r}")
    build = _BUILDERS.get(node["class"])
    if build is None:
        raise CorruptStoreError(
            f"{where}: unknown spec class {node['class']!r}; known: {sorted(_BUILDERS)}"
        )
    try:
        return build(node, where, device)
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as err:
        if isinstance(err, CorruptStoreError | ConfigError):  # a nested spec's, already said
            raise
        dev = node.get("device")
        if device is None and isinstance(dev, str) and dev != "cpu":
            raise ConfigError(
                f"{where}: the {node['class']} spec was recorded on {dev!r}, which is not "
                f"usable here ({err}); read the specs with device='cpu'"
            ) from err
        raise CorruptStoreError(f"{where}: cannot rebuild the {node['class']} spec: {err}") from err


def _dev(node: dict, device: torch.device | None) -> torch.device | str | None:
    if device is not None:
        return device
    return node.get("device")


def _leaf_kwargs(node: dict, where: str, device: torch.device | None) -> dict[str, Any]:
    return {
        "shape": torch.Size(_shape(node["shape"], where)),
        "device": _dev(node, device),
        "dtype": _dtype(node["dtype"], where),
    }


def _decoded_mask(node: dict, where: str, device: torch.device | None) -> torch.Tensor | None:
    mask = node.get("mask")
    return None if mask is None else _decode_tensor(mask, where + ".mask", device)


def _build_composite(node: dict, where: str, device: torch.device | None) -> Composite:
    entries = node["entries"]
    if not isinstance(entries, dict):
        raise CorruptStoreError(f"{where}: 'entries' is not an object")
    dev = node.get("device") if device is None or node.get("device") is None else device
    out = Composite(
        shape=torch.Size(_shape(node["shape"], where)),
        device=dev,
        step_mdp_static=bool(node.get("step_mdp_static", False)),
        data_cls=_data_cls(node.get("data_cls"), where),
    )
    for key, sub in entries.items():
        out[key] = _decode(sub, f"{where}.{key}", device)
    if node.get("names") is not None:
        out.names = node["names"]
    return out


def _data_cls(name: Any, where: str) -> type | None:
    if name is None:
        return None
    if name == "TensorDict":
        from tensordict import TensorDict

        return TensorDict
    raise CorruptStoreError(f"{where}: unknown data_cls {name!r}")


def _build_stacked(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    specs = [_decode(s, f"{where}[{i}]", device) for i, s in enumerate(_list(node["specs"], where))]
    cls = Stacked if node["class"] == "Stacked" else StackedComposite
    return cls(*specs, dim=_int(node["dim"], where))


def _build_bounded(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    kw = _leaf_kwargs(node, where, device)
    low = _decode_tensor(node["low"], where + ".low", None)
    high = _decode_tensor(node["high"], where + ".high", None)
    cls = BoundedContinuous if node["class"] == "BoundedContinuous" else BoundedDiscrete
    spec = cls(low=low, high=high, domain=node["domain"], **kw)
    return spec


def _build_unbounded(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    cls = UnboundedContinuous if node["class"] == "UnboundedContinuous" else UnboundedDiscrete
    return cls(domain=node["domain"], **_leaf_kwargs(node, where, device))


def _build_one_hot(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    kw = _leaf_kwargs(node, where, device)
    mask = _decoded_mask(node, where, kw["device"])
    if node["class"] == "OneHot":
        return OneHot(_int(node["n"], where), use_register=node["use_register"], mask=mask, **kw)
    nvec = [_int(n, where) for n in _list(node["nvec"], where)]
    return MultiOneHot(nvec, use_register=node["use_register"], mask=mask, **kw)


def _build_categorical(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    kw = _leaf_kwargs(node, where, device)
    mask = _decoded_mask(node, where, kw["device"])
    if node["class"] == "Binary":
        spec = Binary(shape=kw["shape"], device=kw["device"], dtype=kw["dtype"])
        if mask is not None:
            spec.update_mask(mask)
        return spec
    return Categorical(_int(node["n"], where), mask=mask, **kw)


def _build_multi_categorical(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    kw = _leaf_kwargs(node, where, device)
    nvec = _decode_tensor(node["nvec"], where + ".nvec", None)
    spec = MultiCategorical(
        nvec,
        remove_singleton=bool(node["remove_singleton"]),
        mask=_decoded_mask(node, where, kw["device"]),
        **kw,
    )
    return spec


def _build_non_tensor(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    dtype = None if node.get("dtype") is None else _dtype(node["dtype"], where)
    return NonTensor(
        shape=torch.Size(_shape(node["shape"], where)),
        device=_dev(node, device),
        dtype=dtype,
        example_data=node.get("example_data"),
        # the constructor takes one of the two; batched=True implies feature_dims=0
        **(
            {"batched": True} if node.get("batched") else {"feature_dims": node.get("feature_dims")}
        ),
    )


def _build_choice(node: dict, where: str, device: torch.device | None) -> TensorSpec:
    choices: list[Any] = []
    for i, c in enumerate(_list(node["choices"], where)):
        at = f"{where}.choices[{i}]"
        if isinstance(c, dict) and c.get("class") == "NonTensorData":
            choices.append(
                NonTensorData(
                    c.get("data"),
                    batch_size=torch.Size(_shape(c.get("batch_size", []), at)),
                    device=_dev(c, device),
                )
            )
        else:
            choices.append(_decode(c, at, device))
    return Choice(choices)


_BUILDERS: dict[str, Callable[[dict, str, torch.device | None], TensorSpec]] = {
    "Composite": _build_composite,
    "Stacked": _build_stacked,
    "StackedComposite": _build_stacked,
    "BoundedContinuous": _build_bounded,
    "BoundedDiscrete": _build_bounded,
    "UnboundedContinuous": _build_unbounded,
    "UnboundedDiscrete": _build_unbounded,
    "OneHot": _build_one_hot,
    "MultiOneHot": _build_one_hot,
    "Categorical": _build_categorical,
    "Binary": _build_categorical,
    "MultiCategorical": _build_multi_categorical,
    "NonTensor": _build_non_tensor,
    "Choice": _build_choice,
}


def specs_from_json(doc: Any, *, device: str | torch.device | None = None) -> TensorSpec:
    """Rebuild the spec that :func:`specs_to_json` wrote.

    Args:
        doc: the JSON document (a dict, as read from ``specs.json``).
        device: put every spec on this device instead of the recorded one (a store
            recorded on a GPU read on a CPU-only machine: ``device="cpu"``).

    Raises:
        FormatVersionError: the document has a version this trlrec cannot read.
        CorruptStoreError: the document is not a specs document or is damaged.
    """
    if not isinstance(doc, dict) or doc.get("format") != SPECS_FORMAT:
        raise CorruptStoreError(
            f"not a trlrec specs document (expected format {SPECS_FORMAT!r}), got "
            f"{str(doc)[:200]!r}"
        )
    if doc.get("version") != SPECS_VERSION:
        raise FormatVersionError(
            f"the specs document has version {doc.get('version')!r}; this trlrec reads "
            f"version {SPECS_VERSION}. Upgrade trlrec to read it"
        )
    dev = None if device is None else torch.device(device)
    return _decode(doc.get("spec"), "specs", dev)


# ------------------------------------------------------------------ in a store
def write_specs(store: str | os.PathLike[str], spec: TensorSpec, *, durable: bool = False) -> bool:
    """Store ``spec`` as the store's ``specs.json``, unless a writer stored specs first.

    The file is written to a temporary name and linked into place, so a reader sees a
    whole file or none, and of several writers of one store the first one wins (the
    others' specs are compared and a difference is logged). Returns whether this call
    wrote the file.

    Raises:
        UnsupportedDataError: ``spec`` cannot be stored as JSON (see :func:`specs_to_json`).
        StoreWriteError: the file cannot be written.
    """
    path = Path(store) / SPECS_FILE
    text = dumps(specs_to_json(spec), "specs")
    if path.exists():
        _compare_existing(path, text)
        return False
    tmp = path.with_name(f".{SPECS_FILE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces another writer's specs
        except FileExistsError:
            _compare_existing(path, text)
            return False
        finally:
            tmp.unlink()
    except OSError as err:
        raise StoreWriteError(
            err.errno, f"cannot write {str(path)!r}: {err.strerror}; check space and permissions"
        ) from err
    return True


def _compare_existing(path: Path, text: str) -> None:
    if path.read_text(encoding="utf-8") != text:
        logging.getLogger(__name__).warning(
            "%s already holds the specs of another env; this writer's specs differ and are "
            "not stored (a store keeps the first writer's specs)",
            path,
        )


def read_specs(
    store: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> TensorSpec | None:
    """The specs stored in ``store`` (``None`` for a store without ``specs.json``).

    Raises:
        CorruptStoreError: ``specs.json`` is damaged.
        FormatVersionError: it has a version this trlrec cannot read.
    """
    path = Path(store) / SPECS_FILE
    if not path.is_file():
        return None
    try:
        return specs_from_json(read_json(path), device=device)
    except CorruptStoreError as err:
        raise CorruptStoreError(f"{str(path)!r}: {err}") from None
    except FormatVersionError as err:
        raise FormatVersionError(f"{str(path)!r}: {err}") from None


def unbatched(spec: TensorSpec) -> TensorSpec:
    """``spec`` of one sub-environment: the batch dimensions of a batched env removed."""
    while spec.shape and isinstance(spec, Composite):
        spec = spec[0]
    return spec


_CATEGORIES = {
    "observation": ("output_spec", "full_observation_spec"),
    "done": ("output_spec", "full_done_spec"),
    "reward": ("output_spec", "full_reward_spec"),
    "action": ("input_spec", "full_action_spec"),
    "state": ("input_spec", "full_state_spec"),
}
_DONE_NAMES = ("done", "terminated", "truncated")


@dataclass
class StoreSpecs:
    """What each stored key of a store is, for one sub-environment (unbatched).

    ``observation``, ``action``, ``reward``, ``done`` and ``state`` are the env's
    ``full_*_spec`` restricted to the keys the store holds (``action`` keeps every
    recorded action key: a policy needs them even when they were not stored).
    ``recorded`` says whether they come from the recorded ``specs.json`` or, for a
    store without one, from the schema (``Unbounded`` specs of the stored shapes and
    dtypes, ``Categorical(2)`` for booleans; keys are put in categories by name:
    state keys are observations or done flags, root-only ``action`` keys actions,
    next-only ``reward`` keys rewards, other next-only keys observations).
    ``category`` maps each stored key to its category, ``entries`` to its column.

    Examples:
        >>> import tempfile
        >>> from torchrl.envs import GymEnv
        >>> from trlrec import TensorDictRecorder, TrajectoryReader
        >>> from trlrec.specs import store_specs
        >>> path = tempfile.mkdtemp() + "/run"
        >>> with TensorDictRecorder(path) as rec:
        ...     _ = GymEnv("CartPole-v1").append_transform(rec).rollout(5)
        >>> s = store_specs(TrajectoryReader(path))
        >>> s.recorded, type(s.action["action"]).__name__, s.category[("reward",)]
        (True, 'OneHot', 'reward')
    """

    observation: Composite
    action: Composite
    reward: Composite
    done: Composite
    state: Composite
    category: dict[Key, str]
    entries: dict[Key, Entry]
    recorded: bool


def _schema_spec(e: Entry) -> TensorSpec:
    if e.dtype is torch.bool:
        return Categorical(2, shape=e.shape, dtype=torch.bool)
    return (
        UnboundedContinuous(shape=e.shape, dtype=e.dtype)
        if (e.dtype.is_floating_point or e.dtype.is_complex)
        else UnboundedDiscrete(shape=e.shape, dtype=e.dtype)
    )


def _schema_category(e: Entry) -> str | None:
    if e.role == "state":
        return "done" if e.key[-1] in _DONE_NAMES and e.dtype is torch.bool else "observation"
    if e.role == "root":
        return "action" if e.key[-1] == "action" else None
    return "reward" if e.key[-1] == "reward" else "observation"


def _recorded_leaf(spec: Composite, key: Key) -> TensorSpec | None:
    try:
        leaf = spec[key]
    except KeyError:
        return None
    return None if leaf is None or isinstance(leaf, Composite) else leaf


def _recorded_spec(full: Composite, e: Entry) -> tuple[str, TensorSpec] | None:
    """The category and recorded spec of ``e``, if the recording has one of its shape and dtype."""
    for category, path in _CATEGORIES.items():
        leaf = _recorded_leaf(full, (*path, *e.key))
        if leaf is not None and tuple(leaf.shape) == e.shape and leaf.dtype == e.dtype:
            return category, leaf
    return None


def store_specs(reader: TrajectoryReader, *, device: str | torch.device = "cpu") -> StoreSpecs:
    """The specs of the keys of ``reader``'s store, recorded or derived from its schema.

    A stored key takes its recorded spec when the recording has one of the same
    shape and dtype; other keys (a store without ``specs.json``, keys a transform
    added after the recorder, ``step_fn`` values) get a spec from the schema; root-only
    keys that are neither recorded inputs nor named ``action`` have no category.

    Raises:
        SchemaError: the store has no shard with a schema, or shards with different ones.
    """
    shards = [s for s in reader.shards if s.schema is not None]
    if not shards:
        raise SchemaError(f"the store {str(reader.path)!r} holds no recorded step yet")
    entries = shards[0].schema.entries
    for s in shards[1:]:
        if s.schema.entries != entries:
            raise SchemaError(
                f"shard {s.name!r} has another schema than {shards[0].name!r}; the store's "
                "keys have no single meaning"
            )
    recorded = read_specs(reader.path, device=device)
    full = None if recorded is None else unbatched(recorded)
    groups = {c: Composite(shape=(), device=None) for c in _CATEGORIES}
    category: dict[Key, str] = {}
    for e in entries:
        found = None if full is None else _recorded_spec(full, e)
        if found is None:
            derived = _schema_category(e)
            if derived is None:
                continue
            found = derived, _schema_spec(e)
        cat, spec = found
        groups[cat][e.key] = spec
        category[e.key] = cat
    if full is not None:
        actions = full.get(_CATEGORIES["action"])
        for key in actions.keys(True, True):
            key = (key,) if isinstance(key, str) else key
            if key not in category:
                groups["action"][key] = actions.get(key)
    return StoreSpecs(
        **groups,
        category=category,
        entries={e.key: e for e in entries},
        recorded=recorded is not None,
    )
