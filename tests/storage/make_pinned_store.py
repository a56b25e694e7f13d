"""Regenerate tests/data/store_v1 (run only when the format version changes).

python -m tests.storage.make_pinned_store
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.conftest import StubEnv
from trlrec import TrajectoryWriter

PINNED = Path(__file__).resolve().parent.parent / "data" / "store_v1"


def pinned_rollout() -> torch.Tensor:
    """The rollout stored in the pinned store: 2 sub-envs, episodes of 3 and 4 steps."""
    torch.manual_seed(7)
    env = StubEnv(episode_lengths=(3, 4), batch_size=(2,), pixels=(2, 2, 3))
    return env.rollout(9, break_when_any_done=False)


def main() -> None:
    shutil.rmtree(PINNED, ignore_errors=True)
    rollout = pinned_rollout()
    with TrajectoryWriter(PINNED, metadata={"pinned": True}, chunk_rows=8, shard="s0") as w:
        for t in range(rollout.shape[1]):
            w.append(rollout[:, t], episode_metadata=[{"t": t}, None])
    for lock in PINNED.rglob("LOCK"):
        lock.unlink()


if __name__ == "__main__":
    main()
