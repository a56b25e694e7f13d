"""A writer killed with SIGKILL leaves a store that opens with its committed prefix exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from trlrec import TrajectoryReader, TrajectoryWriter

_SCRIPT = r"""
import sys, torch
from tensordict import TensorDict
from trlrec import TrajectoryWriter
path, steps = sys.argv[1], int(sys.argv[2])
w = TrajectoryWriter(path, chunk_rows=5, stage_steps=2, commit_every_steps=3)
for t in range(steps):
    w.append(TensorDict({
        "observation": torch.full((2,), float(t)),
        "action": torch.tensor([t]),
        "next": {"observation": torch.full((2,), float(t + 1)),
                 "reward": torch.tensor([t * 0.5]),
                 "done": torch.tensor([False])},
    }, batch_size=[]))
    if t == 40:
        print("ready", flush=True)
"""


def _expected_prefix(ep):
    t = torch.arange(len(ep))
    assert torch.equal(ep["observation"], t[:, None].float().expand(-1, 2))
    assert torch.equal(ep["next", "observation"], (t[:, None] + 1).float().expand(-1, 2))
    assert torch.equal(ep["action"], t[:, None])
    assert torch.equal(ep["next", "reward"], t[:, None] * 0.5)


def test_sigkill_leaves_the_committed_prefix(tmp_path):
    for i, delay in enumerate([0.0, 0.05, 0.2]):
        path = tmp_path / f"k{i}"
        proc = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, str(path), "100000000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        r = TrajectoryReader(path)
        assert r.num_steps >= 39  # commits every 3 steps: at most 2 uncommitted
        assert r.num_episodes == 1
        assert r.episode_info(0)["flags"] == 4  # open: the writer died
        _expected_prefix(r.episodes[0])
        # a new writer appends after the crash (new shard), the old data intact
        with TrajectoryWriter(path) as w:
            w.extend(r.episodes[0][:3].clone())
        r2 = TrajectoryReader(path)
        assert r2.num_steps == r.num_steps + 3
        _expected_prefix(r2.episodes[0])
