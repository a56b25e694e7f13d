"""Record CartPole with a random policy: every transition to a trlrec store, and an mp4.

    python examples/record_cartpole.py --steps 200 --out runs

Leaves ``<out>/<exp_name>/transitions`` (read it with ``trlrec info``) and
``<out>/<exp_name>/videos/rollout_<frames>.mp4`` (every frame, named for the env frame
count at the dump). Running it again adds a shard and a video.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torchrl.envs import GymEnv

from trlrec import PixelRenderTransform, TensorDictRecorder, TrajectoryReader, VideoRecorder
from trlrec.loggers import CSVLogger


@dataclass
class Args:
    """Command-line options (``--exp-name``...), CleanRL style."""

    exp_name: str = "record_cartpole"
    """the experiment's directory under --out"""
    env_id: str = "CartPole-v1"
    """the Gymnasium environment"""
    steps: int = 200
    """transitions to record"""
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


def main(args: Args) -> dict[str, Path]:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # render without a display
    torch.manual_seed(args.seed)
    logger = CSVLogger(args.exp_name, log_dir=args.out)

    env = GymEnv(args.env_id, render_mode="rgb_array")
    env.set_seed(args.seed)
    # the store keeps the env's own keys; the rendered frames go to the video
    keep = [*env.observation_spec.keys(), "action", "reward"]
    # frames at half size (300x200) keep the rollout small in RAM
    env = env.append_transform(PixelRenderTransform(preproc=lambda img: img[::2, ::2]))
    env = env.append_transform(VideoRecorder(logger, tag="rollout", fps=30))
    recorder = TensorDictRecorder(
        logger=logger, tag="transitions", in_keys=keep, metadata=dataclasses.asdict(args)
    )
    env = env.append_transform(recorder)  # last: it sees the whole transition

    env.rollout(args.steps, break_when_any_done=False)
    env.transform.dump()  # commit the transitions, encode the video, log episode stats
    env.transform.close()
    env.close()

    reader = TrajectoryReader(recorder.path)
    video = max(logger.videos_dir.glob("rollout_*.mp4"), key=lambda p: p.stat().st_mtime)
    print(f"{reader.num_steps} steps, {reader.num_episodes} episodes -> {recorder.path}")
    print(f"video -> {video}")
    return {"dataset": recorder.path, "video": video}


if __name__ == "__main__":
    main(parse_args())
