"""Distinct user names give distinct files (issue 18): safe_name is one-to-one."""

from __future__ import annotations

import itertools
import string

import pytest
import torch
from tensordict import TensorDict

from trlrec import TensorDictRecorder, TrajectoryReader
from trlrec.errors import UnsafeNameError
from trlrec.loggers import CSVLogger
from trlrec.naming import safe_join, safe_name

COLLIDED = [("эпизод", "видео"), ("eval/return", "eval_return"), ("loss/actor", "loss_actor"),
            ("train/ep", "train_ep"), ("a b", "a_b"), ("a/b", "a%2Fb"), ("a  b", "a b"),
            ("x" * 300, "x" * 301), ("я" * 150 + "a", "я" * 150 + "b")]  # fmt: skip


@pytest.mark.parametrize(("a", "b"), COLLIDED)
def test_distinct_names_give_distinct_files(a, b):
    assert safe_name(a) != safe_name(b)


def test_names_are_one_to_one_over_many_odd_names():
    alphabet = ["a", "_", "/", " ", "%", ".", "-", "é", "ж", "\t", "~", "2", "F", "\\"]
    names = ["".join(p) for n in (1, 2, 3) for p in itertools.product(alphabet, repeat=n)]
    names = [n for n in names if set(n) != {"."}]
    out = {safe_name(n) for n in names}
    assert len(out) == len(names)
    for o in out:
        assert "/" not in o
        assert o not in (".", "..")


def test_unicode_stays_readable_and_long_names_fit_a_file_name(tmp_path):
    assert safe_name("эпизод") == "эпизод"
    assert safe_name("видео_1") == "видео_1"
    assert safe_name("eval_return") == "eval_return"
    assert set(safe_name("eval/return")) <= set(string.ascii_letters + "%2F_")
    for name in ["x" * 1000, "я" * 1000, "/" * 1000, "ж/" * 300]:
        out = safe_name(name)
        assert len(out.encode()) <= 200
        path = safe_join(tmp_path, name, "_123456789.mp4")
        path.write_bytes(b"")  # a file name of at most 255 bytes: no ENAMETOOLONG
        assert path.parent == tmp_path
    with pytest.raises(UnsafeNameError, match="only dots"):
        safe_name("...")


def test_loggers_keep_distinct_names_apart(tmp_path):
    """CSV scalars "loss/actor" and "loss_actor" land in two files, read back apart."""
    lg = CSVLogger("exp", log_dir=str(tmp_path))
    lg.log_scalar("loss/actor", 1.0, step=0)
    lg.log_scalar("loss_actor", 2.0, step=0)
    lg.log_scalar("ж" * 500, 3.0, step=0)  # 1000 bytes: no ENAMETOOLONG
    scalars = lg.experiment_dir / "scalars"
    files = sorted(p.relative_to(scalars).as_posix() for p in scalars.rglob("*.csv"))
    assert len(files) == 3, files  # TorchRL's layout: "loss/actor" is loss/actor.csv
    assert "loss/actor.csv" in files
    assert "loss_actor.csv" in files
    texts = {f: (scalars / f).read_text() for f in files}
    assert texts["loss/actor.csv"] == "0,1.0\n"
    assert texts["loss_actor.csv"] == "0,2.0\n"


def test_tensordict_recorders_with_colliding_tags_write_two_stores(tmp_path):
    lg = CSVLogger("exp", log_dir=str(tmp_path))
    tags = (("train/ep", 1.0), ("train_ep", 2.0))
    recs = [(TensorDictRecorder(logger=lg, tag=tag), v) for tag, v in tags]
    for rec, value in recs:
        td = TensorDict(
            {"observation": torch.tensor([[value]]),
             "next": {"observation": torch.tensor([[value]]), "done": torch.tensor([[True]])}},
            batch_size=[1],
        )  # fmt: skip
        rec.extend(td)
        rec.close()
    assert recs[0][0].path != recs[1][0].path
    for rec, value in recs:
        r = TrajectoryReader(rec.path)
        assert r.num_steps == 1
        assert r.episodes[0]["observation"].flatten().tolist() == [value]
