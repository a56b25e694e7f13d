"""Reference splitting of rollouts into per-stream episodes, to compare stores against."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase


def reference_episodes(rollout: TensorDictBase) -> list[tuple[int, TensorDictBase]]:
    """Split a ``[T]`` or ``[B, T]`` rollout into ``(stream, episode)`` by its done flags."""
    td = rollout.unsqueeze(0) if rollout.batch_dims == 1 else rollout
    out = []
    for b in range(td.shape[0]):
        s = td[b]
        done = s["next", "done"].reshape(s.shape[0], -1).any(-1).tolist()
        start = 0
        for t, d in enumerate(done):
            if d:
                out.append((b, s[start : t + 1]))
                start = t + 1
        if start < s.shape[0]:
            out.append((b, s[start:]))
    return out


def assert_td_identical(got: TensorDictBase, want: TensorDictBase) -> None:
    """Same keys, shapes, dtypes and bits."""
    gk = set(got.keys(True, True))
    wk = set(want.keys(True, True))
    assert gk == wk, f"keys differ: {gk ^ wk}"
    for k in wk:
        a, b = got[k], want[k]
        assert a.dtype == b.dtype, (k, a.dtype, b.dtype)
        assert a.shape == b.shape, (k, a.shape, b.shape)
        assert torch.equal(_bits(a), _bits(b)), k


def _bits(t: torch.Tensor) -> torch.Tensor:
    if t.dtype is torch.bool:
        return t
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.contiguous().view(torch.uint8)


def assert_store_matches(reader, rollout: TensorDictBase) -> None:
    """Every episode of ``rollout`` is in ``reader``, bit for bit, and nothing else."""
    ref = reference_episodes(rollout)
    assert reader.num_episodes == len(ref)
    assert reader.num_steps == rollout.numel()
    by_stream: dict[int, list[TensorDictBase]] = {}
    for b, ep in ref:
        by_stream.setdefault(b, []).append(ep)
    got: dict[int, list[TensorDictBase]] = {}
    for i, ep in enumerate(reader.episodes):
        got.setdefault(reader.episode_info(i)["stream"], []).append(ep)
    assert sorted(got) == sorted(by_stream)
    for b, eps in by_stream.items():
        assert len(got[b]) == len(eps)
        for g, w in zip(got[b], eps, strict=True):
            assert_td_identical(g, w)


def record_rows(path, rollout: TensorDictBase, **writer_kwargs):
    """Append ``rollout`` ([T] or [B, T]) step by step into a new writer; return a reader."""
    from trlrec import TrajectoryReader, TrajectoryWriter

    with TrajectoryWriter(path, **writer_kwargs) as w:
        if rollout.batch_dims == 1:
            for t in range(rollout.shape[0]):
                w.append(rollout[t])
        else:
            for t in range(rollout.shape[1]):
                w.append(rollout[:, t])
    return TrajectoryReader(path)


def io_kinds() -> list[str]:
    """The I/O backends this machine has: inline and thread always, native where built."""
    from trlrec.native import extension

    return ["inline", "thread"] + (["native"] if extension("pwrite") is not None else [])


IO_KINDS = io_kinds()
