"""Regenerate tests/data/store_v1 or store_v3 (run only when the format version changes).

python -m tests.storage.make_pinned_store [--v3]

store_v3 holds the same rollout with every column compressed (COMMIT version 3: layout 2
files, whose index checksums each frame). store_v2 (layout 1 files, frames checksumming
their content) was written by the trlrec of version 2 and can no longer be regenerated:
it is kept as written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.conftest import StubEnv
from trlrec import TrajectoryWriter

PINNED = Path(__file__).resolve().parent.parent / "data" / "store_v1"
PINNED_V2 = PINNED.with_name("store_v2")
PINNED_V3 = PINNED.with_name("store_v3")


def pinned_rollout() -> torch.Tensor:
    """The rollout stored in the pinned store: 2 sub-envs, episodes of 3 and 4 steps."""
    torch.manual_seed(7)
    env = StubEnv(episode_lengths=(3, 4), batch_size=(2,), pixels=(2, 2, 3))
    return env.rollout(9, break_when_any_done=False)


def main(compressed: bool = False) -> None:
    path = PINNED_V3 if compressed else PINNED
    shutil.rmtree(path, ignore_errors=True)
    rollout = pinned_rollout()
    kw = {"compression": "zstd"} if compressed else {}
    with TrajectoryWriter(path, metadata={"pinned": True}, chunk_rows=8, shard="s0", **kw) as w:
        for t in range(rollout.shape[1]):
            w.append(rollout[:, t], episode_metadata=[{"t": t}, None])
    for lock in path.rglob("LOCK"):
        lock.unlink()


if __name__ == "__main__":
    import sys

    main(compressed="--v3" in sys.argv)
