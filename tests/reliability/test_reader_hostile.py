"""Hostile metadata files and what the reader and ``trlrec verify`` make of damaged shards.

Each probe runs in a forked child of the worker with bounded memory and time (see
``test_hostile.py``): a hang, a crash or an error that is not a ``TrlrecError`` naming
the file fails the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from tests.reliability._worker import rollout
from tests.reliability.test_hostile import SHARD, build_store
from tests.storage.helpers import assert_td_identical
from trlrec import TrajectoryReader, TrajectoryWriter
from trlrec.cli import main
from trlrec.errors import (
    ConfigError,
    CorruptStoreError,
    IndexTypeError,
    OutOfRangeError,
    StoreError,
    UnsupportedDataError,
)
from trlrec.replay import StoreStorage
from trlrec.storage.format import EPISODE_RECORD_BYTES, MAX_EPISODE_META_BYTES, EpisodeRecord

OPEN_SHARD = Path("shards") / "shard-000001"  # the shard left with open episodes
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "store"
    build_store(path)
    return path


def _fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


def _directory(p: Path) -> None:
    p.unlink()
    p.mkdir()


def _deep(p: Path) -> None:
    p.write_text(DEEP)


def _json(fn: Callable[[dict, Path], None]) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        data = json.loads(p.read_text())
        fn(data, p)
        p.write_text(json.dumps(data))

    return edit


def _huge_int(p: Path) -> None:
    data = json.loads(p.read_text())
    data["seq"] = "@@"
    p.write_text(json.dumps(data).replace('"@@"', "1" * 5000))


def _open_meta_values(data: dict, p: Path) -> None:
    data["open_meta"] = {"0": 5, "1": "x"}


def _prefix_keys(data: dict, p: Path) -> None:
    """Add a column ``observation/x`` beside ``observation``, with its files in every chunk."""
    data["entries"].append({"key": ["observation", "x"], "role": "state", "shape": [],
                            "dtype": "uint8"})  # fmt: skip
    for chunk in (p.parent / "streams").glob("*/chunk-*"):
        (chunk / "observation").mkdir()
        (chunk / "observation" / "x.memmap").write_bytes(bytes(8))


def _long_key(data: dict, p: Path) -> None:
    data["entries"][0]["key"] = ["a" * 300]


def _deep_episode_meta(p: Path) -> None:
    """Point episode 0 at a new, deeply nested metadata line (and commit its bytes)."""
    offset = p.stat().st_size
    with open(p, "a") as f:
        f.write(DEEP + "\n")
    index = p.parent / "episodes.bin"
    data = bytearray(index.read_bytes())
    struct.pack_into("<2q", data, 5 * 8, offset, len(DEEP))
    index.write_bytes(bytes(data))
    commit = p.parent / "COMMIT"
    record = json.loads(commit.read_text())
    record["episode_meta_bytes"] = offset + len(DEEP) + 1
    commit.write_text(json.dumps(record))


def _non_utf8_shard(p: Path) -> None:
    os.rename(os.fsencode(p), os.fsencode(p.parent) + b"/shard-\xff")


def _cases() -> list[tuple[str, Path, Callable[[Path], None], bool]]:
    """(name, file, edit, whether the message must name that very file)."""
    metadata = [
        SHARD / "COMMIT",
        SHARD / "schema.json",
        SHARD / "shard.json",
        OPEN_SHARD / "COMMIT",
    ]
    cases = [(f"fifo-{f}", f, _fifo, True) for f in metadata]
    cases += [(f"directory-{f}", f, _directory, True) for f in metadata]
    cases += [(f"directory-{f}", f, _directory, True) for f in (SHARD / "episodes.bin",)]
    cases += [(f"deep-{f}", f, _deep, True) for f in [Path("dataset.json"), *metadata]]
    cases += [
        ("huge-int-commit", SHARD / "COMMIT", _huge_int, True),
        ("open-meta-values", OPEN_SHARD / "COMMIT", _json(_open_meta_values), True),
        ("schema-prefix-keys", SHARD / "schema.json", _json(_prefix_keys), True),
        ("schema-long-key", SHARD / "schema.json", _json(_long_key), True),
        ("deep-episode-meta", SHARD / "episode_meta.jsonl", _deep_episode_meta, True),
        ("non-utf8-shard-name", OPEN_SHARD, _non_utf8_shard, False),
    ]
    return cases


def test_hostile_metadata_is_a_trlrec_error_naming_the_file(worker, template, tmp_path):
    cases = _cases()
    paths, meta = [], {}
    for i, (name, rel, edit, exact) in enumerate(cases):
        store = tmp_path / f"case{i}"
        shutil.copytree(template, store)
        edit(store / rel)
        paths.append(str(store))
        meta[str(store)] = (name, rel, exact)
    results = worker.call({"op": "probe", "paths": paths, "timeout": 20}, timeout=900)["results"]
    failures = []
    for res in results:
        name, rel, exact = meta[res["path"]]
        if res["status"] == "crash":
            failures.append(f"{name}: the reader died (signal {res['signal']}) or hung")
        elif res["status"] != "error":
            failures.append(f"{name}: read without complaint ({res})")
        elif not res["trlrec"]:
            failures.append(f"{name}: {res['type']} is not a trlrec error: {res['msg'][-600:]}")
        elif res["path"] not in res["msg"]:
            failures.append(f"{name}: the message names no file of the store: {res['msg']}")
        elif exact and rel.name not in res["msg"]:
            failures.append(f"{name}: the message does not name {rel.name}: {res['msg']}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", ["info", "verify"])
def test_the_cli_prints_one_line_for_a_fifo_commit(template, tmp_path, command):
    store = tmp_path / "store"
    shutil.copytree(template, store)
    _fifo(store / SHARD / "COMMIT")
    done = subprocess.run(
        [sys.executable, "-m", "trlrec", command, str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if command == "info":
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert "COMMIT' is a FIFO, not a regular file" in done.stderr
    else:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "COMMIT' is a FIFO, not a regular file" in done.stdout


def test_an_episode_index_out_of_range_is_a_trlrec_index_error(template):
    reader = TrajectoryReader(template)
    n = reader.num_episodes
    for bad in (n, 999, -n - 1):
        with pytest.raises(
            OutOfRangeError,
            match=rf"episode index {bad} is out of range: the store has {n} episodes",
        ) as info:
            reader.episodes[bad]
        assert isinstance(info.value, IndexError)  # code written against the builtin works
        with pytest.raises(OutOfRangeError, match=str(template)):
            reader.episode_info(bad)
    storage = StoreStorage(reader)
    with pytest.raises(OutOfRangeError, match="transition index out of range"):
        storage[len(storage)]


@pytest.mark.parametrize("bad", ["a", 1.0, True, None, torch.tensor(0.5), (0,)])
def test_an_episode_index_of_the_wrong_type_is_a_trlrec_type_error(template, bad):
    reader = TrajectoryReader(template)
    with pytest.raises(IndexTypeError, match="episode indices are ints") as info:
        reader.episodes[bad]
    assert isinstance(info.value, TypeError)  # code written against the builtin works


def test_numpy_and_torch_integers_index_episodes(template):
    reader = TrajectoryReader(template)
    first = reader.episodes[0]
    for i in (np.int64(0), torch.tensor(0), torch.tensor([0])):
        assert (reader.episodes[i] == first).all()


def test_a_commit_larger_than_its_streams_allow_is_refused_before_it_is_read(template, tmp_path):
    """A well-formed COMMIT whose open episode's metadata is 8 MiB: the schema's two streams
    allow ~2 MiB, so it is refused from its size alone, without parsing."""
    store = _copy(template, tmp_path)
    path = store / OPEN_SHARD / "COMMIT"
    commit = json.loads(path.read_text())
    commit["open_meta"] = {"0": {"x": "y" * 8 * 2**20}}
    path.write_text(json.dumps(commit))
    with pytest.raises(CorruptStoreError, match=r"COMMIT' is \d+ bytes, larger than the \d+"):
        TrajectoryReader(store)
    assert TrajectoryReader(store, on_damaged="skip").num_episodes > 0  # the other shard


def test_an_episode_with_more_metadata_than_a_writer_stores_is_damage(template, tmp_path):
    store = _copy(template, tmp_path)
    path = store / SHARD / "episodes.bin"
    records = bytearray(path.read_bytes())
    first = EpisodeRecord.unpack_from(records, 0)
    assert first.meta_offset >= 0  # the template's episodes of stream 0 have metadata
    damaged = dataclasses.replace(first, meta_length=MAX_EPISODE_META_BYTES + 1)
    records[:EPISODE_RECORD_BYTES] = damaged.pack()
    path.write_bytes(records)
    reader = TrajectoryReader(store)
    with pytest.raises(CorruptStoreError, match=r"more than the 1048576 a writer stores"):
        reader.episode_metadata(0)


def test_a_writer_refuses_episode_metadata_over_the_limit(tmp_path):
    w = TrajectoryWriter(tmp_path / "s")
    roll = rollout(0, 4, (4,))
    w.append(roll[0], episode_metadata={"ok": 1})
    with pytest.raises(UnsupportedDataError, match=r"episode metadata takes \d+ bytes as JSON"):
        w.append(roll[1], episode_metadata={"x": "y" * MAX_EPISODE_META_BYTES})
    w.append(roll[1])  # the refused step was not recorded; recording goes on
    w.close()
    assert TrajectoryReader(tmp_path / "s").num_steps == 2


# ------------------------------------------------------------------ damaged shards
def _copy(template: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(template, store)
    return store


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda s: (s / SHARD / "COMMIT").write_text("[1"), "COMMIT' is not valid JSON"),
        (lambda s: os.truncate(s / SHARD / "streams/1/chunk-000001/next/reward.memmap", 3),
         "reward.memmap' is 3 bytes, expected"),
        (lambda s: (s / SHARD / "schema.json").unlink(), "schema.json' is missing"),
    ],
)  # fmt: skip
def test_on_damaged_skip_reads_the_healthy_shards(template, tmp_path, damage, named):
    healthy = TrajectoryReader(template)
    store = _copy(template, tmp_path)
    damage(store)
    with pytest.raises(StoreError, match=named.split("'")[0]):
        list(TrajectoryReader(store).episodes)  # the default refuses the store (or an episode)
    reader = TrajectoryReader(store, on_damaged="skip")
    assert [s.name for s in reader.shards] == ["shard-000001"]
    assert list(reader.skipped) == ["shard-000000"]
    assert named in reader.skipped["shard-000000"]
    assert "skipped=['shard-000000']" in repr(reader)
    kept = healthy.shards[0].num_episodes
    assert reader.num_episodes == healthy.num_episodes - kept
    for i in range(reader.num_episodes):
        assert_td_identical(reader.episodes[i], healthy.episodes[kept + i])
        assert reader.episode_metadata(i) == healthy.episode_metadata(kept + i)
    assert TrajectoryReader(template, on_damaged="skip").skipped == {}
    with pytest.raises(ConfigError, match="on_damaged must be one of"):
        TrajectoryReader(store, on_damaged="ignore")


def _verify(store: Path, capsys) -> tuple[int, str]:
    code = main(["verify", str(store)])
    return code, capsys.readouterr().out


def test_verify_reports_each_shard(template, tmp_path, capsys):
    store = _copy(template, tmp_path)
    code, out = _verify(store, capsys)
    assert code == 0, out
    assert "shard shard-000000: OK, 13 episodes, 60 steps" in out
    assert "shard shard-000001: OK, " in out
    os.truncate(store / SHARD / "streams/0/chunk-000000/observation.memmap", 5)
    code, out = _verify(store, capsys)
    assert code == 1, out
    assert "shard shard-000000: DAMAGED, 1 problem(s)" in out
    assert "shard shard-000001: OK, " in out


def test_verify_tells_a_lost_commit_from_a_writer_that_never_committed(template, tmp_path, capsys):
    store = _copy(template, tmp_path)
    never = store / "shards" / "shard-000002"  # a writer that opened and wrote no commit
    never.mkdir()
    (never / "shard.json").write_text('{"version": 1, "metadata": {}, "pid": 1}')
    (never / "episodes.bin").touch()
    code, out = _verify(store, capsys)
    assert code == 0, out
    assert "shard shard-000002: never committed" in out
    (store / SHARD / "COMMIT").unlink()  # schema.json and a non-empty episodes.bin stay
    code, out = _verify(store, capsys)
    assert code == 1, out
    assert "COMMIT' is missing, but episodes.bin holds 832 bytes (13 episode records)" in out
    assert "shard shard-000000: DAMAGED" in out


VERIFY_MEMORY = """
import resource, sys

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

limit = status("VmSize") * 1024 + 3 * 2**29  # room to map the chunk, none to copy it 8 times
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch, tensordict
from trlrec.cli.verify import verify_store
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size (VmHWM) to the current one
before = status("VmRSS")
report = verify_store(sys.argv[1], progress=False)
print(report.problems, report.steps, status("VmHWM") - before)
"""


def test_verify_reads_a_big_chunk_in_bounded_blocks(tmp_path):
    """256 MiB of committed rows (a sparse chunk): verify reads them all in bounded memory."""
    obs = torch.zeros(3, 64 * 2**10, dtype=torch.uint8)
    rollout = TensorDict(
        {"obs": obs, "next": {"obs": obs, "done": torch.tensor([[False], [False], [True]])}},
        batch_size=[3],
    )
    store = tmp_path / "big"
    with TrajectoryWriter(store, shard="shard-000000", chunk_rows=4096) as w:
        w.extend(rollout)
    commit = store / "shards" / "shard-000000" / "COMMIT"
    record = json.loads(commit.read_text())
    record["streams"][0][0] = 4096  # every row of the chunk is committed (zeros)
    commit.write_text(json.dumps(record))
    out = subprocess.run(
        [sys.executable, "-c", VERIFY_MEMORY, str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    problems, steps, grew_kib = out.stdout.rsplit(" ", 2)
    assert problems == "[]", problems
    assert int(steps) == 3
    assert int(grew_kib) < 48 * 2**10, f"verify grew by {int(grew_kib) // 1024} MiB"


def test_verify_prints_a_shard_name_that_is_not_utf8(template, tmp_path):
    store = _copy(template, tmp_path)
    _non_utf8_shard(store / OPEN_SHARD)
    done = subprocess.run(
        [sys.executable, "-m", "trlrec", "verify", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "shard shard-\\xff: DAMAGED" in done.stdout
    assert "name is not valid UTF-8" in done.stdout
