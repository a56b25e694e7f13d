"""PlaybackEnv: a TorchRL environment that replays the episodes of a store, in order."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from trlrec.errors import ConfigError, PlaybackError, SchemaError, StoreError
from trlrec.specs import StoreSpecs, store_specs
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry

__all__ = ["PlaybackEnv"]


def _name(key: tuple[str, ...]) -> str | tuple[str, ...]:
    return key[0] if len(key) == 1 else key


class PlaybackEnv(EnvBase):
    """Replays the recorded episodes of a store as a TorchRL environment.

    Each :meth:`reset` starts the next episode and returns its first observation
    and done flags; each :meth:`step` returns what was recorded for that transition
    (its ``"next"``), whatever the action. The specs are the recorded env's
    (:attr:`TrajectoryReader.specs <trlrec.TrajectoryReader.specs>`, for one
    sub-env, on the CPU) for the keys the store holds, so spec-driven modules
    (``RandomPolicy(env.action_spec)``, ``QValueModule``, ``EGreedyModule``) build
    from it and their actions are valid for the original env. A store without
    recorded specs gets them from its schema (see :class:`~trlrec.specs.StoreSpecs`:
    ``Unbounded`` of the stored shapes and dtypes, ``Categorical(2)`` for booleans,
    no bounds nor category counts). Next-only observation keys are zero at reset.

    Examples:
        >>> import tempfile
        >>> from torchrl.envs import GymEnv
        >>> from torchrl.envs.utils import RandomPolicy
        >>> from trlrec import PlaybackEnv, TensorDictRecorder
        >>> path = tempfile.mkdtemp() + "/cartpole"
        >>> with TensorDictRecorder(path) as rec:
        ...     _ = GymEnv("CartPole-v1").append_transform(rec).rollout(10)
        >>> env = PlaybackEnv(path)
        >>> env.action_spec == GymEnv("CartPole-v1").action_spec   # OneHot(2), as recorded
        True
        >>> actions = env.rollout(5, RandomPolicy(env.action_spec))["action"]
        >>> bool(GymEnv("CartPole-v1").action_spec.is_in(actions[0]))
        True

    Args:
        path: a store directory or an open :class:`~trlrec.TrajectoryReader`.
        check_actions: raise :class:`~trlrec.errors.PlaybackError` when an action
            given to :meth:`step` differs (bit for bit) from the recorded one.
        start: index of the first episode to play.
        loop: start again at episode 0 after the last one (else reset raises).

    Raises:
        StoreError: the store holds no episode (and the reader's errors).
        SchemaError: the shards have different schemas.
        ConfigError: ``start`` is not an episode index.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | TrajectoryReader,
        *,
        check_actions: bool = False,
        start: int = 0,
        loop: bool = False,
    ):
        reader = path if isinstance(path, TrajectoryReader) else TrajectoryReader(path)
        if reader.num_episodes == 0:
            raise StoreError(f"the store {str(reader.path)!r} holds no episode to play back")
        if not isinstance(start, int) or not 0 <= start < reader.num_episodes:
            raise ConfigError(
                f"start must be an episode index in [0, {reader.num_episodes}), got {start!r}"
            )
        specs = store_specs(reader)
        entries = tuple(specs.entries.values())
        super().__init__(batch_size=torch.Size([]))
        self.reader = reader
        self.check_actions = check_actions
        self.loop = loop
        self._entries = entries
        self._next_episode = start
        self._episode_index = -1
        self._episode: TensorDictBase | None = None
        self._t = 0
        self._exhausted = False
        self._make_specs(specs)

    def _make_specs(self, specs: StoreSpecs) -> None:
        if not list(specs.done.keys()):
            raise SchemaError(
                "the store has no boolean 'done' key in both root and 'next'; a PlaybackEnv "
                "needs the recorded done flags"
            )
        cat = specs.category

        def having(role: str, keep: Callable[[str | None], bool]) -> list[Entry]:
            return [e for k, e in specs.entries.items() if e.role == role and keep(cat.get(k))]

        self._extra_next = having("next", lambda c: c != "reward")
        self._action_entries = having("root", lambda c: c == "action")
        # root-only inputs other than actions (recorded state specs): set at reset too
        self._root_state = having("root", lambda c: c == "state")
        self.full_observation_spec = specs.observation
        self.full_done_spec = specs.done
        self.full_state_spec = specs.state
        if list(specs.action.keys()):
            self.full_action_spec = specs.action
        if list(specs.reward.keys()):
            self.full_reward_spec = specs.reward

    @property
    def episode_index(self) -> int:
        """Index (in the store) of the episode being played, -1 before the first reset."""
        return self._episode_index

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        n = self.reader.num_episodes
        if self._next_episode >= n and not self.loop:
            if (
                tensordict is not None
                and "_reset" in tensordict.keys()
                and self._episode is not None
            ):
                # TorchRL's automatic reset after the last step of a rollout: the error
                # waits for a step, which would really need another episode.
                self._exhausted = True
                return self._reset_output(self._episode[-1].get("next"))
            raise PlaybackError(
                f"all {n} episodes of {str(self.reader.path)!r} have been played; create a "
                "new PlaybackEnv (or pass loop=True) to play them again"
            )
        if self._next_episode >= n:
            self._next_episode = 0
        self._exhausted = False
        self._episode_index = self._next_episode
        self._next_episode += 1
        self._episode = self.reader.episodes[self._episode_index]
        self._t = 0
        return self._reset_output(self._episode[0])

    def _reset_output(self, row: TensorDictBase) -> TensorDictBase:
        out = TensorDict({}, batch_size=[])
        for e in self._entries:
            if e.role == "state":
                out.set(e.key, row.get(e.key).clone())
        for e in self._extra_next:
            out.set(e.key, torch.zeros(e.shape, dtype=e.dtype))
        for e in self._root_state:
            value = row.get(e.key, None)  # a "next" row (after the last step) has none
            out.set(e.key, torch.zeros(e.shape, dtype=e.dtype) if value is None else value.clone())
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        ep = self._episode
        if ep is None:
            raise PlaybackError("step() before reset(): call reset() to start the first episode")
        if self._exhausted:
            raise PlaybackError(
                f"all {self.reader.num_episodes} episodes of {str(self.reader.path)!r} have "
                "been played; create a new PlaybackEnv (or pass loop=True) to play them again"
            )
        if self._t >= ep.batch_size[0]:
            raise PlaybackError(
                f"episode {self._episode_index} of {str(self.reader.path)!r} ended after "
                f"{self._t} recorded steps; call reset() to play the next one"
            )
        row = ep[self._t]
        if self.check_actions:
            self._check_action(tensordict, row)
        self._t += 1
        return row.get("next").clone()

    def _check_action(self, given: TensorDictBase, row: TensorDictBase) -> None:
        for e in self._action_entries:
            recorded = row.get(e.key)
            value = given.get(e.key, None)
            if value is None:
                raise PlaybackError(f"step() got no {_name(e.key)!r}; the recording has one")
            same = (
                value.shape == recorded.shape
                and value.dtype == recorded.dtype
                and torch.equal(value.view(-1), recorded.view(-1))
            )
            if not same:
                raise PlaybackError(
                    f"episode {self._episode_index}, step {self._t}: {_name(e.key)!r} is "
                    f"{value.tolist()} ({value.dtype}), the recording has {recorded.tolist()} "
                    f"({recorded.dtype})"
                )

    def recorded_action(self) -> TensorDict:
        """The root-only keys (action...) recorded at the current step, to replay them.

        Raises:
            PlaybackError: before a reset or after the episode's last step.
        """
        ep = self._episode
        if ep is None or self._t >= ep.batch_size[0]:
            raise PlaybackError("no recorded step to take: call reset() first")
        row = ep[self._t]
        out = TensorDict({}, batch_size=[])
        for e in self._entries:
            if e.role == "root":
                out.set(e.key, row.get(e.key).clone())
        return out

    def recorded_policy(self, tensordict: TensorDictBase) -> TensorDictBase:
        """A policy for ``rollout``: set the recorded root-only keys (the action) in place.

        ``env.rollout(n, policy=env.recorded_policy, break_when_any_done=False)``
        re-enacts the recording.
        """
        return tensordict.update(self.recorded_action())

    def _set_seed(self, seed: int | None) -> None:
        """Nothing to seed: the outcomes are recorded."""

    def __repr__(self) -> str:
        return (
            f"PlaybackEnv({str(self.reader.path)!r}, episodes={self.reader.num_episodes}, "
            f"episode={self._episode_index}, step={self._t})"
        )
