"""Record what a collector gathers in a training loop: ``rec.extend(batch)`` per batch.

    python examples/record_collector.py --total-frames 1024 --out runs

A small Q-network acts epsilon-greedily and takes one TD(0) step per batch; every
batch is appended to ``<out>/<exp_name>/transitions`` as it comes, and episode
statistics are logged at each ``dump()``. Episodes cut by batch boundaries are
stitched back together by the collector's trajectory ids.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import GymEnv
from torchrl.modules import EGreedyModule, QValueModule

from trlrec import TensorDictRecorder, TrajectoryReader
from trlrec.loggers import CSVLogger


@dataclass
class Args:
    """Command-line options (``--exp-name``...), CleanRL style."""

    exp_name: str = "record_collector"
    """the experiment's directory under --out"""
    env_id: str = "CartPole-v1"
    """the Gymnasium environment"""
    total_frames: int = 1024
    """frames to collect"""
    frames_per_batch: int = 128
    """frames per collector batch"""
    lr: float = 1e-3
    """learning rate of the Q-network"""
    gamma: float = 0.99
    """discount"""
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


def main(args: Args) -> Path:
    torch.manual_seed(args.seed)
    env = GymEnv(args.env_id)
    env.set_seed(args.seed)
    n_obs, n_act = env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]
    qnet = TensorDictModule(
        nn.Sequential(nn.Linear(n_obs, 64), nn.Tanh(), nn.Linear(64, n_act)),
        in_keys=["observation"],
        out_keys=["action_value"],
    )
    greedy = TensorDictSequential(qnet, QValueModule(spec=env.action_spec))
    policy = TensorDictSequential(greedy, EGreedyModule(env.action_spec, eps_init=0.5))
    optim = torch.optim.Adam(qnet.parameters(), lr=args.lr)

    logger = CSVLogger(args.exp_name, log_dir=args.out)
    rec = TensorDictRecorder(logger=logger, tag="transitions", metadata=dataclasses.asdict(args))
    collector = Collector(
        env,
        policy,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.total_frames,
        auto_register_policy_transforms=False,
    )
    for i, batch in enumerate(collector):
        rec.extend(batch)  # the whole [T] batch, straight to the memory-mapped store

        # one TD(0) step on the batch
        q = qnet(batch.clone())["action_value"]
        q_taken = (q * batch["action"]).sum(-1)
        with torch.no_grad():
            q_next = qnet(batch["next"].clone())["action_value"].max(-1).values
            done = batch["next", "terminated"].squeeze(-1).float()
            target = batch["next", "reward"].squeeze(-1) + args.gamma * (1 - done) * q_next
        loss = nn.functional.mse_loss(q_taken, target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        collector.update_policy_weights_()

        if i % 4 == 3:
            rec.dump()  # commit and log episode statistics so far
        logger.log_scalar("loss", loss.item(), step=i)
    collector.shutdown()
    rec.close()
    logger.close()

    reader = TrajectoryReader(rec.path)
    print(f"{reader.num_steps} steps, {reader.num_episodes} episodes -> {rec.path}")
    return rec.path


if __name__ == "__main__":
    main(parse_args())
