"""The README's quickstart and shell commands, and FORMAT.md's snippet, run as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import torch

from trlrec import TrajectoryReader, TrajectoryWriter

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def quickstart() -> str:
    return re.search(r"## Quickstart.*?```python\n(.*?)```", README.read_text(), re.S).group(1)


def fresh_user_env() -> dict[str, str]:
    """The environment of a user who never set SDL_VIDEODRIVER and has no session bus."""
    env = dict(os.environ)
    for var in ("SDL_VIDEODRIVER", "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(var, None)
    return env


def test_quickstart_runs_clean_as_printed(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", quickstart()],
        cwd=tmp_path,
        env=fresh_user_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no "error: XDG_RUNTIME_DIR is invalid..."
    exp = tmp_path / "runs" / "cartpole"
    r = TrajectoryReader(exp / "transitions")
    assert r.num_steps == 200
    frames = iio.imread(exp / "videos" / "rollout_200.mp4")  # named as the README says
    assert frames.shape[0] == 200 + r.num_episodes  # every step, and each episode's reset
    returns = (exp / "scalars" / "transitions" / "return.csv").read_text().splitlines()
    done_eps = sum(bool(r.episode_info(i)["flags"] & 1) for i in range(r.num_episodes))
    assert len(returns) == done_eps  # TorchRL's layout: no header, one line per episode


def test_quickstart_with_an_episode_trigger_names_videos_for_their_episode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    code = quickstart()
    plain = 'VideoRecorder(logger, tag="rollout")'
    assert plain in code
    code = code.replace(
        plain, 'VideoRecorder(logger, tag="rollout", episode_trigger=lambda i: i % 2 == 0)'
    )
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    r = scope["r"]
    assert r.num_episodes > 4
    videos = tmp_path / "runs" / "cartpole" / "videos"
    want = sorted(f"rollout_ep{i}_200.mp4" for i in range(0, r.num_episodes, 2))
    assert sorted(p.name for p in videos.iterdir()) == want
    ep4 = iio.imread(videos / "rollout_ep4_200.mp4")
    assert ep4.shape[0] == r.episodes[4].shape[0] + 1  # the reset frame and each step
    assert set(scope["ep"].keys()) >= {"observation", "action", "next"}


def shell_blocks() -> list[str]:
    """The README's ```bash blocks, with ``./run main`` spelled as the ``run`` script runs it."""
    main = re.search(r'main\) exec "\$VENV/bin/trlrec" ([^"]*?) "\$@"', (ROOT / "run").read_text())
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            command = line.split("#")[0].strip() if " #" in line else line.strip()
            if command == "./run main":
                command = f".venv/bin/trlrec {main.group(1)}"
            elif command.startswith("./run "):  # ./run test / bench: the suite, the benchmark
                continue
            lines.append(command)
    return lines


def test_readme_shell_commands_run_as_printed(tmp_path):
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the venv ./run would have made
    lines = shell_blocks()
    assert any("trlrec video" in line for line in lines)
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=fresh_user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2  # ./run main, then record --pixels
    assert "recorded 500 steps" in done.stdout
    video = Path("runs") / runs[0].name / "videos" / "rollout_500.mp4"
    assert f"video      {video}" in done.stdout
    assert re.search(r"^steps      500$", done.stdout, re.M)  # trlrec info of the newest run
    assert re.search(rf"^OK runs/{runs[0].name}/transitions: 1 shard\(s\)", done.stdout, re.M)
    gif = tmp_path / "episode1.gif"
    assert gif.read_bytes()[:6] == b"GIF89a"
    ep1 = TrajectoryReader(runs[1] / "transitions").episodes[1]
    assert iio.imread(gif, plugin="pillow", mode="RGB").shape == (ep1.shape[0] + 1, 400, 600, 3)


def format_snippet() -> str:
    text = (ROOT / "docs" / "FORMAT.md").read_text()
    section = text.split("## Reading a chunk with plain tensordict", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_format_md_rebuilds_the_committed_transitions_without_trlrec(tmp_path, stub_env_cls):
    env = stub_env_cls(episode_lengths=(5, 7), batch_size=(2,), pixels=(2, 3, 3))
    with TrajectoryWriter(tmp_path / "s", chunk_rows=8) as w:  # episodes cross chunks
        w.extend(env.rollout(20, break_when_any_done=False))
    scope: dict = {}
    exec(compile(format_snippet(), "docs/FORMAT.md", "exec"), scope)
    (shard,) = (tmp_path / "s" / "shards").iterdir()
    plain = list(scope["committed_episodes"](shard))
    r = TrajectoryReader(tmp_path / "s")
    closed = [i for i in range(r.num_episodes) if not r.episode_info(i)["flags"] & 4]
    assert len(plain) == len(closed) > 4
    for ep, i in zip(plain, closed, strict=True):
        want = r.episodes[i]
        assert set(ep.keys(True, True)) == set(want.keys(True, True))
        for key in want.keys(True, True):
            assert ep[key].dtype == want[key].dtype
            assert torch.equal(ep[key], want[key]), (i, key)
