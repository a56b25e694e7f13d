"""Synthetic rollout data, built once and reused, so the store benches need no env.

The rows look like ``GymEnv("CartPole-v1")`` rollout rows (``break_when_any_done=False``):
root ``observation`` (4 float32) or ``pixels`` (84x84x3 uint8), a one-hot ``action``
and the done flags; ``"next"`` the observation, ``reward`` and done flags. Consecutive
transitions chain (a root observation equals the previous ``"next"`` one), episodes
end with ``done`` every ``episode_len`` steps, so the store sees real episode streams.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["PIXELS", "obs_pool", "transition", "step_cycle", "batch_cycle", "batch_bytes"]

PIXELS = (84, 84, 3)


def obs_pool(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` distinct observations: ``[n, 4]`` float32 or ``[n, 84, 84, 3]`` uint8 noise."""
    g = torch.Generator().manual_seed(seed)
    if kind == "small":
        return torch.randn(n, 4, generator=g)
    if kind == "pixels":
        return torch.randint(0, 256, (n, *PIXELS), dtype=torch.uint8, generator=g)
    raise ValueError(f"kind is 'small' or 'pixels', got {kind!r}")


def _obs_key(kind: str) -> str:
    return "observation" if kind == "small" else "pixels"


def transition(
    kind: str, obs: torch.Tensor, next_obs: torch.Tensor, done: torch.Tensor
) -> TensorDict:
    """A rollout row (any batch shape ``obs.shape[:-k]``) from observations and done flags."""
    key = _obs_key(kind)
    batch = obs.shape[: obs.dim() - (1 if kind == "small" else 3)]
    done = done.reshape(*batch, 1)
    false = torch.zeros_like(done)
    action = torch.zeros(*batch, 2, dtype=torch.int64)
    action[..., 0] = 1
    return TensorDict(
        {
            key: obs,
            "action": action,
            "done": false,
            "terminated": false.clone(),
            "truncated": false.clone(),
            "next": {
                key: next_obs,
                "reward": torch.ones(*batch, 1),
                "done": done,
                "terminated": done.clone(),
                "truncated": false.clone(),
            },
        },
        batch_size=batch,
    )


def step_cycle(kind: str, episode_len: int) -> list[TensorDict]:
    """``episode_len`` unbatched transitions forming one episode, to append in a loop.

    Only two observations alternate (x → y → x ...), so building costs nothing
    and the list can be replayed forever: each replay is a new episode.
    """
    x, y = obs_pool(kind, 2)
    no, yes = torch.tensor(False), torch.tensor(True)
    pair = [(x, y), (y, x)]
    return [
        transition(kind, *pair[t % 2], yes if t == episode_len - 1 else no)
        for t in range(episode_len)
    ]


def batch_cycle(
    kind: str, envs: int | None, steps: int, count: int, episode_len: int
) -> list[TensorDict]:
    """``count`` collector-like batches (``[envs, steps]``, or ``[steps]`` if envs is None).

    Replayed in order and then again from the first, the batches keep chaining:
    env ``b`` at time ``t`` sees observation ``pool[(t + 37 b) % P]`` with
    ``P = count * steps``, and its episodes end where ``(t + 13 b + 1) % episode_len == 0``.
    """
    period = count * steps
    if period % episode_len:
        raise ValueError(f"episode_len {episode_len} must divide count * steps = {period}")
    pool = obs_pool(kind, period)
    n = 1 if envs is None else envs
    out = []
    for c in range(count):
        t = torch.arange(c * steps, (c + 1) * steps)
        b = torch.arange(n)[:, None]
        idx = (t[None] + 37 * b) % period
        done = (t[None] + 13 * b + 1) % episode_len == 0
        td = transition(kind, pool[idx], pool[(idx + 1) % period], done)
        out.append(td[0] if envs is None else td)
    return out


def batch_bytes(td: TensorDict) -> int:
    """Bytes of all tensors of a batch (root and ``"next"``, observations counted twice)."""
    return sum(v.numel() * v.element_size() for v in td.values(True, True))
