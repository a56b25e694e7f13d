"""Regenerate tests/data/store_v1 or store_v4 (run only when the format version changes).

python -m tests.storage.make_pinned_store [--v4]

store_v4 holds the same rollout with every column compressed (COMMIT version 4: layout 3
files, whose blocks are compressed against a dictionary of the chunk's rows and whose
index checksums each frame). store_v2 (layout 1 files, frames checksumming their
content) and store_v3 (layout 2 files: no dictionary) were written by the trlrec of
versions 2 and 3 and can no longer be regenerated: they are kept as written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.conftest import StubEnv
from trlrec import TrajectoryWriter

PINNED = Path(__file__).resolve().parent.parent / "data" / "store_v1"
PINNED_V4 = PINNED.with_name("store_v4")


def pinned_rollout() -> torch.Tensor:
    """The rollout stored in the pinned store: 2 sub-envs, episodes of 3 and 4 steps."""
    torch.manual_seed(7)
    env = StubEnv(episode_lengths=(3, 4), batch_size=(2,), pixels=(2, 2, 3))
    return env.rollout(9, break_when_any_done=False)


def main(compressed: bool = False) -> None:
    path = PINNED_V4 if compressed else PINNED
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

    main(compressed="--v4" in sys.argv)
