"""Data the store used to lose or misread on the write side (issue 18), on both capture paths.

Each test records odd but legal data with :class:`~trlrec.TrajectoryWriter` (native
capture on, then off) and reads it back, or checks the refusal comes at the first step.
"""

from __future__ import annotations

import re

import pytest
import torch
from tensordict import TensorDict
from tensordict._utils_key_json import _encode_key_for_filesystem

from trlrec import TrajectoryReader, TrajectoryWriter
from trlrec.errors import SchemaError
from trlrec.storage.format import key_file_name


@pytest.fixture(params=["native", "python"])
def capture(request, monkeypatch):
    """Runs a test with the native capture on, then off (``TRLREC_NATIVE=0``)."""
    monkeypatch.setenv("TRLREC_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def _step(t: int, n: int = 6, **extra) -> TensorDict:
    td = TensorDict(
        {
            "observation": torch.tensor([float(t)]),
            "action": torch.tensor([t % 3]),
            "next": {
                "observation": torch.tensor([t + 1.0]),
                "reward": torch.tensor([0.5]),
                "done": torch.tensor([t == n - 1]),
            },
        },
        batch_size=[],
    )
    for key, value in extra.items():
        td[key] = value(t) if callable(value) else value
    return td


def _record(path, steps, capture: str) -> TrajectoryReader:
    with TrajectoryWriter(path) as w:
        for s in steps:
            w.append(s)
        assert w._rec.staging.native == (capture == "native")
    return TrajectoryReader(path)


def test_empty_shaped_key_reads_back_empty(tmp_path, capture):
    """A ``zeros(0)`` and a ``[B, 0]`` leaf have a (zero-byte) file and read back empty."""
    steps = [_step(t, empty=torch.zeros(0), none=torch.zeros(2, 0, dtype=torch.int64))
             for t in range(6)]  # fmt: skip
    r = _record(tmp_path / "s", steps, capture)
    ep = r.episodes[0]
    assert ep["empty"].shape == (6, 0)
    assert ep["empty"].dtype == torch.float32
    assert ep["none"].shape == (6, 2, 0)
    assert ep["none"].dtype == torch.int64
    assert torch.equal(ep["observation"].flatten(), torch.arange(6.0))
    # a batched [B, 0] leaf through extend
    batch = torch.stack([_step(t, empty=torch.zeros(0)) for t in range(6)])
    with TrajectoryWriter(tmp_path / "b") as w:
        w.extend(torch.stack([batch, batch]))  # [2, 6]
    r = TrajectoryReader(tmp_path / "b")
    assert r.num_episodes == 2
    assert r.episodes[1]["empty"].shape == (6, 0)


ODD = ["camera pose", "a:b", "<x>", 'q"', "p|q", "what?", "st*r", "100%", "tab\tkey", "bell\x07",
       "del\x7f", "ünïcode ключ"]  # fmt: skip


def test_keys_with_odd_characters_round_trip(tmp_path, capture):
    """Keys with a space, ``: < > " | ? * %`` or a control character are stored and read."""
    extra = {k: (lambda t, i=i: torch.tensor([float(t * 10 + i)])) for i, k in enumerate(ODD)}
    steps = [_step(t) for t in range(6)]
    for s in steps:
        for k, f in extra.items():
            s[k] = f(int(s["action"].item()))
    nested = [_step(t, **{"sub dir": {"x y": torch.tensor([t])}}) for t in range(6)]
    r = _record(tmp_path / "s", steps, capture)
    ep = r.episodes[0]
    for k, f in extra.items():
        want = torch.stack([f(int(s["action"].item())) for s in steps])
        assert torch.equal(ep[k], want), k
    (shard,) = (tmp_path / "s/shards").iterdir()
    chunk = shard / "streams/0/chunk-000000"
    assert (chunk / "camera%20pose.memmap").is_file()
    # nested keys (a sub-tensordict's directory is encoded too); the Python path takes them
    with TrajectoryWriter(tmp_path / "n") as w:
        for s in nested:
            w.append(s)
    ep = TrajectoryReader(tmp_path / "n").episodes[0]
    assert ep["sub dir", "x y"].flatten().tolist() == list(range(6))
    # and plain tensordict opens the chunk (the files are where its meta.json says)
    (shard,) = (tmp_path / "n/shards").iterdir()
    TensorDict.load_memmap(shard / "streams/0/chunk-000000")


def test_key_file_names_are_tensordicts():
    """The format's file name of a key component is the one ``memmap_like`` creates."""
    for code in [*range(0x80), 0xE9, 0x416, 0x1F600]:
        part = f"a{chr(code)}b"
        assert key_file_name(part) == _encode_key_for_filesystem(part), repr(part)
    assert key_file_name("..") == _encode_key_for_filesystem("..") == "%2E%2E"


def test_key_too_long_for_a_file_name_is_refused_at_the_first_step(tmp_path):
    with TrajectoryWriter(tmp_path / "s") as w:
        with pytest.raises(SchemaError, match="over the 248 a file name allows"):
            w.append(_step(0, **{"k" * 249: torch.zeros(1)}))
        with pytest.raises(SchemaError, match="bytes as a file name"):  # 3 bytes per '%3F'
            w.append(_step(0, **{"?" * 83: torch.zeros(1)}))


@pytest.mark.parametrize("where", ["root", "next"])
def test_extra_nested_key_mid_recording_is_refused_that_step(tmp_path, capture, where):
    """Same answer as extend: a nested key the schema lacks is a SchemaError at once."""
    steps = [_step(t, 40, obs={"a": torch.tensor([t])}) for t in range(40)]
    for s in steps:
        s["next", "obs", "a"] = s["obs", "a"] + 1
    bad = steps[37].clone()
    bad[("obs", "b") if where == "root" else ("next", "obs", "b")] = torch.zeros(2)
    with TrajectoryWriter(tmp_path / "s", stage_steps=8) as w:
        for s in steps[:37]:
            w.append(s)
        name = "('obs', 'b')" if where == "root" else "('next', 'obs', 'b')"
        with pytest.raises(SchemaError, match=re.escape(f'["{name}"] are not in the recording')):
            w.append(bad)
        with pytest.raises(SchemaError, match="not in the recording"):
            w.extend(torch.stack([bad]))
        for s in steps[37:]:
            w.append(s)
    r = TrajectoryReader(tmp_path / "s")
    assert r.num_steps == 40
    assert "b" not in r.episodes[0]["obs"].keys()


def test_negative_bit_view_is_stored_as_its_value(tmp_path, capture):
    """``z.conj().imag`` (contiguous, negative bit set) is stored as -2.0, not 2.0."""
    z = torch.complex(torch.tensor([1.0]), torch.tensor([2.0]))
    v = z.conj().imag
    wide = torch._neg_view(torch.tensor([2.0, -4.0]))  # contiguous with two elements
    assert v.is_neg()
    assert v.is_contiguous()
    assert wide.is_neg()
    assert wide.is_contiguous()
    steps = [_step(t, v=v, d=v.detach(), wide=wide) for t in range(6)]
    ep = _record(tmp_path / "s", steps, capture).episodes[0]
    assert ep["v"].flatten().tolist() == [-2.0] * 6
    assert ep["d"].flatten().tolist() == [-2.0] * 6
    assert ep["wide"].tolist() == [[-2.0, 4.0]] * 6


def test_leaves_requiring_grad_are_recorded_detached(tmp_path, capture):
    """A policy's outputs (requires_grad) are recorded: contiguous or not, append or extend."""
    w0 = torch.arange(6.0).reshape(2, 3).requires_grad_()
    steps = [_step(t, logits=lambda t: w0 * t, strided=lambda t: (w0 * t).t(), leaf=w0)
             for t in range(6)]  # fmt: skip
    assert steps[1]["logits"].requires_grad
    assert not steps[1]["strided"].is_contiguous()
    ep = _record(tmp_path / "s", steps, capture).episodes[0]
    for t in range(6):
        assert torch.equal(ep["logits"][t], (w0 * t).detach())
        assert torch.equal(ep["strided"][t], (w0 * t).detach().t())
    assert not ep["logits"].requires_grad
    with TrajectoryWriter(tmp_path / "e") as w:
        w.extend(torch.stack(steps))
    ep = TrajectoryReader(tmp_path / "e").episodes[0]
    assert torch.equal(ep["strided"][5], (w0 * 5).detach().t())
