"""The part of Minari the exporters use, as ``Protocol`` s, and its import.

minari is an optional dependency (``pip install 'trlrec[minari]'``) whose types are not
followed here: these protocols say which of its functions and attributes trlrec uses
(Minari 0.5's), so that the type checker checks those uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from trlrec.export.layout import require

__all__ = [
    "EpisodeBufferFactory",
    "EpisodeData",
    "Minari",
    "MinariDataset",
    "MinariStorage",
    "load_minari",
]


class EpisodeData(Protocol):
    """A ``minari.EpisodeData``: the arrays (or nested dicts of arrays) of one episode."""

    @property
    def observations(self) -> Any:
        """``T + 1`` observations."""

    @property
    def actions(self) -> Any:
        """``T`` actions."""

    @property
    def rewards(self) -> Any:
        """``T`` rewards."""

    @property
    def terminations(self) -> Any:
        """``T`` termination flags."""

    @property
    def truncations(self) -> Any:
        """``T`` truncation flags."""

    @property
    def infos(self) -> Any:
        """A (nested) dict of ``T + 1`` values per key, or empty."""


class MinariStorage(Protocol):
    """A ``minari.dataset.minari_storage.MinariStorage``: a dataset's files."""

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The dataset's metadata."""

    @property
    def data_path(self) -> str:
        """The directory of the dataset's data files."""

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Add entries to the dataset's metadata."""

    def update_episodes(self, episodes: Iterable[Any]) -> None:
        """Append ``EpisodeBuffer`` s as new episodes."""

    def get_episode_metadata(self, episode_indices: Iterable[int]) -> Iterable[Mapping[str, Any]]:
        """The metadata of the given episodes."""

    def update_episode_metadata(
        self, metadatas: Iterable[Mapping[str, Any]], episode_indices: Iterable[int] | None = None
    ) -> None:
        """Set the metadata of the given episodes."""


class MinariDataset(Protocol):
    """A ``minari.MinariDataset``."""

    @property
    def id(self) -> str:
        """The dataset id."""

    @property
    def storage(self) -> MinariStorage:
        """Its files."""

    @property
    def total_episodes(self) -> int:
        """The number of episodes."""

    @property
    def episode_indices(self) -> Sequence[int]:
        """The indices of its episodes."""

    @property
    def observation_space(self) -> Any:
        """The gymnasium observation space."""

    @property
    def action_space(self) -> Any:
        """The gymnasium action space."""

    def iterate_episodes(
        self, episode_indices: Iterable[int] | None = None
    ) -> Iterator[EpisodeData]:
        """The given episodes (all by default), one at a time."""


class EpisodeBufferFactory(Protocol):
    """The class ``minari.data_collector.EpisodeBuffer`` (one episode to append)."""

    def __call__(
        self,
        *,
        observations: Any = None,
        actions: Any = None,
        rewards: Any = ...,
        terminations: Any = ...,
        truncations: Any = ...,
        infos: Any = None,
    ) -> Any:
        """A buffer of one episode's arrays."""


class Minari(Protocol):
    """The module ``minari``."""

    def load_dataset(self, dataset_id: str, download: bool = False) -> MinariDataset:
        """Open the local dataset ``dataset_id``."""

    def create_dataset_from_buffers(
        self,
        dataset_id: str,
        buffer: list[Any],
        env: str | None = None,
        *,
        observation_space: Any = None,
        action_space: Any = None,
        author: str | None = None,
        description: str | None = None,
        algorithm_name: str | None = None,
        data_format: str | None = None,
        jpeg_encoding: bool = True,
    ) -> MinariDataset:
        """Create a new local dataset (``ValueError`` when the id exists or is malformed)."""


def load_minari() -> tuple[Minari, EpisodeBufferFactory]:
    """``minari`` and its ``EpisodeBuffer`` class.

    Raises:
        MissingDependencyError: minari or h5py (its storage) is not installed.
    """
    require("h5py", "minari", "h5py (Minari's HDF5 storage)")
    require("minari", "minari")
    import minari
    from minari.data_collector import EpisodeBuffer

    return minari, EpisodeBuffer
