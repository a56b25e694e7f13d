"""Checking what ``TrajectoryWriter`` is given, besides each step's leaves (staging's).

A rollout row, a ``(root, next)`` pair, a ``[*batch, T]`` batch (its batch size, keys
and columns), a mask of streams, and episode metadata (one dict, or one per stream;
for a batch, one such entry per time index).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase

from trlrec.errors import SchemaError
from trlrec.storage.dataset import check_metadata
from trlrec.storage.format import MAX_EPISODE_META_BYTES
from trlrec.storage.staging import StepStaging

__all__ = [
    "batch_columns",
    "check_batch",
    "check_episode_metadata",
    "check_pair",
    "check_row",
    "stream_mask",
]


def check_row(step: Any) -> TensorDictBase:
    """A rollout row's ``"next"``, or the SchemaError saying what the row lacks."""
    if not isinstance(step, TensorDictBase):
        raise SchemaError(f"append takes a TensorDict, got {type(step).__name__}")
    next_ = step.get("next", None)
    if not isinstance(next_, TensorDictBase):
        raise SchemaError(
            "the step has no 'next' sub-tensordict; append takes a rollout row (root keys "
            "plus 'next'), as env.rollout(..., break_when_any_done=False) returns"
        )
    return next_


def check_pair(root: Any, next_: Any) -> None:
    """Refuse a transition's two parts unless both are TensorDicts."""
    if not isinstance(root, TensorDictBase) or not isinstance(next_, TensorDictBase):
        raise SchemaError(
            f"append_transition takes two TensorDicts, got {type(root).__name__} and "
            f"{type(next_).__name__}"
        )


def check_batch(batch: Any) -> int:
    """A batch's time length ``T``, or the SchemaError saying why it is not a batch."""
    if not isinstance(batch, TensorDictBase) or batch.batch_dims < 1:
        raise SchemaError(
            "extend takes a TensorDict with a time dimension last ([T] or [B, T]), got "
            f"{type(batch).__name__} of batch size {getattr(batch, 'batch_size', None)}"
        )
    if not isinstance(batch.get("next", None), TensorDictBase):
        raise SchemaError("the batch has no 'next' sub-tensordict; extend takes rollout rows")
    return batch.batch_size[-1]


def stream_mask(streams: Any, num_streams: int) -> torch.Tensor:
    """A bool mask over the streams from a mask-like (None: every stream)."""
    n = num_streams
    mask = torch.ones(n, dtype=torch.bool) if streams is None else torch.as_tensor(streams)
    mask = mask.reshape(-1).to(torch.bool)
    if mask.numel() != n:
        raise SchemaError(f"end_episode got a mask of {mask.numel()} entries, expected {n}")
    return mask


def check_episode_metadata(meta: Any, num_streams: int) -> list[dict[str, Any] | None]:
    """One checked metadata dict (or None) per stream, from a dict or a sequence of them."""
    metas = [meta] * num_streams if isinstance(meta, dict) else list(meta)
    if len(metas) != num_streams:
        raise SchemaError(
            f"episode_metadata has {len(metas)} entries, expected {num_streams} (one per stream)"
        )
    return [
        check_metadata(m, "episode metadata", MAX_EPISODE_META_BYTES) if m is not None else None
        for m in metas
    ]


def batch_columns(
    staging: StepStaging, batch: TensorDictBase, episode_metadata: Any
) -> tuple[list[torch.Tensor], dict[int, list[dict[str, Any] | None]]]:
    """A batch's checked leaves as ``[N, T, ...]`` CPU columns, and its metadata by time index.

    Raises:
        SchemaError: the batch size, a key, shape or dtype differs from the schema, or
            the metadata is not one entry per time index.
    """
    schema, checker = staging.schema, staging.checker
    T = batch.batch_size[-1]
    if tuple(batch.batch_size[:-1]) != schema.batch_shape:
        raise SchemaError(
            f"extend got batch size {tuple(batch.batch_size)}; the recording's steps have "
            f"batch size {schema.batch_shape}, so expected {(*schema.batch_shape, T)}"
        )
    next_ = batch.get("next")
    checker.check_keys(batch, next_)
    metas: dict[int, list[dict[str, Any] | None]] = {}
    if episode_metadata is not None:
        if isinstance(episode_metadata, dict | str) or len(episode_metadata) != T:
            raise SchemaError(
                f"extend's episode_metadata must hold one entry per time step ({T}), got "
                f"{type(episode_metadata).__name__}"
            )
        for t, m in enumerate(episode_metadata):
            if m is not None:
                metas[t] = check_episode_metadata(m, schema.num_streams)
    return checker.columns(batch, next_), metas
