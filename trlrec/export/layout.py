"""Which stored keys an exporter writes as observations, actions, rewards and end flags.

Every exporter needs the same split of a store's columns: the observations (state
keys, ``T + 1`` per episode), the actions (root keys), one scalar reward, the
``terminated`` / ``truncated`` flags, and the rest. The split follows the store's
specs (:func:`trlrec.specs.store_specs`: recorded, else guessed from the schema).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import torch

from trlrec.cli.columns import episode_column
from trlrec.cli.progress import Progress
from trlrec.errors import MissingDependencyError
from trlrec.specs import StoreSpecs, store_specs
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.schema import Entry

__all__ = [
    "StoreLayout",
    "store_layout",
    "column",
    "require",
    "episodes_with_steps",
    "progress_bar",
]


@dataclass
class StoreLayout:
    """The columns of a store, by what an exporter does with them.

    Attributes:
        specs: the store's specs, per key.
        observation: state keys that are observations (``T + 1`` values per episode).
        action: root keys that are actions.
        reward: the scalar reward column (one value per transition), or None.
        terminated: the done-category state key ``terminated`` (else ``done``), or None.
        truncated: the state key ``truncated``, or None.
        extra: every other column (done flags included), kept as extras / infos.

    Examples:
        >>> import tempfile
        >>> from torchrl.envs import GymEnv
        >>> from trlrec import TensorDictRecorder, TrajectoryReader
        >>> from trlrec.export.layout import store_layout
        >>> path = tempfile.mkdtemp() + "/run"
        >>> with TensorDictRecorder(path) as rec:
        ...     _ = GymEnv("CartPole-v1").append_transform(rec).rollout(5)
        >>> layout = store_layout(TrajectoryReader(path))
        >>> [e.key for e in layout.observation], layout.reward.key, layout.terminated.key
        ([('observation',)], ('reward',), ('terminated',))
        >>> [e.key for e in layout.extra]
        [('done',)]
    """

    specs: StoreSpecs
    observation: list[Entry]
    action: list[Entry]
    reward: Entry | None
    terminated: Entry | None
    truncated: Entry | None
    extra: list[Entry]


def _numel(e: Entry) -> int:
    return torch.Size(e.shape).numel()


def store_layout(reader: TrajectoryReader) -> StoreLayout:
    """Split the columns of ``reader``'s store (see :class:`StoreLayout`)."""
    specs = store_specs(reader)
    entries = list(specs.entries.values())
    cat = specs.category

    def of(category: str, role: str) -> list[Entry]:
        return [e for e in entries if cat.get(e.key) == category and e.role == role]

    rewards = [e for e in of("reward", "next") if _numel(e) == 1]
    reward = next((e for e in rewards if e.key == ("reward",)), rewards[0] if rewards else None)
    flags = {e.key: e for e in of("done", "state") if _numel(e) == 1}
    terminated = flags.get(("terminated",), flags.get(("done",)))
    truncated = flags.get(("truncated",))
    observation = of("observation", "state")
    action = of("action", "root")
    used = {id(e) for e in (*observation, *action, reward, terminated, truncated) if e is not None}
    extra = [e for e in entries if id(e) not in used]
    return StoreLayout(specs, observation, action, reward, terminated, truncated, extra)


def column(reader: TrajectoryReader, episode: int, entry: Entry) -> torch.Tensor:
    """One episode's values of ``entry``: ``T + 1`` rows for a state key, ``T`` otherwise."""
    pieces = list(episode_column(reader, episode, entry, with_last=True))
    return torch.cat(pieces) if len(pieces) != 1 else pieces[0]


def episodes_with_steps(reader: TrajectoryReader) -> Iterator[int]:
    """The indices of the episodes holding at least one transition."""
    for i in range(reader.num_episodes):
        if reader.episode_info(i)["num_steps"] > 0:
            yield i


def progress_bar(label: str, total: int, enabled: bool) -> Progress:
    """A progress line on stderr (drawn only on a terminal, and only when ``enabled``)."""
    bar = Progress(label, total)
    bar.enabled = bar.enabled and enabled
    return bar


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError saying what to pip install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{package or module} is needed for this ({err}); install it with "
            f"pip install 'trlrec[{extra}]'"
        ) from err
