from __future__ import annotations

import pytest

from trlrec.errors import VideoError
from trlrec.transforms.triggers import CappedCubicSchedule, Every, capped_cubic_video_schedule


def gymnasium_schedule(episode_id: int) -> bool:
    # gymnasium.utils.save_video.capped_cubic_video_schedule (that module needs moviepy)
    if episode_id < 1000:
        return round(episode_id ** (1.0 / 3)) ** 3 == episode_id
    return episode_id % 1000 == 0


def test_capped_cubic_matches_gymnasium() -> None:
    ours = CappedCubicSchedule()
    for i in range(5000):
        assert ours(i) == gymnasium_schedule(i) == capped_cubic_video_schedule(i), i


def test_capped_cubic_custom_cap() -> None:
    s = CappedCubicSchedule(cap=10, every=5)
    assert [i for i in range(31) if s(i)] == [0, 1, 8, 10, 15, 20, 25, 30]
    assert repr(s) == "CappedCubicSchedule(cap=10, every=5)"


def test_every() -> None:
    assert [i for i in range(10) if Every(3, offset=1)(i)] == [1, 4, 7]
    assert all(Every(1)(i) for i in range(5))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: CappedCubicSchedule(cap=-1), "cap must be an int >= 0, got -1"),
        (lambda: CappedCubicSchedule(every=0), "every must be an int >= 1, got 0"),
        (lambda: CappedCubicSchedule(every=2.5), r"every must be an int >= 1, got 2.5 \(float\)"),
        (lambda: Every(0), "n must be an int >= 1"),
        (lambda: Every(True), "n must be an int >= 1"),
        (lambda: Every(3, offset=3), r"offset must be < n \(3\)"),
    ],
)
def test_bad_arguments_fail_when_built(build, match: str) -> None:
    with pytest.raises(VideoError, match=match):
        build()


@pytest.mark.parametrize("index", [-1, 1.5, "3", None])
def test_bad_index_raises(index: object) -> None:
    with pytest.raises(VideoError, match="episode or step index"):
        CappedCubicSchedule()(index)  # type: ignore[arg-type]
    with pytest.raises(VideoError, match="episode or step index"):
        Every(2)(index)  # type: ignore[arg-type]
