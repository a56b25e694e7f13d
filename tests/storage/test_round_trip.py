"""Property: whatever a rollout holds, the store gives it back bit for bit."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings

from tests.storage.helpers import assert_store_matches, record_rows
from tests.storage.strategies import rollouts
from trlrec import TrajectoryReader, TrajectoryWriter

_counter = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=rollouts())
def test_append_round_trip(tmp_path, data):
    rollout, kw = data
    assert_store_matches(record_rows(tmp_path / f"a{next(_counter)}", rollout, **kw), rollout)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=rollouts())
def test_extend_round_trip(tmp_path, data):
    rollout, kw = data
    path = tmp_path / f"e{next(_counter)}"
    T = rollout.shape[-1]
    with TrajectoryWriter(path, **kw) as w:
        w.extend(rollout[..., : T // 2])
        w.extend(rollout[..., T // 2 :])
    assert_store_matches(TrajectoryReader(path), rollout)
