"""Fuzz the reader's parsing of COMMIT, schema.json and episodes.bin (bounded, in CI).

Whatever the bytes, opening and reading the store gives a valid read or a
``TrlrecError``: never another exception, a crash, or a hang.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability._worker import probe
from tests.reliability.test_hostile import SHARD, build_store

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

counts = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([2**31 - 1, 2**31, 2**60, 2**62, 2**63 - 1, -(2**63)]),
    st.integers(),
)
scalars = st.one_of(counts, st.none(), st.booleans(), st.text(max_size=5), st.floats())
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=4), c),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "store"
    build_store(path)
    return path


def _check(store, rel, data: bytes) -> None:
    path = store / rel
    original = path.read_bytes()
    try:
        path.write_bytes(data)
        res = probe(str(store))
    finally:
        path.write_bytes(original)
    assert res["status"] == "ok" or res["trlrec"], res["msg"]


def _commit(store) -> dict:
    return json.loads((store / SHARD / "COMMIT").read_bytes())


@SETTINGS
@given(
    field=st.sampled_from(
        ["version", "seq", "episodes", "episode_meta_bytes", "chunk_rows", "streams", "open_meta"]
    ),
    value=json_values,
    stream_value=st.lists(counts, min_size=0, max_size=6),
    raw=st.one_of(st.none(), st.binary(max_size=300)),
)
def test_fuzz_commit(store, field, value, stream_value, raw):
    if raw is not None:
        _check(store, SHARD / "COMMIT", raw)
        return
    commit = _commit(store)
    commit[field] = value
    mutated = dict(_commit(store), streams=[stream_value, *_commit(store)["streams"][1:]])
    _check(store, SHARD / "COMMIT", json.dumps(commit).encode())
    _check(store, SHARD / "COMMIT", json.dumps(mutated).encode())


@SETTINGS
@given(
    entry=st.integers(0, 8),
    field=st.sampled_from(["key", "role", "shape", "dtype"]),
    value=st.one_of(
        json_values,
        st.lists(counts, max_size=17),
        st.sampled_from(["float32", "uint8", "bool", "complex128", "torch.float32", "object"]),
        st.sampled_from(["state", "root", "next"]),
    ),
    batch=st.one_of(st.none(), st.lists(counts, max_size=4)),
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_fuzz_schema(store, entry, field, value, batch, raw):
    rel = SHARD / "schema.json"
    if raw is not None:
        _check(store, rel, raw)
        return
    schema = json.loads((store / rel).read_bytes())
    entries = schema["entries"]
    entries[entry % len(entries)][field] = value
    if batch is not None:
        schema["batch_shape"] = batch
    _check(store, rel, json.dumps(schema).encode())


@SETTINGS
@given(
    records=st.lists(st.tuples(*[counts] * 8), max_size=20),
    raw=st.one_of(st.none(), st.binary(max_size=1500)),
    keep=st.integers(0, 16),
)
def test_fuzz_episode_index(store, records, raw, keep):
    rel = SHARD / "episodes.bin"
    original = (store / rel).read_bytes()
    rec = struct.Struct("<8q")
    clamp = [max(-(2**63), min(2**63 - 1, v)) for r in records for v in r]
    packed = b"".join(rec.pack(*clamp[i : i + 8]) for i in range(0, len(clamp), 8))
    data = raw if raw is not None else original[: keep * rec.size] + packed
    _check(store, rel, data)


def test_fuzz_template_is_valid(store):
    """The template reads without errors before any fuzzing (else the fuzz proves little)."""
    assert probe(str(store))["status"] == "ok"
