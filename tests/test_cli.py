"""The trlrec command: record, info, video, verify; errors are one line and an exit status."""

from __future__ import annotations

import io
import json
import os
import runpy
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from trlrec import TrajectoryReader, TrajectoryWriter
from trlrec.cli import main
from trlrec.cli.progress import Progress


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_error_line(err, *needles):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def store(tmp_path, stub_env_cls):
    """30 steps of 5-step episodes with (6, 8, 3) uint8 pixels."""
    env = stub_env_cls(episode_lengths=(5,), pixels=(6, 8, 3))
    with TrajectoryWriter(
        tmp_path / "store", shard="shard-000000", metadata={"agent": "stub"}
    ) as w:
        w.extend(env.rollout(32, break_when_any_done=False))
    return tmp_path / "store"


def chunk_dir(path: Path) -> Path:
    return path / "shards" / "shard-000000" / "streams" / "0" / "chunk-000000"


TRLREC = Path(sys.executable).with_name("trlrec")  # the console script a user runs


def cli(*argv, cwd=None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """``trlrec ARGV`` in a subprocess, as a user runs it (PYTHONPATH is inherited)."""
    done = subprocess.run(
        [str(TRLREC), *map(str, argv)],
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def failed_with(done, *needles):
    """The command failed as docs/CLI.md promises: exit 2, one line on stderr."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    one_error_line(done.stderr, *needles)


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """``trlrec record --pixels --steps 12`` (no --video): the run directory."""
    out = tmp_path_factory.mktemp("pixel_run")
    done = cli("record", "--pixels", "--steps", 12, "--seed", 1, "--out", out)
    assert done.returncode == 0, done.stderr
    (run_dir,) = out.iterdir()
    return run_dir


# ---------------------------------------------------------------- record
def test_record_defaults_to_cartpole_and_never_overwrites(tmp_path, capsys):
    code, out, _ = run(capsys, "record", "--steps", 30, "--out", tmp_path, "--seed", 0)
    assert code == 0
    assert "recorded 30 steps" in out
    assert "mean return" in out
    code, _, _ = run(capsys, "record", "--steps", 5, "--out", tmp_path)
    runs = sorted(p for p in tmp_path.iterdir())
    assert len(runs) == 2
    assert all(p.name.startswith("CartPole-v1-") for p in runs)
    r = TrajectoryReader(runs[0] / "transitions")
    assert r.num_steps == 30
    assert r.metadata["env_id"] == "CartPole-v1"
    assert str(runs[0] / "transitions") in out
    keys = {e.key for e in r.shards[0].schema.entries}
    assert ("pixels",) not in keys


def test_record_video_writes_a_decodable_mp4(tmp_path, capsys):
    code, out, _ = run(capsys, "record", "--steps", 12, "--video", "--out", tmp_path, "--seed", 3)
    assert code == 0
    (video,) = tmp_path.glob("*/videos/*.mp4")
    assert video.name == "rollout_12.mp4"  # every frame, named for the env frame of the dump
    assert f"video      {video}" in out
    frames = iio.imread(video)
    episodes = TrajectoryReader(next(tmp_path.glob("*/transitions"))).num_episodes
    assert 12 <= frames.shape[0] <= 12 + episodes  # each step, plus each reset frame
    assert frames.shape[1:] == (400, 600, 3)
    assert frames.std() > 1  # not a blank video


def test_record_with_a_policy_from_a_file(tmp_path, capsys):
    policy = tmp_path / "pol.py"
    policy.write_text(
        "import torch\ndef left(td):\n    td['action'] = torch.tensor([1, 0])\n    return td\n"
    )
    code, _, _ = run(capsys, "record", "--steps", 8, "--out", tmp_path / "runs", "--policy",
                     f"{policy}:left")  # fmt: skip
    assert code == 0
    r = TrajectoryReader(next((tmp_path / "runs").glob("*/transitions")))
    actions = torch.cat([ep["action"] for ep in r.episodes])
    assert (actions == torch.tensor([1, 0])).all()
    assert r.metadata["policy"] == f"{policy}:left"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["NoSuchEnv-v9"], "cannot create the Gymnasium env 'NoSuchEnv-v9'"),
        (["--policy", "nocolon"], "--policy must be module:callable"),
        (["--policy", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
        (["--policy", "os:no_such_attr"], "'os' has no attribute 'no_such_attr'"),
        (["--policy", "os:sep"], "is a str, not a callable"),
        (["--policy", "missing.py:f"], "no such file"),
        (["--steps", "0"], "--steps must be a positive int"),
        (["--fps", "10"], "--fps 10.0 is the frame rate of the video: add --video"),
    ],
)
def test_record_errors(tmp_path, capsys, argv, needle):
    code, _, err = run(capsys, "record", *argv, "--out", tmp_path)
    assert code == 2
    one_error_line(err, "trlrec record: error:", needle)


def test_record_pixels_keeps_the_frames_and_makes_no_video_dir(pixel_run):
    r = TrajectoryReader(pixel_run / "transitions")
    pixels = next(e for e in r.shards[0].schema.entries if e.key == ("pixels",))
    assert (pixels.role, pixels.shape, pixels.dtype) == ("state", (400, 600, 3), torch.uint8)
    assert r.episodes[0]["pixels"].float().std() > 1  # real renders, not zeros
    assert r.metadata["pixels"] is True
    assert not (pixel_run / "videos").exists()  # no --video: nothing made for one
    assert not (pixel_run / "video_spool").exists()


def test_record_failing_before_a_step_leaves_no_run_directory(tmp_path):
    done = cli("record", "--video", "--fps", 0, "--steps", 3, "--out", tmp_path)
    failed_with(done, "trlrec record: error:", "fps must be a positive number, got 0", "removed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("    raise RuntimeError('kaboom')", "the policy raised RuntimeError at step 0: kaboom"),
        ("    return None", "the policy returned None at step 0"),
    ],
)
def test_record_a_policy_that_fails_is_one_line_and_no_debris(tmp_path, body, needle):
    (tmp_path / "pol.py").write_text(f"def act(td):\n{body}\n")
    done = cli("record", "--policy", "pol.py:act", "--out", "runs", cwd=tmp_path)
    failed_with(done, "trlrec record: error: --policy pol.py:act:", needle)
    assert list((tmp_path / "runs").iterdir()) == []


def test_record_a_policy_failing_later_keeps_what_was_recorded(tmp_path):
    (tmp_path / "pol.py").write_text(
        "import torch\n"
        "calls = []\n"
        "def act(td):\n"
        "    calls.append(1)\n"
        "    if len(calls) > 7:\n"
        "        raise ValueError('tired')\n"
        "    td['action'] = torch.tensor([1, 0])\n"
        "    return td\n"
    )
    done = cli("record", "--policy", "pol.py:act", "--out", "runs", cwd=tmp_path)
    failed_with(done, "at step 7: tired", "7 steps recorded before it are kept in runs/")
    (dataset,) = (tmp_path / "runs").glob("*/transitions")
    assert TrajectoryReader(dataset).num_steps == 7


def test_record_out_pointing_at_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    done = cli("record", "--steps", 2, "--out", tmp_path / "taken")
    failed_with(done, f"--out '{tmp_path / 'taken'}' is a file")
    assert (tmp_path / "taken").read_text() == "x"


def test_ctrl_c_keeps_the_steps_and_says_where(tmp_path):
    proc = subprocess.Popen(
        [str(TRLREC), "record", "--steps", "10000000", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/transitions/shards/*/COMMIT")):  # recording has begun
            assert time.monotonic() < deadline
            assert proc.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    (dataset,) = tmp_path.glob("*/transitions")
    r = TrajectoryReader(dataset)
    assert 0 < r.num_steps < 10_000_000
    one_error_line(
        err,
        f"trlrec record: interrupted: {r.num_steps} steps ({r.num_episodes} episodes) "
        f"kept in {dataset}",
    )
    assert f"recorded {r.num_steps} steps" in out
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("    return td", "the policy returned no action at step 0; a TorchRL policy returns"),
        (
            "    td['action'] = torch.zeros(3, 5)\n    return td",
            "stepping the env with its action failed at step 0",
        ),
    ],
)
def test_record_a_policy_without_a_usable_action(tmp_path, capsys, body, needle):
    (tmp_path / "pol.py").write_text(f"import torch\ndef act(td):\n{body}\n")
    code, _, err = run(
        capsys, "record", "--policy", tmp_path / "pol.py:act", "--out", tmp_path / "r"
    )
    assert code == 2
    one_error_line(err, "trlrec record: error: --policy", needle, "nothing was recorded")
    assert list((tmp_path / "r").iterdir()) == []


# ------------------------------------------------------------------ info
def test_info_text_and_json(store, capsys):
    code, out, _ = run(capsys, "info", store)
    assert code == 0
    assert "steps      32" in out
    assert "episodes   7 (6 done, 1 cut, 0 open)" in out
    assert "pixels" in out
    assert '"agent": "stub"' in out
    code, out, _ = run(capsys, "info", store, "--json")
    assert code == 0
    info = json.loads(out)
    r = TrajectoryReader(store)
    returns = [float(ep["next", "reward"].double().sum()) for ep in r.episodes]
    assert info["steps"] == 32
    assert info["episodes"] == 7
    assert info["return"]["mean"] == pytest.approx(sum(returns) / 7)
    assert info["return"]["max"] == pytest.approx(max(returns))
    assert info["return_done"]["min"] == pytest.approx(min(returns[:6]))
    assert info["length"] == {"mean": 32 / 7, "min": 2.0, "max": 5.0}
    pixels = next(k for k in info["keys"] if k["key"] == "pixels")
    assert {k: pixels[k] for k in ("key", "role", "shape", "dtype")} == {
        "key": "pixels", "role": "state", "shape": [6, 8, 3], "dtype": "uint8"
    }  # fmt: skip
    reward = {"key": "next/reward", "role": "next", "shape": [1], "dtype": "float32"}
    assert reward.items() <= next(k for k in info["keys"] if k["key"] == "next/reward").items()
    assert info["metadata"] == {"agent": "stub"}
    assert info["bytes_on_disk"] > 0
    assert info["bytes_apparent"] > 0
    obs = next(k for k in info["keys"] if k["key"] == "pixels")
    assert obs["bytes_raw"] >= 32 * 6 * 8 * 3
    assert obs["bytes_raw"] % (6 * 8 * 3) == 0
    assert obs["bytes_on_disk"] > 0
    assert obs["ratio"] == pytest.approx(obs["bytes_raw"] / obs["bytes_on_disk"])
    assert info["shards"][0]["episodes"] == 7


def test_info_errors(tmp_path, store, capsys):
    code, _, err = run(capsys, "info", tmp_path / "missing")
    assert code == 2
    one_error_line(err, "does not exist")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    code, _, err = run(capsys, "info", tmp_path / "plain")
    assert code == 2
    one_error_line(err, "is not a trlrec store")
    reward = chunk_dir(store) / "next" / "reward.memmap"
    os.truncate(reward, 8)
    code, _, err = run(capsys, "info", store)
    assert code == 2
    one_error_line(err, "reward.memmap", "truncated")
    (store / "shards" / "shard-000000" / "COMMIT").write_text("{not json")
    code, _, err = run(capsys, "info", store)
    assert code == 2
    one_error_line(err, "COMMIT")


@pytest.mark.parametrize("argv", [["info"], ["info", "--json"]])
def test_a_closed_pipe_ends_quietly(store, argv):
    """``trlrec info STORE | head -n 2``: the reader is gone before trlrec writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = cli(*argv, store, stdout=write)
    finally:
        os.close(write)
    assert done.returncode == 141
    assert done.stderr == ""


def test_a_pipe_to_head_prints_the_first_lines(store):
    done = subprocess.run(
        f"'{TRLREC}' info '{store}' | head -n 2",
        shell=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout == f"store      {store}\nformat     trlrec v1\n"
    assert done.stderr == ""


# ----------------------------------------------------------------- video
def test_video_writes_what_the_extension_says(pixel_run, tmp_path):
    store = pixel_run / "transitions"
    steps = TrajectoryReader(store).episodes[0].shape[0]
    done = cli("video", store, "-o", tmp_path / "ep0.gif")
    assert done.returncode == 0, done.stderr
    assert f"wrote {steps + 1} frames to {tmp_path / 'ep0.gif'}" in done.stdout
    assert (tmp_path / "ep0.gif").read_bytes()[:6] == b"GIF89a"
    frames = iio.imread(tmp_path / "ep0.gif", plugin="pillow", mode="RGB")
    assert frames.shape == (steps + 1, 400, 600, 3)
    stored = TrajectoryReader(store).episodes[0]["pixels"].numpy()
    assert np.abs(frames[0].astype(int) - stored[0]).mean() < 8  # a palette, near the frame


def test_video_of_next_pixels_is_the_next_frames(pixel_run, tmp_path):
    store = pixel_run / "transitions"
    done = cli("video", store, "--key", "next/pixels", "-o", tmp_path / "next.mp4")
    assert done.returncode == 0, done.stderr
    ep = TrajectoryReader(store).episodes[0]
    frames = iio.imread(tmp_path / "next.mp4")
    assert frames.shape == (ep.shape[0], 400, 600, 3)
    want = ep["next", "pixels"].numpy().astype(int)
    assert np.abs(frames.astype(int) - want).mean() < 3  # H.264 at crf 18


def test_video_help_says_the_default_key():
    done = cli("video", "--help")
    assert done.returncode == 0
    assert "default pixels" in " ".join(done.stdout.split())


def test_video_of_hwc_uint8_frames(store, tmp_path, capsys):
    out_file = tmp_path / "ep.mp4"
    code, out, _ = run(capsys, "video", store, "--key", "pixels", "--episode", 1, "-o", out_file)
    assert code == 0
    assert f"wrote 6 frames to {out_file}" in out
    frames = iio.imread(out_file)
    assert frames.shape == (6, 6, 8, 3)  # T + 1 observations of (6, 8, 3)
    code, out, _ = run(capsys, "video", store, "--episode", -1, "-o", tmp_path / "last.mp4")
    assert "wrote 3 frames" in out


def test_video_of_chw_float_frames_with_odd_size_keeps_content(tmp_path, capsys):
    with TrajectoryWriter(tmp_path / "s") as w:
        for t in range(6):
            w.append(
                TensorDict(
                    {
                        "frame": torch.full((3, 5, 7), t / 10),
                        "action": torch.tensor([0]),
                        "next": {
                            "frame": torch.full((3, 5, 7), (t + 1) / 10),
                            "reward": torch.ones(1),
                            "done": torch.tensor([t == 5]),
                        },
                    },
                    batch_size=[],
                )
            )
    out_file = tmp_path / "f.mp4"
    code, _, _ = run(capsys, "video", tmp_path / "s", "--key", "frame", "-o", out_file, "--fps", 10)
    assert code == 0
    frames = iio.imread(out_file)
    assert frames.shape == (7, 6, 8, 3)  # odd sizes padded by one pixel, not rescaled
    means = frames.reshape(7, -1).mean(1)
    assert np.allclose(means, [255 * t / 10 for t in range(7)], atol=4)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--key", "nope"], "key 'nope' is not in the store; it has ["),
        (["--episode", "99"], "error: episode 99 is out of range: the store has 7 episodes"),
        (["--key", "observation"], "has frames of shape (4,)"),
        (["--key", "next/observation"], "has frames of shape (4,)"),
        (["--key", "next/nope"], "key 'next/nope' is not in the store"),
        (["-o", "x.avi"], "the extension '.avi' is not one trlrec writes; name the file with"),
        (["-o", "x"], "the extension '(none)' is not one trlrec writes"),
    ],
)
def test_video_errors(store, tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "video", store, "-o", "x.mp4", *argv)
    assert code == 2
    one_error_line(err, "trlrec video: error:", needle)
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]  # nothing written


# ---------------------------------------------------------------- verify
def test_verify_a_sound_store(store, capsys):
    code, out, _ = run(capsys, "verify", store)
    assert code == 0
    assert out.startswith(f"OK {store}: 1 shard(s), 7 episodes, 32 steps")


def test_verify_reports_short_and_missing_files(store, capsys):
    os.truncate(chunk_dir(store) / "observation.memmap", 100)
    (chunk_dir(store) / "action.memmap").unlink()
    code, out, _ = run(capsys, "verify", store)
    assert code == 1
    assert out.startswith(f"DAMAGED {store}: 2 problem(s)")
    assert "observation.memmap' is 100 bytes, expected" in out
    assert "action.memmap' is missing" in out


def test_verify_reports_a_damaged_index(store, capsys):
    episodes = store / "shards" / "shard-000000" / "episodes.bin"
    data = bytearray(episodes.read_bytes())
    struct.pack_into("<q", data, 8, 2)  # episode 0 now starts at row 2, inside itself
    episodes.write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", store)
    assert code == 1
    assert "the index" in out


def test_verify_reports_done_flags_that_disagree(store, capsys):
    done = np.memmap(chunk_dir(store) / "done.memmap", dtype=np.bool_, mode="r+")
    done[2] = True  # mid-episode 0
    done.flush()
    del done
    code, out, _ = run(capsys, "verify", store)
    assert code == 1
    assert "episode 0 is marked done but its done flags are set before its last step" in out


def test_verify_reports_a_broken_commit_and_refuses_non_stores(store, tmp_path, capsys):
    (store / "shards" / "shard-000000" / "COMMIT").write_text("[]")
    code, out, _ = run(capsys, "verify", store)
    assert code == 1
    assert "shard-000000:" in out
    code, _, err = run(capsys, "verify", tmp_path / "missing")
    assert code == 2
    one_error_line(err, "trlrec verify: error:", "does not exist")


# ------------------------------------------------------- entry points, progress
def test_console_script(store):
    exe = Path(sys.executable).with_name("trlrec")
    done = subprocess.run(
        [str(exe), "info", str(store / "nope")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "does not exist" in done.stderr


def test_python_dash_m(store, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["trlrec", "verify", str(store)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("trlrec", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("OK ")


def test_progress_only_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        with Progress("work", 3, stream=stream) as bar:
            for i in range(3):
                bar.update(i + 1)
    assert "work: 3/3" in tty.getvalue()
    assert plain.getvalue() == ""
