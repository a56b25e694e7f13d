"""Schedules that pick which episodes or steps a :class:`~trlrec.VideoRecorder` films.

They play the part of Gymnasium's ``RecordVideo(episode_trigger=..., step_trigger=...)``:
a trigger is any callable ``trigger(index: int) -> bool``. The recorder calls an
episode trigger with the index of each episode when it starts (0, 1, 2, ... per
video stream) and a step trigger with the index of each frame it sees; a ``True``
starts a new video.

The schedules here validate their arguments when they are built, so a bad
schedule fails at construction rather than hours into a run.

Examples:
    >>> [i for i in range(30) if CappedCubicSchedule()(i)]
    [0, 1, 8, 27]
    >>> [i for i in range(2500) if CappedCubicSchedule(cap=10, every=1000)(i)]
    [0, 1, 8, 1000, 2000]
    >>> [i for i in range(10) if Every(3, offset=1)(i)]
    [1, 4, 7]
"""

from __future__ import annotations

from trlrec.errors import VideoError

__all__ = ["CappedCubicSchedule", "Every", "capped_cubic_video_schedule"]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VideoError(
            f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    return value


def _check_index(index: object) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise VideoError(
            f"a trigger is called with an episode or step index (an int >= 0), got {index!r}"
        )
    return index


class CappedCubicSchedule:
    """True for perfect cubes (0, 1, 8, 27, ...) below ``cap``, then every ``every``-th index.

    With the defaults it is Gymnasium's ``capped_cubic_video_schedule``.

    Args:
        cap: the index from which the schedule switches from cubes to a fixed period.
        every: the period after ``cap``: indices that are multiples of ``every``.

    Raises:
        VideoError: if ``cap`` is not an int >= 0 or ``every`` not an int >= 1.
    """

    def __init__(self, cap: int = 1000, every: int = 1000) -> None:
        self.cap = _check_int("cap", cap, 0)
        self.every = _check_int("every", every, 1)

    def __call__(self, index: int) -> bool:
        """Whether the episode or step ``index`` is recorded."""
        index = _check_index(index)
        if index < self.cap:
            return round(index ** (1.0 / 3.0)) ** 3 == index
        return index % self.every == 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cap={self.cap}, every={self.every})"


class Every:
    """True for every ``n``-th index, starting at ``offset``.

    Args:
        n: the period, an int >= 1.
        offset: the first index that is recorded, an int in ``[0, n)``.

    Raises:
        VideoError: if ``n`` < 1 or ``offset`` is outside ``[0, n)``.
    """

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n = _check_int("n", n, 1)
        self.offset = _check_int("offset", offset, 0)
        if self.offset >= self.n:
            raise VideoError(f"offset must be < n ({self.n}), got {offset}; use offset % n")

    def __call__(self, index: int) -> bool:
        """Whether the episode or step ``index`` is recorded."""
        return _check_index(index) % self.n == self.offset

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, offset={self.offset})"


def capped_cubic_video_schedule(episode_id: int) -> bool:
    """Gymnasium's default episode trigger: cubes below 1000, then every 1000th episode.

    Examples:
        >>> capped_cubic_video_schedule(27), capped_cubic_video_schedule(28)
        (True, False)
    """
    return _DEFAULT_SCHEDULE(episode_id)


_DEFAULT_SCHEDULE = CappedCubicSchedule()
