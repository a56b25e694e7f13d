"""The README's quickstart runs as written (in a temporary directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    code = re.search(r"## Quickstart.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    r = scope["r"]
    assert r.num_steps == 200
    assert r.num_episodes >= 1
    assert (tmp_path / "runs" / "cartpole" / "videos" / "episode_0.mp4").stat().st_size > 0
    assert os.path.isdir(tmp_path / "runs" / "cartpole" / "transitions")
    assert set(scope["ep"].keys()) >= {"observation", "action", "next"}
