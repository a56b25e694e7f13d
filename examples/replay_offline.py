"""Offline RL input: a recorded dataset as a TorchRL replay buffer, and an episode on film.

    python examples/replay_offline.py --out runs                # records a small dataset first
    python examples/replay_offline.py --data runs/x/transitions # or uses yours

Samples come straight from the store's memory maps (nothing is copied but the sampled
rows); with ``--slice-len`` they are sub-trajectories that never cross an episode.
The first episode's stored frames are encoded to ``<out>/<exp_name>/episode_0.mp4``
with the function behind ``trlrec video``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torchrl.envs import GymEnv

from trlrec import PixelRenderTransform, TensorDictRecorder, TrajectoryReader
from trlrec.cli.video import export_video


@dataclass
class Args:
    """Command-line options (``--exp-name``...), CleanRL style."""

    exp_name: str = "replay_offline"
    """the experiment's directory under --out"""
    data: str = ""
    """a store to read; empty: record CartPole with small frames first"""
    record_steps: int = 120
    """steps to record when --data is empty"""
    batch_size: int = 64
    """transitions per sample"""
    slice_len: int = 8
    """length of the sampled sub-trajectories"""
    updates: int = 20
    """samples to draw"""
    seed: int = 0
    """seed of torch and of the environment"""
    out: str = "runs"
    """where experiments go"""


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default
        )
    return Args(**vars(parser.parse_args(argv)))


def record_dataset(path: Path, steps: int, seed: int) -> None:
    """CartPole transitions with 100x150 frames under "pixels" (about 45 kB a step)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = GymEnv("CartPole-v1", render_mode="rgb_array")
    env.set_seed(seed)
    env = env.append_transform(PixelRenderTransform(preproc=lambda img: img[::4, ::4].copy()))
    with TensorDictRecorder(path, metadata={"env_id": "CartPole-v1"}) as rec:
        env.append_transform(rec).rollout(steps, break_when_any_done=False)
    env.close()


def main(args: Args) -> dict[str, object]:
    torch.manual_seed(args.seed)
    run = Path(args.out) / args.exp_name
    data = Path(args.data) if args.data else run / "transitions"
    if not args.data and not data.exists():
        record_dataset(data, args.record_steps, args.seed)

    reader = TrajectoryReader(data)
    rb = reader.as_replay_buffer(batch_size=args.batch_size, slice_len=args.slice_len)
    mean_reward = 0.0
    for _ in range(args.updates):
        batch = rb.sample()  # [batch_size]: batch_size // slice_len slices, end to end
        slices = batch.reshape(-1, args.slice_len)
        assert (slices["episode"] == slices["episode"][:, :1]).all()  # never across episodes
        mean_reward += batch["next", "reward"].mean().item() / args.updates
        # a learner would compute its loss on `slices` here
    print(
        f"{reader.num_steps} transitions, {reader.num_episodes} episodes; {args.updates} "
        f"samples of {tuple(batch.shape)}, mean reward {mean_reward:.3f}"
    )

    video, frames = export_video(reader, run / "episode_0.mp4", key="pixels", episode=0)
    print(f"episode 0: {frames} frames -> {video}")
    return {"dataset": data, "video": video, "frames": frames, "sample": batch}


if __name__ == "__main__":
    main(parse_args())
