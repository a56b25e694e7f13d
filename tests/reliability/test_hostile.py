"""Damaged and hostile stores: the reader raises a trlrec error naming the file, or reads.

Every damaged copy is probed in a forked child of the worker with its address space
capped at 1 GiB over what it already uses and a time limit: a segfault, a SIGBUS, a
hang or a huge allocation from a size read off disk fails the test, as does any
exception that is not a ``TrlrecError``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability._worker import rollout
from trlrec.storage.writer import TrajectoryWriter

SHARD = Path("shards") / "shard-000000"
FILES = [
    Path("dataset.json"),
    SHARD / "shard.json",
    SHARD / "schema.json",
    SHARD / "COMMIT",
    SHARD / "episodes.bin",
    SHARD / "episode_meta.jsonl",
    SHARD / "streams" / "0" / "chunk-000000" / "observation.memmap",
    SHARD / "streams" / "1" / "chunk-000001" / "next" / "reward.memmap",
    Path("shards") / "shard-000001" / "COMMIT",
]


def build_store(path: Path) -> None:
    """Two shards: one closed with episode metadata, one left with an open episode."""
    roll = rollout(2, 30, (4, 7))
    with TrajectoryWriter(path, shard="shard-000000", chunk_rows=8, metadata={"run": 1}) as w:
        for t in range(30):
            w.append(roll[:, t], episode_metadata=[{"t": t}, None])
    w2 = TrajectoryWriter(path, shard="shard-000001", chunk_rows=8)
    for t in range(6):
        w2.append(roll[:, t], episode_metadata={"open": t})
    w2.flush()
    w2._rec.files.release()  # abandon it: COMMIT keeps the open episodes, like a killed writer


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "store"
    build_store(path)
    return path


def _json_edit(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        data = json.loads(p.read_text())
        fn(data)
        p.write_text(json.dumps(data))

    return edit


def _truncate(n: Callable[[int], int]) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        os.truncate(p, n(p.stat().st_size))

    return edit


def _flip(seed: int) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        data = bytearray(p.read_bytes())
        rng = random.Random(seed)
        for _ in range(1 + seed % 3):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(data))

    return edit


def _records(edit_record: Callable[[list[int]], None]) -> Callable[[Path], None]:
    rec = struct.Struct("<8q")

    def edit(p: Path) -> None:
        data = bytearray(p.read_bytes())
        fields = list(rec.unpack_from(data, 0))
        edit_record(fields)
        rec.pack_into(data, 0, *fields)
        p.write_bytes(bytes(data))

    return edit


def _set(key: str, value) -> Callable[[dict], None]:
    def fn(d: dict) -> None:
        d[key] = value

    return fn


def _schema_shape(shape) -> Callable[[dict], None]:
    def fn(d: dict) -> None:
        d["entries"][0]["shape"] = shape

    return fn


def _stream(i: int, value: int) -> Callable[[dict], None]:
    def fn(d: dict) -> None:
        d["streams"][0][i] = value

    return fn


# (name, file, edit, whether the error must name that very file)
def _cases(outside: Path) -> list[tuple[str, Path, Callable[[Path], None], bool]]:
    cases = []
    for f in FILES:
        cases += [
            (f"{f}-empty", f, _truncate(lambda n: 0), True),
            (f"{f}-half", f, _truncate(lambda n: n // 2), True),
            (f"{f}-short1", f, _truncate(lambda n: n - 1), True),
            (f"{f}-deleted", f, lambda p: p.unlink(), False),
        ]
        cases += [(f"{f}-flip{s}", f, _flip(s), False) for s in range(5)]
    commit, schema = SHARD / "COMMIT", SHARD / "schema.json"
    index = SHARD / "episodes.bin"
    cases += [
        ("future-dataset", Path("dataset.json"), _json_edit(_set("version", 99)), True),
        ("future-commit", commit, _json_edit(_set("version", 99)), True),
        ("garbage-commit", commit, lambda p: p.write_bytes(os.urandom(300)), True),
        ("commit-list", commit, lambda p: p.write_text("[1, 2]"), True),
        ("huge-shape", schema, _json_edit(_schema_shape([2**30, 2**30])), False),
        ("huge-shape16", schema, _json_edit(_schema_shape([2**31 - 1] * 16)), False),
        ("neg-shape", schema, _json_edit(_schema_shape([-1])), True),
        ("huge-batch", schema, _json_edit(_set("batch_shape", [2**31 - 1] * 16)), False),
        ("bad-dtype", schema, _json_edit(lambda d: d["entries"][0].update(dtype="object")), True),
        ("dotdot-key", schema, _json_edit(lambda d: d["entries"][0].update(key=[".."])), True),
        ("abs-key", schema, _json_edit(lambda d: d["entries"][0].update(key=["/etc"])), True),
        ("huge-episodes", commit, _json_edit(_set("episodes", 2**60)), False),
        ("huge-chunk-rows", commit, _json_edit(_set("chunk_rows", 2**60)), False),
        ("huge-meta-bytes", commit, _json_edit(_set("episode_meta_bytes", 2**60)), False),
        ("huge-next-row", commit, _json_edit(_stream(0, 2**61)), False),
        ("huge-transitions", commit, _json_edit(_stream(1, 2**61)), False),
        (
            "huge-open-episode",
            commit,
            _json_edit(
                lambda d: d["streams"][0].__setitem__(slice(0, 5), [2**61, 9, 0, 2**61 - 5, 0])
            ),
            False,
        ),
        ("rec-huge-steps", index, _records(lambda r: r.__setitem__(2, 2**60)), False),
        ("rec-neg-start", index, _records(lambda r: r.__setitem__(1, -5)), False),
        ("rec-bad-stream", index, _records(lambda r: r.__setitem__(0, 7)), False),
        (
            "rec-huge-meta",
            index,
            _records(lambda r: r.__setitem__(slice(5, 7), [0, 2**40])),
            False,
        ),
        ("rec-neg-meta", index, _records(lambda r: r.__setitem__(slice(5, 7), [-7, 10])), False),
    ]
    # Symlinks out of the store, and files that are not regular files.
    chunk = SHARD / "streams" / "0" / "chunk-000000" / "observation.memmap"

    def link_out(target: Path) -> Callable[[Path], None]:
        def edit(p: Path) -> None:
            p.unlink()
            p.symlink_to(target)

        return edit

    def shard_link_out(p: Path) -> None:
        shutil.copytree(p, outside / "shard-copy", dirs_exist_ok=True)
        shutil.rmtree(p)
        p.symlink_to(outside / "shard-copy")

    def chunk_dir(p: Path) -> None:
        p.unlink()
        p.mkdir()

    def fifo(p: Path) -> None:
        p.unlink()
        os.mkfifo(p)

    cases += [
        ("symlink-chunk", chunk, link_out(outside / "big.bin"), True),
        ("symlink-chunk-devzero", chunk, link_out(Path("/dev/zero")), True),
        ("symlink-commit", commit, link_out(outside / "COMMIT"), True),
        ("symlink-dataset", Path("dataset.json"), link_out(outside / "dataset.json"), True),
        ("symlink-shard", SHARD, shard_link_out, True),
        ("chunk-is-dir", chunk, chunk_dir, True),
        ("chunk-is-fifo", chunk, fifo, True),
    ]
    return cases


def test_damaged_stores_raise_trlrec_errors_naming_the_file(worker, template, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"\x01" * 2**16)
    shutil.copy(template / SHARD / "COMMIT", outside / "COMMIT")
    shutil.copy(template / "dataset.json", outside / "dataset.json")
    cases = _cases(outside)
    paths, meta = [], {}
    for i, (name, rel, edit, exact) in enumerate(cases):
        store = tmp_path / f"case{i}"
        shutil.copytree(template, store, symlinks=True)
        edit(store / rel)
        paths.append(str(store))
        meta[str(store)] = (name, rel, exact)
    results = worker.call({"op": "probe", "paths": paths, "timeout": 20}, timeout=600)["results"]
    failures, errors = [], 0
    for res in results:
        name, rel, exact = meta[res["path"]]
        if res["status"] == "crash":
            failures.append(f"{name}: the reader died (signal {res['signal']}) or hung")
        elif res["status"] == "error":
            errors += 1
            if not res["trlrec"]:
                failures.append(f"{name}: {res['type']} is not a trlrec error: {res['msg']}")
            elif res["path"] not in res["msg"] and res["path"] not in res["msg"].replace(
                os.path.realpath(res["path"]), res["path"]
            ):
                failures.append(f"{name}: the message names no file of the store: {res['msg']}")
            elif exact and rel.name not in res["msg"]:
                failures.append(f"{name}: the message does not name {rel.name}: {res['msg']}")
        elif name.startswith(("symlink", "future", "huge", "neg", "bad", "dotdot", "abs")):
            failures.append(f"{name}: read without complaint ({res})")
    assert not failures, "\n".join(failures)
    assert errors >= len(cases) // 2
