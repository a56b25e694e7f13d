"""trlrec.specs: TorchRL specs to JSON and back, and specs stored in a store."""

from __future__ import annotations

import inspect
import json
import logging

import pytest
import torch
import torchrl.data.tensor_specs as ts
from tensordict import NonTensorData
from torchrl.data import (
    Binary,
    Bounded,
    Categorical,
    Choice,
    Composite,
    MultiCategorical,
    MultiOneHot,
    NonTensor,
    OneHot,
    Unbounded,
)
from torchrl.envs import GymEnv, SerialEnv

from trlrec import TensorDictRecorder, TrajectoryReader, TrajectoryWriter
from trlrec.errors import ConfigError, CorruptStoreError, FormatVersionError, UnsupportedDataError
from trlrec.specs import (
    SPECS_FILE,
    read_specs,
    specs_from_json,
    specs_to_json,
    store_specs,
    write_specs,
)
from trlrec.storage.dtypes import bits_view

PINNED = "tests/data/store_v1"


def _leaves():
    """One spec of every TorchRL spec class, with non-default bounds, n, masks, dtypes."""
    return {
        "BoundedContinuous": Bounded(-1.5, 2.25, shape=(3,), dtype=torch.float64),
        "BoundedContinuous_inf": Bounded(
            torch.tensor([-1.0, -torch.inf]), torch.tensor([0.1, torch.inf]), shape=(2,)
        ),
        "BoundedContinuous_signed_zero": Bounded(
            torch.tensor([-0.0, 0.0]), torch.tensor([0.0, 0.0]), shape=(2,)
        ),
        "BoundedContinuous_bf16": Bounded(-0.3, 0.7, shape=(2,), dtype=torch.bfloat16),
        "BoundedDiscrete": Bounded(0, 255, shape=(6, 5, 3), dtype=torch.uint8),
        "BoundedDiscrete_ragged": Bounded(
            torch.tensor([0, -3]), torch.tensor([7, 2**40]), shape=(2,), dtype=torch.int64
        ),
        "UnboundedContinuous": Unbounded(shape=(2, 2), dtype=torch.float16),
        "UnboundedDiscrete": Unbounded(shape=(1,), dtype=torch.int32),
        "UnboundedDiscrete_bool": Unbounded(shape=(1,), dtype=torch.bool),
        "Unbounded_dynamic": Unbounded(shape=(-1, 3)),
        "OneHot": OneHot(4, dtype=torch.int64, mask=torch.tensor([True, False, True, True])),
        "OneHot_bool": OneHot(3, shape=(2, 3)),
        "MultiOneHot": MultiOneHot([2, 3], dtype=torch.uint8),
        "Categorical": Categorical(5, shape=(2,), dtype=torch.int32),
        "Categorical_mask": Categorical(3, mask=torch.tensor([False, True, True])),
        "Binary": Binary(4, dtype=torch.bool),
        "MultiCategorical": MultiCategorical([2, 3, 4], dtype=torch.int16),
        "MultiCategorical_2d": MultiCategorical(
            torch.tensor([[2, 3], [4, 5]]), remove_singleton=False
        ),
        "NonTensor": NonTensor(shape=(1,), example_data={"text": "hi", "n": [1, 2.5]}),
        "NonTensor_batched": NonTensor(shape=(3,), batched=True, example_data="a"),
        "Choice": Choice([Bounded(0, 1, shape=(1,)), Bounded(10, 11, shape=(1,))]),
        "Choice_data": Choice([NonTensorData(s) for s in ("a", "b", "c")]),
        "Stacked": torch.stack([Bounded(0, 1, shape=(2,)), Bounded(0, 2, shape=(2,))], 0),
    }


def _all_specs():
    leaves = _leaves()
    specs = dict(leaves)
    specs["Composite_nested"] = Composite(
        {"a": Composite(b=Unbounded(shape=(5, 3)), shape=(5,)), "c": OneHot(2, shape=(5, 2))},
        shape=(5,),
        names=["time"],
    )
    specs["StackedComposite"] = torch.stack(
        [Composite(a=Bounded(0, 1, shape=(2,))), Composite(a=Bounded(0, 2, shape=(2,)))], 0
    )
    specs["Composite_all"] = Composite(
        {k: v for k, v in leaves.items() if not k.startswith(("Choice", "Unbounded_dynamic"))}
    )
    return specs


def _through_json(spec):
    text = json.dumps(specs_to_json(spec), allow_nan=False)
    return specs_from_json(json.loads(text))


def _same(a, b):
    """Stricter than ``==`` (which compares bounds with isclose): same class, bits, fields."""
    assert type(a) is type(b)
    assert specs_to_json(a) == specs_to_json(b)
    if isinstance(a, ts.Bounded):  # bit for bit: -0.0 is not 0.0 here
        assert torch.equal(bits_view(a.space.low), bits_view(b.space.low))
        assert torch.equal(bits_view(a.space.high), bits_view(b.space.high))


@pytest.mark.parametrize(("name", "spec"), list(_all_specs().items()))
def test_round_trip_of_every_spec_class(name, spec):
    back = _through_json(spec)
    assert back == spec
    _same(back, spec)


def test_every_torchrl_spec_class_is_covered():
    classes = {
        n
        for n, c in vars(ts).items()
        if inspect.isclass(c) and issubclass(c, ts.TensorSpec) and c.__module__ == ts.__name__
    }
    # TensorSpec is abstract; Bounded and Unbounded always become one of their two subclasses
    never_instances = {"TensorSpec", "Bounded", "Unbounded"}
    covered = {type(s).__name__ for s in _all_specs().values()} | {"Composite"}
    assert classes - never_instances == covered


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Pendulum-v1"])
def test_real_env_specs_round_trip(env_name):
    specs = GymEnv(env_name).specs
    assert _through_json(specs) == specs
    assert _through_json(specs.expand(3, *specs.shape)) == specs.expand(3, *specs.shape)


def test_batched_env_specs_round_trip():
    env = SerialEnv(2, lambda: GymEnv("CartPole-v1"))
    specs = env.specs
    back = _through_json(specs)
    assert back == specs
    assert back.shape == torch.Size([2])
    assert back["input_spec", "full_action_spec", "action"] == env.full_action_spec["action"]


def test_device_override():
    spec = Composite(a=Bounded(0, 1, shape=(2,)), device="cpu")
    back = specs_from_json(specs_to_json(spec), device="cpu")
    assert back == spec


def test_unsupported_specs_are_refused():
    class MySpec(OneHot):
        pass

    with pytest.raises(UnsupportedDataError, match=r"specs\.x.*MySpec.*only TorchRL"):
        specs_to_json(Composite(x=MySpec(2)))
    with pytest.raises(UnsupportedDataError, match=r"example_data of type object"):
        specs_to_json(NonTensor(example_data=object()))
    with pytest.raises(UnsupportedDataError, match="must be a TorchRL TensorSpec"):
        specs_to_json({"a": 1})


def test_damaged_documents_are_refused():
    doc = specs_to_json(Composite(a=OneHot(2)))
    with pytest.raises(FormatVersionError, match="version 99"):
        specs_from_json({**doc, "version": 99})
    with pytest.raises(CorruptStoreError, match="not a trlrec specs document"):
        specs_from_json({"format": "other"})
    bad = json.loads(json.dumps(doc))
    bad["spec"]["entries"]["a"]["class"] = "os.system"
    with pytest.raises(CorruptStoreError, match=r"unknown spec class 'os\.system'"):
        specs_from_json(bad)
    bad = json.loads(json.dumps(doc))
    bad["spec"]["entries"]["a"]["n"] = 3
    with pytest.raises(CorruptStoreError, match=r"specs\.a: cannot rebuild the OneHot"):
        specs_from_json(bad)


def test_writer_stores_specs_and_reader_rebuilds_them(tmp_path, stub_env_cls):
    env = GymEnv("CartPole-v1")
    with TrajectoryWriter(tmp_path / "s", specs=env.specs) as w:
        w.extend(env.rollout(5, break_when_any_done=False))
    assert TrajectoryReader(tmp_path / "s").specs == env.specs
    assert json.loads((tmp_path / "s" / SPECS_FILE).read_text())["version"] == 1


def test_first_writer_wins(tmp_path, caplog):
    a, b = Composite(x=OneHot(2)), Composite(x=OneHot(3))
    assert write_specs(tmp_path, a)
    assert not write_specs(tmp_path, a)
    with caplog.at_level(logging.WARNING, logger="trlrec.specs"):
        assert not write_specs(tmp_path, b)
    assert "differ" in caplog.text
    assert read_specs(tmp_path) == a
    assert not list(tmp_path.glob(".*.tmp"))


def test_pinned_v1_store_has_no_specs_and_gets_schema_specs():
    r = TrajectoryReader(PINNED)
    assert r.specs is None
    s = store_specs(r)
    assert not s.recorded
    assert set(s.category.values()) == {"observation", "action", "reward", "done"}
    assert isinstance(s.done["done"], Categorical)


@pytest.mark.parametrize("form", ["transform", "callback", "callback_break"])
def test_recorder_stores_its_env_specs(tmp_path, form):
    rec = TensorDictRecorder(tmp_path / "r")
    if form == "transform":
        env = GymEnv("CartPole-v1").append_transform(rec)
        env.rollout(10, break_when_any_done=False)
        expected = GymEnv("CartPole-v1").specs
    else:
        env = SerialEnv(2, lambda: GymEnv("Pendulum-v1"))
        env.rollout(6, callback=rec, break_when_any_done=form == "callback")
        expected = env.specs
    rec.close()
    specs = TrajectoryReader(tmp_path / "r").specs
    assert specs == expected


def test_recorder_specs_argument_for_collector_batches(tmp_path):
    from torchrl.collectors import Collector

    env = GymEnv("CartPole-v1")
    collector = Collector(env, None, frames_per_batch=8, total_frames=16)
    with TensorDictRecorder(tmp_path / "c", specs=collector.env.specs) as rec:
        for batch in collector:
            rec.extend(batch)
    collector.shutdown()
    assert TrajectoryReader(tmp_path / "c").specs == GymEnv("CartPole-v1").specs


def test_recorder_records_without_specs_it_cannot_store(tmp_path, stub_env_cls, caplog):
    env = stub_env_cls()

    class Odd(OneHot):
        pass

    spec = env.observation_spec.clone()
    spec["extra"] = Odd(1)
    env.observation_spec = spec  # the stub never produces "extra": only its spec is odd
    env = env.append_transform(TensorDictRecorder(tmp_path / "o"))
    with caplog.at_level(logging.WARNING):
        env.rollout(3, break_when_any_done=False)
    env.transform.close()
    assert "not recorded" in caplog.text
    r = TrajectoryReader(tmp_path / "o")
    assert r.specs is None
    assert r.num_steps == 3


def _on(node, device):
    """The document with every recorded device replaced (a GPU recording, here on a CPU)."""
    if isinstance(node, dict):
        return {
            k: device if k == "device" and v is not None else _on(v, device)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_on(v, device) for v in node]
    return node


def test_a_gpu_recording_reads_on_the_cpu():
    spec = GymEnv("CartPole-v1").specs
    doc = _on(specs_to_json(spec), "cuda:0")
    assert specs_from_json(doc, device="cpu") == spec
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"recorded on 'cuda:0'.*device='cpu'"):
            specs_from_json(doc)
    else:
        assert specs_from_json(doc) == spec.to("cuda:0")
