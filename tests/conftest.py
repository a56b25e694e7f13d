"""Shared fixtures: a small deterministic stub env.

``StubEnv`` is a real TorchRL ``EnvBase``: its observations are a deterministic
function of (sub-env, episode, step), so recorded data can be compared with the
rollout bit for bit and every reset observation differs from the last one.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class StubEnv(EnvBase):
    """Deterministic env whose episode length for sub-env ``b`` is ``episode_lengths[b % n]``.

    Args:
        episode_lengths: steps before ``done`` (per sub-env, cycled).
        batch_size: ``()`` or ``(B,)``.
        obs_shape: shape of the float ``"observation"``.
        pixels: ``(H, W, C)`` to add a uint8 ``"pixels"`` observation, or None.
        obs_dtype: dtype of ``"observation"``.
    """

    def __init__(
        self,
        episode_lengths: Sequence[int] = (5,),
        batch_size: Sequence[int] = (),
        obs_shape: Sequence[int] = (4,),
        pixels: Sequence[int] | None = None,
        obs_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(batch_size=torch.Size(batch_size))
        bs = self.batch_size
        n = max(1, bs.numel())
        self._lengths = torch.tensor([episode_lengths[b % len(episode_lengths)] for b in range(n)])
        self._obs_shape = torch.Size(obs_shape)
        self._pixels = None if pixels is None else torch.Size(pixels)
        self._obs_dtype = obs_dtype
        obs = {"observation": Unbounded(shape=(*bs, *obs_shape), dtype=obs_dtype)}
        if self._pixels is not None:
            obs["pixels"] = Bounded(0, 255, shape=(*bs, *self._pixels), dtype=torch.uint8)
        self.observation_spec = Composite(obs, shape=bs)
        self.action_spec = Categorical(3, shape=(*bs, 1), dtype=torch.int64)
        self.reward_spec = Unbounded(shape=(*bs, 1), dtype=torch.float32)
        flag = Categorical(2, shape=(*bs, 1), dtype=torch.bool)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=bs
        )
        self._t = torch.zeros(n, dtype=torch.int64)
        self._episode = torch.full((n,), -1, dtype=torch.int64)

    def _observe(self) -> dict[str, torch.Tensor]:
        n = self._t.numel()
        env = torch.arange(n)
        base = (env * 1000 + self._episode * 100 + self._t).to(torch.float64)
        numel = self._obs_shape.numel()
        obs = base[:, None] + torch.arange(numel, dtype=torch.float64)[None] / 8
        out = {"observation": obs.reshape(n, *self._obs_shape).to(self._obs_dtype)}
        if self._pixels is not None:
            npix = self._pixels.numel()
            pix = (base[:, None].long() * 7 + torch.arange(npix)[None]) % 251
            out["pixels"] = pix.to(torch.uint8).reshape(n, *self._pixels)
        return {k: v.reshape(*self.batch_size, *v.shape[1:]) for k, v in out.items()}

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        n = self._t.numel()
        mask = torch.ones(n, dtype=torch.bool)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(n, -1).any(-1)
        self._t[mask] = 0
        self._episode[mask] += 1
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        flags = {"done": done, "terminated": done.clone(), "truncated": done.clone()}
        return TensorDict(
            {**self._observe(), **flags},
            batch_size=self.batch_size,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").reshape(-1)
        self._t += 1
        terminated = (self._t >= self._lengths).reshape(*self.batch_size, 1)
        reward = (action.to(torch.float32) + self._t.to(torch.float32) / 10).reshape(
            *self.batch_size, 1
        )
        return TensorDict(
            {
                **self._observe(),
                "reward": reward,
                "done": terminated.clone(),
                "terminated": terminated,
                "truncated": torch.zeros_like(terminated),
            },
            batch_size=self.batch_size,
        )

    def _set_seed(self, seed: int | None) -> None:
        torch.manual_seed(0 if seed is None else seed)


@pytest.fixture
def stub_env_cls() -> type[StubEnv]:
    """The StubEnv class, to build envs with custom arguments."""
    return StubEnv


@pytest.fixture
def stub_env() -> StubEnv:
    """A single stub env with 5-step episodes and 4-float observations."""
    torch.manual_seed(0)
    return StubEnv()
