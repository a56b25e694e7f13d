"""The format module: records round-trip, damaged commits are refused, the arithmetic holds."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trlrec.errors import CorruptStoreError, FormatVersionError, NotAStoreError
from trlrec.storage import format as fmt
from trlrec.storage.format import (
    EPISODE_RECORD_BYTES,
    FLAG_OPEN,
    NEXT,
    ROOT,
    SUPPORTED_VERSIONS,
    CommitRecord,
    EpisodeRecord,
    StoreFormat,
    StreamEntry,
    chunk_count,
    chunk_spans,
    placements,
    row_chunk,
    store_format,
)

PINNED = Path(__file__).parent.parent / "data" / "store_v1"
int64 = st.integers(-(2**63), 2**63 - 1)
counts = st.integers(0, 2**40)


# ---------------------------------------------------------------- episode records
@given(st.lists(st.tuples(*[int64] * 8), max_size=20))
def test_episode_records_round_trip(fields):
    records = [EpisodeRecord(*f) for f in fields]
    data = b"".join(r.pack() for r in records)
    assert len(data) == EPISODE_RECORD_BYTES * len(records)
    assert EpisodeRecord.unpack_many(data) == records
    assert [EpisodeRecord.unpack_from(data, i) for i in range(len(records))] == records
    # The layout is the documented one: little-endian int64 fields in EPISODE_FIELDS order.
    assert data == b"".join(struct.pack("<8q", *f) for f in fields)


def test_episode_record_defaults_and_field_order():
    rec = EpisodeRecord(stream=2, start_row=5, num_steps=3, flags=1, first_transition=9)
    assert struct.unpack("<8q", rec.pack()) == (2, 5, 3, 1, 9, -1, 0, 0)
    assert tuple(fmt.EPISODE_FIELDS) == tuple(EpisodeRecord.__dataclass_fields__)


def test_unpack_many_refuses_a_torn_record():
    data = EpisodeRecord(0, 0, 1, 1, 0).pack()
    with pytest.raises(CorruptStoreError, match=r"'x/episodes.bin'.*63 bytes.*truncated"):
        EpisodeRecord.unpack_many(data[:-1], "x/episodes.bin")


def test_pinned_index_decodes(tmp_path):
    commit = CommitRecord.parse(PINNED / "shards" / "s0" / "COMMIT")
    data = (PINNED / "shards" / "s0" / "episodes.bin").read_bytes()
    records = EpisodeRecord.unpack_many(data)
    assert len(records) == commit.episodes == 6
    table = np.frombuffer(data, fmt.EPISODE_DTYPE)
    assert table.tolist() == [tuple(r.as_dict().values()) for r in records]
    assert not commit.episode_faults(table).any()
    assert sum(r.num_steps for r in records) == commit.num_transitions == 18


# ---------------------------------------------------------------- stream entries
@st.composite
def stream_entries(draw):
    next_row = draw(st.integers(0, 2**40))
    transitions = draw(st.integers(0, max(0, next_row - 1)))
    if next_row == 0 or draw(st.booleans()):
        return [next_row, transitions, -1, -1, -1]
    start = draw(st.integers(0, next_row - 1))
    steps = draw(st.integers(0, next_row - 1 - start))
    return [next_row, transitions, start, steps, draw(counts)]


@given(stream_entries())
def test_stream_entries_round_trip(value):
    entry = StreamEntry.from_json(value, "COMMIT")
    assert entry.to_json() == value
    assert StreamEntry(*value) == entry
    ep = entry.open_episode(3)
    if value[2] >= 0 and value[3] > 0:
        assert ep == EpisodeRecord(3, value[2], value[3], FLAG_OPEN, value[4])
        assert ep.end_row < entry.next_row
    else:
        assert ep is None


# ---------------------------------------------------------------- COMMIT
GOOD = {
    "version": 1,
    "seq": 3,
    "episodes": 2,
    "episode_meta_bytes": 10,
    "chunk_rows": 8,
    "streams": [[12, 9, 10, 1, 8], [5, 4, -1, -1, -1]],
    "open_meta": {"0": {"a": 1}},
}


def _write(tmp_path: Path, value) -> Path:
    path = tmp_path / "COMMIT"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def test_commit_parses_and_round_trips(tmp_path):
    rec = CommitRecord.parse(_write(tmp_path, GOOD))
    assert (rec.seq, rec.chunk_rows, rec.version) == (3, 8, 1)
    assert rec.streams == (StreamEntry(12, 9, 10, 1, 8), StreamEntry(5, 4))
    assert rec.to_json() == GOOD
    assert CommitRecord.parse(_write(tmp_path, rec.to_json())) == rec
    assert rec.num_transitions == 13
    assert rec.open_episodes() == [EpisodeRecord(0, 10, 1, FLAG_OPEN, 8)]
    assert [rec.stream_meta(0), rec.stream_meta(1)] == [{"a": 1}, {}]
    without = {k: v for k, v in GOOD.items() if k != "open_meta"}
    assert CommitRecord.parse(_write(tmp_path, without)).open_meta == {}


def test_pinned_commit():
    rec = CommitRecord.parse(PINNED / "shards" / "s0" / "COMMIT")
    assert rec == CommitRecord(6, 6, 24, 8, (StreamEntry(12, 9), StreamEntry(12, 9)), {}, 1)


def _with(**changes):
    return {**GOOD, **changes}


def _stream0(value):
    return _with(streams=[value, GOOD["streams"][1]])


DAMAGED = [
    ("seq-missing", {k: v for k, v in GOOD.items() if k != "seq"}, "'seq' is None"),
    ("seq-negative", _with(seq=-1), "'seq' is -1"),
    ("seq-bool", _with(seq=True), "'seq' is True"),
    ("seq-float", _with(seq=3.0), "'seq' is 3.0"),
    ("episodes-huge", _with(episodes=2**62), "'episodes' is"),
    ("episodes-str", _with(episodes="2"), "'episodes' is '2'"),
    ("meta-bytes", _with(episode_meta_bytes=None), "'episode_meta_bytes' is None"),
    ("chunk-rows-zero", _with(chunk_rows=0), "'chunk_rows' must be at least 1"),
    ("chunk-rows-list", _with(chunk_rows=[8]), "'chunk_rows' is"),
    ("streams-missing", {k: v for k, v in GOOD.items() if k != "streams"}, "'streams' is not"),
    ("streams-dict", _with(streams={"0": [1, 0, -1, -1, -1]}), "'streams' is not a list"),
    ("entry-short", _stream0([12, 9, -1, -1]), r"is not \[next_row"),
    ("entry-not-list", _stream0(12), r"is not \[next_row"),
    ("entry-float", _stream0([12.0, 9, -1, -1, -1]), "not a count"),
    ("entry-negative", _stream0([12, -9, -1, -1, -1]), "not a count"),
    ("entry-minus-two", _stream0([12, 9, -2, -1, -1]), "not a count"),
    ("entry-huge", _stream0([2**62, 9, -1, -1, -1]), "not a count"),
    ("entry-bool", _stream0([12, True, -1, -1, -1]), "not a count"),
    ("entry-partly-open", _stream0([12, 9, 3, -1, -1]), "partly -1"),
    ("more-transitions-than-rows", _stream0([9, 9, -1, -1, -1]), "more transitions than rows"),
    ("open-past-rows", _stream0([12, 9, 10, 2, 8]), "open episode ends past"),
    ("open-meta-list", _with(open_meta=[1]), "'open_meta' is not an object"),
    ("open-meta-value", _with(open_meta={"0": [1]}), "'open_meta' of stream '0' is a list"),
    ("not-an-object", [1, 2], "holds a list, expected a dict"),
    ("not-json", "{'version': 1", "is not valid JSON"),
]


@pytest.mark.parametrize(("value", "what"), [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_each_commit_check_refuses_a_damaged_record(tmp_path, value, what):
    path = _write(tmp_path, value)
    with pytest.raises(CorruptStoreError, match=rf"^{re.escape(repr(str(path)))}.*{what}") as info:
        CommitRecord.parse(path)
    assert not isinstance(info.value, FormatVersionError)


def test_missing_commit(tmp_path):
    with pytest.raises(NotAStoreError, match="COMMIT' is missing"):
        CommitRecord.parse(tmp_path / "COMMIT")


# ---------------------------------------------------------------- versions
@pytest.mark.parametrize("version", [99, 5, 0, -1, "1", 1.0, True, None, [1]])
def test_an_unknown_version_is_refused(tmp_path, version):
    path = _write(tmp_path, _with(version=version))
    match = re.escape(
        f"'{path}' has format version {version!r}; this trlrec reads versions [1, 2, 3, 4]"
    )
    with pytest.raises(FormatVersionError, match="^" + match) as info:
        CommitRecord.parse(path)
    assert ("Upgrade trlrec" in str(info.value)) == (type(version) is int and version > 4)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_versions_2_to_4_are_version_1_with_compressed_columns(tmp_path, version):
    path = _write(tmp_path, _with(version=version))
    assert CommitRecord.parse(path).version == version
    assert CommitRecord.parse(_write(tmp_path, _with(version=1))).version == 1


def test_versions_dispatch_to_their_parser(tmp_path, monkeypatch):
    assert store_format(1, "x") is SUPPORTED_VERSIONS[1]
    seen = []

    def parse_v2(data, path):
        seen.append((data["version"], path))
        return CommitRecord(0, 0, 0, 1, (), {}, version=2)

    monkeypatch.setitem(SUPPORTED_VERSIONS, 2, StoreFormat(2, parse_v2))  # type: ignore[index]
    path = _write(tmp_path, _with(version=2, seq="not read by v2"))
    assert CommitRecord.parse(path).version == 2
    assert seen == [(2, path)]
    assert CommitRecord.parse(_write(tmp_path, GOOD)).version == 1  # v1 still reads


# ---------------------------------------------------------------- arithmetic
@given(st.integers(0, 10_000), st.integers(0, 300), st.integers(1, 64))
def test_row_arithmetic_against_brute_force(start, count, chunk_rows):
    where = [
        (r // chunk_rows, r - chunk_rows * (r // chunk_rows)) for r in range(start, start + count)
    ]
    assert [row_chunk(r, chunk_rows) for r in range(start, start + count)] == where
    pieces = list(chunk_spans(start, count, chunk_rows))
    flat = [(c, o + k) for c, o, n in pieces for k in range(n)]
    assert flat == where
    assert all(n > 0 and o + n <= chunk_rows for _, o, n in pieces)
    assert len({c for c, _ in where}) == len(pieces)  # one piece per chunk touched
    # chunk_count: the chunks that hold rows [0, rows)
    rows = start + count
    assert chunk_count(rows, chunk_rows) == len({r // chunk_rows for r in range(rows)})
    t = torch.arange(start, start + count)
    chunk, offset = row_chunk(t, torch.full_like(t, chunk_rows))
    assert list(zip(chunk.tolist(), offset.tolist(), strict=True)) == where


@given(st.integers(0, 1000), st.integers(1, 50))
def test_t_plus_one_layout_against_the_documented_rule(start, steps):
    """docs/FORMAT.md: transition t takes its root from row start + t (state and root columns)
    and its "next" from row start + t + 1 (state columns) or row start + t (next columns)."""
    rec = EpisodeRecord(0, start, steps, 1, 0)
    assert list(rec.rows) == list(range(start, start + steps + 1))
    assert rec.end_row == start + steps
    rule = {
        ("state", ROOT): [start + t for t in range(steps)],
        ("state", NEXT): [start + t + 1 for t in range(steps)],
        ("root", ROOT): [start + t for t in range(steps)],
        ("next", NEXT): [start + t for t in range(steps)],
    }
    for role in ("state", "root", "next"):
        parts = {part for part, _shift in placements(role)}
        assert parts == {part for r, part in rule if r == role}
        for part in parts:
            assert list(rec.column_rows(role, part)) == rule[role, part]
        assert set(rec.stored_rows(role)) == {r for p in parts for r in rule[role, p]}
    with pytest.raises(ValueError, match="no value in the 'next' part"):
        rec.column_rows("root", NEXT)
    with pytest.raises(ValueError, match="role 'bogus'"):
        placements("bogus")


def test_paths():
    shard = Path("/s/shards/x")
    assert fmt.chunk_path(shard, 3, 12) == shard / "streams" / "3" / "chunk-000012"
    assert fmt.column_file(Path("c"), ("next", "a", "r")) == Path("c/next/a/r.memmap")


# ---------------------------------------------------------------- episode checks
def _commit():
    return CommitRecord(1, 3, 10, 8, (StreamEntry(12, 9), StreamEntry(5, 4)))


@pytest.mark.parametrize(
    ("rec", "what"),
    [
        (EpisodeRecord(2, 0, 3, 1, 0), "episode 4 has stream 2"),
        (EpisodeRecord(-1, 0, 3, 1, 0), "episode 4 has stream -1"),
        (EpisodeRecord(0, -5, 3, 1, 0), "start -5"),
        (EpisodeRecord(0, 0, 0, 1, 0), "0 steps"),
        (EpisodeRecord(1, 2, 3, 1, 0), "ends at row 5, past the 5 committed rows of stream 1"),
    ],
)
def test_an_episode_outside_its_commit_is_refused(rec, what):
    fine = EpisodeRecord(1, 0, 4, 1, 0)
    table = np.frombuffer(fine.pack() + rec.pack(), fmt.EPISODE_DTYPE)
    faults = _commit().episode_faults(table)
    assert faults[0] == 0
    err = _commit().episode_error(rec, 4, int(faults[1]), "ix/episodes.bin")
    assert isinstance(err, CorruptStoreError)
    assert re.match(rf"^'ix/episodes.bin': .*{what}.*index is damaged", str(err))


_INT64 = st.one_of(st.integers(-2, 14), st.integers(-(2**63), 2**63 - 1))  # fits, or anything


@given(st.lists(st.tuples(_INT64, _INT64, _INT64), max_size=20))
def test_episode_faults_follow_the_rule_for_any_int64_fields(fields):
    # The rule in plain Python ints (which never overflow): the vectorised check must
    # agree for any record a damaged file may hold, sums past 2**63 included.
    commit = _commit()
    recs = [EpisodeRecord(b, start, steps, 1, 0) for b, start, steps in fields]
    table = np.frombuffer(b"".join(r.pack() for r in recs), fmt.EPISODE_DTYPE)
    want = []
    for r in recs:
        if not (0 <= r.stream < len(commit.streams)) or r.start_row < 0 or r.num_steps < 1:
            want.append(fmt.FAULT_FIELDS)
        elif r.start_row + r.num_steps >= commit.streams[r.stream].next_row:
            want.append(fmt.FAULT_PAST_END)
        else:
            want.append(0)
    assert commit.episode_faults(table).tolist() == want


def test_meta_span():
    assert EpisodeRecord(0, 0, 1, 1, 0).meta_span(10, "m", 0) is None
    assert EpisodeRecord(0, 0, 1, 1, 0, 2, 8).meta_span(10, "m", 0) == range(2, 10)
    for offset, length in ((2, 9), (-7, 10), (3, -1)):
        with pytest.raises(CorruptStoreError, match=r"^'m': episode 5 points at bytes"):
            EpisodeRecord(0, 0, 1, 1, 0, offset, length).meta_span(10, "m", 5)


def test_the_format_module_needs_neither_torch_nor_the_writer():
    code = (
        "import sys, trlrec.storage.format\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'trlrec.io'))]\n"
        "bad += [m for m in sys.modules if m.startswith('trlrec.storage.') and m not in "
        "('trlrec.storage.format', 'trlrec.storage.jsonio')]\n"
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
