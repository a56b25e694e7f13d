"""Checking what ``TrajectoryWriter.extend`` and ``append`` are given besides the leaves.

A ``[*batch, T]`` batch's batch size, keys and columns, and episode metadata (one
dict, or one per stream; for a batch, one such entry per time index).
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase

from trlrec.errors import SchemaError
from trlrec.storage.dataset import check_metadata
from trlrec.storage.staging import StepStaging

__all__ = ["batch_columns", "check_episode_metadata"]


def check_episode_metadata(meta: Any, num_streams: int) -> list[dict[str, Any] | None]:
    """One checked metadata dict (or None) per stream, from a dict or a sequence of them."""
    metas = [meta] * num_streams if isinstance(meta, dict) else list(meta)
    if len(metas) != num_streams:
        raise SchemaError(
            f"episode_metadata has {len(metas)} entries, expected {num_streams} (one per stream)"
        )
    return [check_metadata(m, "episode metadata") if m is not None else None for m in metas]


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
