"""The recorders' fast lane: a per-step shortcut, cached until a setting it skips changes."""

from __future__ import annotations

from typing import Any

__all__ = ["FastLane"]


class FastLane:
    """Mixin for a transform whose ``_step`` takes the cached shortcut ``self._fast``.

    The general path sets ``_fast`` up when the settings allow it; setting any attribute
    named in ``LANE_SETTINGS`` (or ``_fast`` to None) drops it, so the next step takes the
    general path again.
    """

    LANE_SETTINGS: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.LANE_SETTINGS or (name == "_fast" and value is None):
            self._drop_lane()

    def _drop_lane(self) -> None:
        self.__dict__["_fast"] = None
