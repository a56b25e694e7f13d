"""Smoke-run each example in-process into tmp_path, with small sizes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

from trlrec import TrajectoryReader

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_record_cartpole(tmp_path):
    ex = load("record_cartpole")
    out = ex.main(ex.parse_args(["--steps", "40", "--out", str(tmp_path)]))
    reader = TrajectoryReader(out["dataset"])
    assert reader.num_steps == 40
    assert reader.metadata["steps"] == 40
    frames = iio.imread(out["video"])
    assert out["video"].name == "rollout_40.mp4"  # named for the env frame count at the dump
    assert frames.shape[0] == 40 + reader.num_episodes  # every step and each reset
    assert frames.shape[1:] == (200, 300, 3)
    assert out["dataset"].is_relative_to(tmp_path)


def test_record_collector(tmp_path):
    ex = load("record_collector")
    path = ex.main(
        ex.parse_args(["--total-frames", "256", "--frames-per-batch", "64", "--out", str(tmp_path)])
    )
    reader = TrajectoryReader(path)
    assert reader.num_steps == 256
    assert path.is_relative_to(tmp_path)
    assert (tmp_path / "record_collector" / "scalars" / "loss.csv").exists()


def test_replay_offline(tmp_path):
    ex = load("replay_offline")
    args = ["--record-steps", "40", "--updates", "3", "--batch-size", "16", "--slice-len", "4"]
    out = ex.main(ex.parse_args([*args, "--out", str(tmp_path)]))
    assert out["sample"].shape == (16,)
    reader = TrajectoryReader(out["dataset"])
    frames = iio.imread(out["video"])
    assert frames.shape[0] == out["frames"] == reader.episodes[0].shape[0] + 1
    assert frames.shape[1:] == (100, 150, 3)


@pytest.mark.parametrize("name", ["record_cartpole", "record_collector", "replay_offline"])
def test_examples_parse_their_defaults(name):
    ex = load(name)
    assert ex.parse_args([]) == ex.Args()
