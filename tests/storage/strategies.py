"""Hypothesis strategies: random schemas and rollouts with the continuity of a real env.

Within an episode the root state of step t is the ``"next"`` state of step t - 1;
after a done, a fresh state starts the next episode (as TorchRL's auto-reset gives).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from tensordict import TensorDict

DTYPES = [
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
]  # fmt: skip

names = st.sampled_from(["obs", "pixels", "state", "a", "info", "x_1"])
keys = st.lists(names, min_size=1, max_size=2).map(tuple)
shapes = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)
image_shapes = st.sampled_from([(4, 5, 3), (3, 4, 4), (1, 6, 6)])


@st.composite
def columns(draw, min_size=1, max_size=3):
    """A dict key -> (shape, dtype) with no key a prefix of another."""
    out: dict[tuple[str, ...], tuple] = {}
    for key in draw(st.lists(keys, min_size=min_size, max_size=max_size, unique=True)):
        if any(k[: len(key)] == key or key[: len(k)] == k for k in out):
            continue
        shape = draw(st.one_of(shapes, image_shapes))
        out[key] = (shape, draw(st.sampled_from(DTYPES)))
    return out


def _random(shape, dtype, gen):
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 100
        flat = x.reshape(-1)
        if flat.numel() > 2:
            flat[0], flat[1] = float("nan"), float("-inf")
        return x.to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=gen).to(dtype)


@st.composite
def rollouts(draw):
    """A ``[B, T]`` (or ``[T]``) rollout dict with state, root-only and next-only keys."""
    state = draw(columns())
    root_only = {("act", *k): v for k, v in draw(columns(min_size=0, max_size=2)).items()}
    next_only = {("rew", *k): v for k, v in draw(columns(min_size=0, max_size=2)).items()}
    batch = draw(st.sampled_from([(), (1,), (3,)]))
    T = draw(st.integers(1, 25))
    seed = draw(st.integers(0, 2**31 - 1))
    p_done = draw(st.sampled_from([0.0, 0.2, 0.5]))
    gen = torch.Generator().manual_seed(seed)
    B = max(1, torch.Size(batch).numel())
    done = torch.rand(B, T, generator=gen) < p_done
    cols: dict = {}
    for key, (shape, dtype) in state.items():
        root = torch.empty((B, T, *shape), dtype=dtype)
        nxt = _random((B, T, *shape), dtype, gen)
        root[:, 0] = _random((B, *shape), dtype, gen)
        for t in range(1, T):
            fresh = _random((B, *shape), dtype, gen)
            cont = ~done[:, t - 1].reshape(B, *[1] * len(shape))
            root[:, t] = torch.where(cont, nxt[:, t - 1], fresh)
        cols[key] = root
        cols[("next", *key)] = nxt
    for key, (shape, dtype) in {**root_only, **next_only}.items():
        full = key if key[0] == "act" else ("next", *key)
        cols[full] = _random((B, T, *shape), dtype, gen)
    cols[("done",)] = torch.zeros(B, T, 1, dtype=torch.bool)
    cols[("next", "done")] = done.unsqueeze(-1)
    td = TensorDict({}, batch_size=[B, T])
    for key, value in cols.items():
        td.set(key, value)
    if batch == ():
        td = td[0]
    stage = draw(st.sampled_from([None, 1, 2, 5]))
    chunk = draw(st.sampled_from([None, 3, 8]))
    background = draw(st.booleans())
    return td, {"stage_steps": stage, "chunk_rows": chunk, "background": background}
