"""Awkward but legal tensors are stored exactly; wrong ones are refused without losing data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from tests.reliability._worker import bits, check_store, rollout, same
from trlrec.errors import SchemaError
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.writer import TrajectoryWriter


def _episodes(path) -> list[TensorDict]:
    r = TrajectoryReader(path)
    return [r.episodes[i] for i in range(r.num_episodes)]


def test_generator_matches_stub_env(stub_env_cls):
    """The subprocess-safe rollout generator computes what StubEnv observes."""
    env = stub_env_cls(episode_lengths=(3, 4), batch_size=(2,), pixels=(2, 2, 3))
    got = env.rollout(10, break_when_any_done=False)
    want = rollout(2, 10, (3, 4), pixels=(2, 2, 3))
    for key in ["observation", "pixels", "done", ("next", "observation"), ("next", "pixels"),
                ("next", "done"), ("next", "terminated")]:  # fmt: skip
        assert torch.equal(got[key], want[key]), key


def test_stub_env_rollout_round_trip(stub_env_cls, tmp_path):
    env = stub_env_cls(episode_lengths=(1, 3), batch_size=(2,))  # done at the first step
    td = env.rollout(9, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "s") as w:
        w.extend(td)
    eps = _episodes(tmp_path / "s")
    assert sum(e.shape[0] for e in eps) == 18
    assert sum(e.shape[0] == 1 for e in eps) == 9  # sub-env 0: nine one-step episodes


def test_non_contiguous_and_expanded_tensors(tmp_path):
    roll = rollout(3, 12)
    with TrajectoryWriter(tmp_path / "s") as w:
        for t in range(12):
            step = roll[:, t].clone()
            obs = step["observation"]
            wide = torch.zeros(3, 8)
            wide[:, ::2] = obs
            step["observation"] = wide[:, ::2]  # strided
            assert not step["observation"].is_contiguous()
            step["next", "observation"] = step["next", "observation"].t().contiguous().t()
            step["action"] = step["action"][:1].expand(3, 1) if t % 3 == 0 else step["action"]
            if t % 3 == 0:
                roll[:, t]["action"].copy_(step["action"])  # the expanded value is the truth
            w.append(step)
    assert check_store(str(tmp_path / "s"), roll, 3)["steps"] == 36


def test_wrong_dtype_is_refused_and_loses_nothing(tmp_path):
    roll = rollout(0, 20)
    w = TrajectoryWriter(tmp_path / "s")
    for t in range(8):
        w.append(roll[t])
    w.flush()
    bad = roll[8].clone()
    bad["observation"] = bad["observation"].double()
    with pytest.raises(SchemaError, match=r"observation.*float32.*float64"):
        w.append(bad)
    batch = roll[8:12].clone()
    batch["next", "reward"] = batch["next", "reward"].half()
    with pytest.raises(SchemaError, match=r"reward.*float32.*float16"):
        w.extend(batch)
    for t in range(8, 20):
        w.append(roll[t])
    w.close()
    assert check_store(str(tmp_path / "s"), roll, 0)["steps"] == 20


def _special(dtype: torch.dtype) -> torch.Tensor:
    """NaNs with payloads (quiet and signalling, both signs), infinities, -0.0."""
    if dtype == torch.float32:
        raw = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0x7F800000, 0xFF800000, 0x80000000,
                        0x00000001, 0x7F7FFFFF], dtype=np.uint32)  # fmt: skip
        return torch.from_numpy(raw.view(np.float32).copy())
    if dtype == torch.float64:
        words = [0x7FF8000000000001, 0xFFF800000000BEEF, 0x7FF0000000000001]
        words += [0x7FF0000000000000, 0x8000000000000000, 1, 2, 3]
        raw = np.array(words, dtype=np.uint64)
        return torch.from_numpy(raw.view(np.float64).copy())
    width = torch.int16
    raw = torch.tensor([0x7E01, -0x0201, 0x7C01, 0x7C00, -0x0400, -0x8000, 1, 2], dtype=width)
    if dtype == torch.bfloat16:
        raw = torch.tensor([0x7FC1, -0x003F, 0x7F81, 0x7F80, -0x0080, -0x8000, 1, 2], dtype=width)
    return raw.view(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("how", ["append", "extend"])
def test_nan_and_inf_are_stored_bit_exact(tmp_path, dtype, how):
    T = 6
    vals = _special(dtype)
    obs = torch.stack([vals.roll(t) for t in range(T + 1)])  # [T + 1, 8]
    done = torch.zeros(T, 1, dtype=torch.bool)
    done[-1] = True
    td = TensorDict(
        {
            "observation": obs[:-1],
            "action": torch.arange(T)[:, None],
            "done": torch.zeros(T, 1, dtype=torch.bool),
            "next": {"observation": obs[1:], "reward": vals[:T, None].clone(), "done": done},
        },
        batch_size=[T],
    )
    with TrajectoryWriter(tmp_path / "s") as w:
        if how == "append":
            for t in range(T):
                w.append(td[t])
        else:
            w.extend(td)
    (ep,) = _episodes(tmp_path / "s")
    assert same(ep, td) is None
    assert torch.equal(bits(ep["next", "reward"]), bits(vals[:T, None]))


def test_zero_length_batches_and_empty_episodes(tmp_path):
    roll = rollout(2, 10)
    with TrajectoryWriter(tmp_path / "s") as w:
        w.extend(roll[:, :0])  # before the schema is known
        w.end_episode()
        w.flush()
        w.extend(roll[:, :4])
        w.extend(roll[:, 4:4])  # [B, 0] after
        w.end_episode()
        w.end_episode()  # two resets in a row: no empty episode
        w.extend(roll[:, 4:10])
        w.flush()
        w.flush()
    r = TrajectoryReader(tmp_path / "s")
    assert r.num_steps == 20
    assert all(r.episode_info(i)["num_steps"] >= 1 for i in range(r.num_episodes))
    # An unused writer leaves no episode behind and the store still opens.
    with TrajectoryWriter(tmp_path / "s") as w:
        w.extend(roll[:, :0])
    assert TrajectoryReader(tmp_path / "s").num_episodes == r.num_episodes


def test_done_on_the_reset_step(tmp_path):
    """A reset row that already says done (TorchRL refuses such envs, custom loops do not)."""
    roll = rollout(0, 12, (3,))
    roll["done"][0] = True
    roll["terminated"][0] = True
    roll["done"][6] = True
    with TrajectoryWriter(tmp_path / "s") as w:
        for t in range(12):
            w.append(roll[t])
    assert check_store(str(tmp_path / "s"), roll, 0)["steps"] == 12
