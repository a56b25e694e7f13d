"""The native step capture: the same bytes as the Python path, and the Python path's errors."""

from __future__ import annotations

import itertools
import os
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from tensordict import TensorDict

from tests.storage.helpers import assert_store_matches, record_rows
from tests.storage.strategies import rollouts
from trlrec import TrajectoryReader, TrajectoryWriter, native
from trlrec.errors import SchemaError
from trlrec.storage import _capture

_counter = itertools.count()


@pytest.fixture(params=["native", "python"])
def path_kind(request, monkeypatch):
    """Runs a test with the native capture on, then off (``TRLREC_NATIVE=0``)."""
    monkeypatch.setenv("TRLREC_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def _uses_native(w: TrajectoryWriter) -> bool:
    return w._rec.staging.native


@pytest.mark.parametrize("name", ["capture", "pwrite"])
def test_the_extensions_are_built_and_can_be_turned_off(monkeypatch, name):
    # ./run installs with a C compiler: a missing extension here is a build failure,
    # not the optional fallback (which the "python" runs below cover), unless the whole
    # run is the one without the extensions (.ci/run's TRLREC_NATIVE=0 pass)
    if os.environ.get("TRLREC_NATIVE") == "0":
        pytest.skip("this run has the extensions turned off (TRLREC_NATIVE=0)")
    assert native.extension(name) is not None
    monkeypatch.setenv("TRLREC_NATIVE", "0")
    assert native.extension(name) is None


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=rollouts())
def test_both_paths_store_the_rollout_bit_for_bit(tmp_path, path_kind, data):
    rollout, kw = data
    assert_store_matches(record_rows(tmp_path / f"a{next(_counter)}", rollout, **kw), rollout)


def test_plain_steps_take_the_native_path_and_end_episodes(tmp_path, stub_env_cls, path_kind):
    env = stub_env_cls(episode_lengths=(3,), pixels=(6, 5, 3))
    rollout = env.rollout(10, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "s") as w:
        for t in range(10):
            w.append(rollout[t])
        assert _uses_native(w) == (path_kind == "native")
        assert (w._rec.io.name == "native") == (path_kind == "native")  # the native writer thread
    r = TrajectoryReader(tmp_path / "s")
    assert [len(r.episodes[i]) for i in range(len(r.episodes))] == [3, 3, 3, 1]
    assert_store_matches(r, rollout)


def test_nan_payloads_and_negative_zero_keep_their_bits(tmp_path, stub_env, path_kind):
    rollout = stub_env.rollout(4, break_when_any_done=False)
    # a signalling NaN, a quiet NaN with a payload, -0.0 and an infinity, as raw bits
    bits = torch.tensor([0x7F800001, 0x7FC12345, -(2**31), 0x7F800000], dtype=torch.int32)
    rollout["next", "observation"][2] = bits.view(torch.float32)
    rollout["observation"][3] = bits.view(torch.float32)
    with TrajectoryWriter(tmp_path / "n") as w:
        for t in range(4):
            w.append(rollout[t])
    assert_store_matches(TrajectoryReader(tmp_path / "n"), rollout)


def test_non_contiguous_and_offset_leaves_are_copied_by_value(tmp_path, stub_env, path_kind):
    rollout = stub_env.rollout(4, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "v") as w:
        w.append(rollout[0])
        step = rollout[1].clone()
        wide = torch.stack([step["next", "observation"], -step["next", "observation"]], 1)
        step["next", "observation"] = wide[:, 0]  # a strided view: stride (2,)
        assert not step["next", "observation"].is_contiguous()
        w.append(step)
        step = rollout[2].clone()
        base = torch.cat([torch.full((3,), -1.0), step["observation"]])
        step["observation"] = base[3:]  # contiguous, at a storage offset
        w.append(step)
        w.append(rollout[3])
    assert_store_matches(TrajectoryReader(tmp_path / "v"), rollout)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda s: s.set("observation", torch.zeros(5)), SchemaError, r"'observation'.*got shape"),
        (
            lambda s: s.set(("next", "reward"), s["next", "reward"].double()),
            SchemaError,
            r"\('next', 'reward'\).*torch.float64",
        ),
        (lambda s: s.exclude("action"), SchemaError, "'action' is missing"),
        (
            lambda s: s.set(("next", "done"), s["next", "done"].to(torch.uint8)),
            SchemaError,
            r"\('next', 'done'\).*torch.uint8",
        ),
    ],
    ids=["shape", "dtype", "missing", "done-dtype"],
)
def test_bad_steps_raise_the_python_paths_error(
    tmp_path, stub_env, path_kind, change, error, match
):
    rollout = stub_env.rollout(3, break_when_any_done=False)
    w = TrajectoryWriter(tmp_path / "b")
    w.append(rollout[0])
    w.flush()
    step = change(rollout[1].clone())
    with pytest.raises(error, match=match):
        w.append(step)
    w.append(rollout[1])
    w.append(rollout[2])
    w.close()
    assert_store_matches(TrajectoryReader(tmp_path / "b"), rollout)


def test_a_non_tensor_value_under_a_schema_key_is_refused(tmp_path, stub_env, path_kind):
    rollout = stub_env.rollout(2, break_when_any_done=False)
    with TrajectoryWriter(tmp_path / "t") as w:
        w.append(rollout[0])
        step = rollout[1].clone()
        step.set(("next", "reward"), "text")  # stored as NonTensorData
        with pytest.raises(SchemaError, match=r"\('next', 'reward'\).* holds NonTensorData"):
            w.append(step)
        w.append(rollout[1])
    assert_store_matches(TrajectoryReader(tmp_path / "t"), rollout)


def test_nested_keys_take_the_native_path(tmp_path, stub_env_cls, path_kind):
    # TorchRL's collectors put ("collector", "traj_ids") in every step: nested keys
    # (two levels too, on both sides) are captured natively, bit for bit
    rollout = stub_env_cls(episode_lengths=(4,)).rollout(10, break_when_any_done=False)
    rollout["collector", "traj_ids"] = torch.arange(10)
    arm = torch.randn(11, 3)  # a state: each step's is the step before's "next"
    rollout["agent", "arm", "obs"] = arm[:10]
    rollout["next", "agent", "arm", "obs"] = arm[1:]
    with TrajectoryWriter(tmp_path / "n") as w:
        for t in range(10):
            w.append(rollout[t])
        assert _uses_native(w) == (path_kind == "native")
        bad = rollout[0].clone()
        bad["agent", "arm", "extra"] = torch.zeros(1)  # a nested extra key is still refused
        with pytest.raises(SchemaError, match=r"\('agent', 'arm', 'extra'\)"):
            w.append(bad)
    r = TrajectoryReader(tmp_path / "n")
    assert [len(r.episodes[i]) for i in range(len(r.episodes))] == [4, 4, 2]
    assert_store_matches(r, rollout)


@pytest.mark.parametrize(
    ("env_kw", "extra"),
    [({"batch_size": (2,)}, None), ({}, "complex")],
    ids=["batched", "complex-dtype"],
)
def test_native_path_is_not_used_where_it_does_not_apply(tmp_path, stub_env_cls, env_kw, extra):
    rollout = stub_env_cls(**env_kw).rollout(3, break_when_any_done=False)
    if extra == "complex":
        rollout["phase"] = torch.ones(*rollout.shape, 2, dtype=torch.complex64)
    with TrajectoryWriter(tmp_path / "x") as w:
        for t in range(3):
            w.append(rollout[..., t])
        assert not _uses_native(w)
    assert_store_matches(TrajectoryReader(tmp_path / "x"), rollout)


def _plan(rows: int = 2):
    """A plan for steps of a root state "x" [2], a next state "x" and a bool "done" [1]."""
    bufs = [torch.zeros(rows, 2), torch.zeros(rows, 2), torch.zeros(rows, 1, dtype=torch.bool)]
    flags = bytearray(rows)
    plan = _capture.Plan(
        torch.Tensor, ["x", "x", "done"], [0, 1, 1],
        [torch.float32, torch.float32, torch.bool],
        [torch.Size([2]), torch.Size([2]), torch.Size([1])], [8, 8, 1],
        [[b[i].data_ptr() for b in bufs] for i in range(rows)], [2], [1], [flags], bufs,
    )  # fmt: skip
    return plan, bufs, flags


def test_plan_copies_checks_and_reads_done():
    plan, (root, nxt, done), flags = _plan()
    x0, x1 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert plan.step({"x": x0}, {"x": x1, "done": torch.tensor([True])}, 1, True) == 1
    assert torch.equal(root[1], x0)
    assert torch.equal(nxt[1], x1)
    assert done[1].item()
    assert flags[1] == 0
    bad = {"x": x1, "done": torch.tensor([1], dtype=torch.uint8)}
    assert plan.step({"x": x0}, bad, 0, True) == -1  # a mismatch: the Python path's job
    assert plan.step({"x": x0}, {"x": x1}, 0, True) == -1  # a missing key
    assert plan.step(None, {"x": x1}, 0, True) == -1  # not plain dicts


def test_plan_aliases_unmodified_states_only():
    plan, (root, nxt, _), flags = _plan(4)
    no = torch.tensor([False])
    x0, x1, x2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([5.0, 6.0])
    assert plan.step({"x": x0}, {"x": x1, "done": no}, 0, True) == 0
    assert plan.step({"x": x1}, {"x": x2, "done": no}, 1, True) == 0
    assert flags[:2] == b"\x00\x01"
    assert torch.equal(root[1], torch.zeros(2))  # not copied: the previous row's next state
    assert torch.equal(nxt[1], x2)
    x2 += 1  # modified in place after the step: its version counter moved
    assert plan.step({"x": x2}, {"x": x0, "done": no}, 2, True) == 0
    assert flags[2] == 0
    assert torch.equal(root[2], x2)
    assert plan.step({"x": x0}, {"x": x1, "done": no}, 3, False) == 0  # a new episode forced
    assert flags[3] == 0
    assert torch.equal(root[3], x0)
    plan.forget()
    assert plan.step({"x": x1}, {"x": x2, "done": no}, 0, True) == 0
    assert flags[0] == 0
    assert torch.equal(root[0], x1)
    assert plan.step({"x": x2}, {"x": x0, "done": torch.tensor([True])}, 1, True) == 1
    assert flags[1] == 1
    assert plan.step({"x": x0}, {"x": x1, "done": no}, 2, True) == 0  # after done: copied
    assert flags[2] == 0
    assert torch.equal(root[2], x0)


@pytest.mark.parametrize("nbytes", [4095, 4096, 4133, 3 * 84 * 84])
def test_plan_copies_frames_exactly_at_any_alignment(nbytes):
    # frames of >= 4 KiB take the non-temporal copy: an unaligned head, 64-byte body, tail
    rows = 3
    buf = torch.zeros(rows * nbytes + 16, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(nbytes)
    frames = [torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen) for _ in range(3)]
    for shift in (0, 1, 7):  # destinations at every alignment
        dst = [buf[shift + i * nbytes : shift + (i + 1) * nbytes] for i in range(rows)]
        plan = _capture.Plan(
            torch.Tensor, ["f"], [1], [torch.uint8], [torch.Size([nbytes])], [nbytes],
            [[d.data_ptr()] for d in dst], [], [], [bytearray(rows)], buf,
        )  # fmt: skip
        buf.zero_()
        for i in range(rows):
            assert plan.step({}, {"f": frames[i][:]}, i, False) == 0
        for i in range(rows):
            assert torch.equal(dst[i], frames[i])
        assert not buf[:shift].any()  # nothing written outside the rows
        assert not buf[shift + rows * nbytes :].any()


def test_plan_reads_tensor_subclasses_through_their_attributes():
    class Marked(torch.Tensor):
        pass

    plan, (root, nxt, _), _ = _plan()
    x0 = torch.tensor([1.0, 2.0]).as_subclass(Marked)
    x1 = torch.nn.Parameter(torch.tensor([3.0, 4.0]), requires_grad=False)
    assert plan.step({"x": x0}, {"x": x1, "done": torch.tensor([False])}, 0, True) == 0
    assert torch.equal(root[0], torch.tensor([1.0, 2.0]))
    assert torch.equal(nxt[0], torch.tensor([3.0, 4.0]))
    wrong = torch.zeros(3).as_subclass(Marked)  # a subclass's shape is checked as well
    assert plan.step({"x": wrong}, {"x": x1, "done": torch.tensor([False])}, 1, True) == -1


def test_plan_refuses_bad_calls():
    plan, _bufs, _flags = _plan()
    x = {"x": torch.zeros(2), "done": torch.tensor([False])}
    with pytest.raises(IndexError, match=r"row 2 out of range \[0, 2\)"):
        plan.step(x, x, 2, True)
    with pytest.raises(TypeError, match=r"step\(root_dict, next_dict, row, may_alias\)"):
        plan.step(x, x, 0)
    with pytest.raises(TypeError, match="two dicts"):
        plan.step(TensorDict(x), x, 0, True)
    f32, s2 = [torch.float32], [torch.Size([2])]
    cases = [
        ((["x"], [], [], [], [], [], [], [], []), ValueError, "differ in length"),
        ((["x"], [0], f32, s2, [8], [[]], [], [], [bytearray(1)]), ValueError, "one address"),
        ((["x"], [0], f32, s2, [8], [], [3], [], []), ValueError, "done slot is out of range"),
        ((["x"], [0], f32, s2, [8], [], [], [0], []), ValueError, 'next" slot after'),
        ((["x"], [0], f32, s2, [8], [[0]], [], [], [b"a"]), TypeError, "bytearrays"),
        ((["x"], [0], f32, s2, [8], [[0]], [], [], []), ValueError, "one byte per"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            _capture.Plan(torch.Tensor, *args, None)


def test_a_step_after_extend_is_not_aliased_to_the_step_before_it(tmp_path, stub_env, path_kind):
    rollout = stub_env.rollout(4, break_when_any_done=False)
    other = rollout.clone()
    other["observation"] += 100
    other["next", "observation"] += 100
    first = rollout[0].clone()
    then = rollout[1].clone()
    for key in ("observation", "done", "terminated", "truncated"):  # the states
        then[key] = first["next", key]  # the very tensors the writer saw, as step_mdp passes them
    with TrajectoryWriter(tmp_path / "e") as w:
        w.append(first)
        w.extend(other[1:3])  # continues nothing: its first state differs
        w.append(then)  # its root state is not the extend's last next state
    r = TrajectoryReader(tmp_path / "e")
    got = [r.episodes[i] for i in range(len(r.episodes))]
    assert [len(e) for e in got] == [1, 2, 1]
    assert torch.equal(got[2]["observation"][0], first["next", "observation"])


def test_plan_holds_its_alias_flags():
    buf = torch.zeros(2, 1)
    rows = [[buf[0].data_ptr()], [buf[1].data_ptr()]]
    flags = bytearray(2)
    f32, s1 = [torch.float32], [torch.Size([1])]
    plan = _capture.Plan(torch.Tensor, ["x"], [0], f32, s1, [4], rows, [], [], [flags], buf)
    with pytest.raises(BufferError):
        flags.extend(b"x")  # the plan writes into it: it cannot move
    # a temporary bytearray stays alive as long as the plan
    plan = _capture.Plan(torch.Tensor, ["x"], [0], f32, s1, [4], rows, [], [], [bytearray(2)], buf)
    for _ in range(3):
        assert plan.step({"x": torch.ones(1)}, {}, 1, False) == 0
    assert buf[1].item() == 1.0
    del plan
    flags.extend(b"x")
    assert len(flags) == 3


def _bound_plan(capacity: int = 2, buffers: int = 2):
    """_plan's plan, bound to TensorDict steps with ``buffers`` buffers of ``capacity``."""
    plan, bufs, flags = _plan(capacity * buffers)
    plan.bind(TensorDict, 1, 2, capacity)
    return plan, bufs, flags


def _td_step(t: float, done: bool = False):
    root = TensorDict({"x": torch.tensor([t, t])})
    nxt = TensorDict({"x": torch.tensor([t + 1, t + 1]), "done": torch.tensor([done])})
    return root, nxt


def test_append_stages_counts_and_returns_when_the_clock_must_see_a_step():
    plan, (root, nxt, done), _ = _bound_plan(capacity=4, buffers=1)
    assert plan.append(*_td_step(0.0)) == 2  # bound, not armed: the clock sees the first step
    assert (plan.count, plan.pending) == (1, 1)
    assert plan.take() == 1
    assert plan.pending == 0
    plan.arm(2, float("inf"))  # the clock must see the step that makes the count 2
    assert plan.append(*_td_step(1.0)) == 0
    assert plan.append(*_td_step(2.0)) == 2
    assert torch.equal(root[:3, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(nxt[:3, 0], torch.tensor([1.0, 2.0, 3.0]))
    plan.take()
    plan.arm(100, time.monotonic() - 1)  # a deadline passed
    assert plan.append(*_td_step(3.0)) == 2
    assert plan.count == 4
    assert plan.append(*_td_step(4.0)) == -1  # the buffer is full: nothing staged
    assert (plan.count, plan.pending) == (4, 1)
    assert time.monotonic() - plan.ticked < 60
    plan.count = 0
    plan.arm(100, float("inf"))
    assert plan.append(*_td_step(5.0, done=True)) == 1  # an episode ended
    assert done[0].item()
    assert plan.count == 1


def test_append_leaves_what_it_cannot_check_to_the_python_path():
    plan, (root, _, _), _ = _bound_plan(capacity=8, buffers=1)
    plan.arm(100, float("inf"))
    r, n = _td_step(1.0)
    extra = n.clone()
    extra["y"] = torch.zeros(1)
    swapped = TensorDict({"y": torch.zeros(2)})  # same count, another key
    wrong = TensorDict({"x": torch.zeros(3)})
    for args in [(r, extra), (swapped, n), (wrong, n), (r.to_dict(), n), (r.unsqueeze(0), n)]:
        assert plan.append(*args) == -1
    assert plan.count == 0
    assert plan.pending == 0
    with_next = r.clone()
    with_next["next"] = n  # a rollout row: its "next" is not a root key
    assert plan.append(with_next, n) == 0
    plan.blocked = True  # the writer's: a reset, an error or a close to see
    assert plan.append(r, n) == -1
    plan.blocked = False
    assert plan.hold()  # the idle committer's
    assert plan.append(r, n) == -1
    plan.release()
    assert plan.append(r, n) == 0
    assert plan.count == 2
    assert torch.equal(root[1], torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="out of the 8 rows"):
        plan.count = 9
    with pytest.raises(ValueError, match="must divide"):
        _plan(4)[0].bind(TensorDict, 1, 2, 3)


def test_append_finds_nested_keys_and_checks_their_sub_tensordicts():
    # root "a" -> "b" -> "x" [2] (prefixes ("a",) 0 and ("a", "b") 1), "next" "done" [1]
    bufs = [torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.bool)]
    plan = _capture.Plan(
        torch.Tensor, ["x", "done"], [0, 1], [torch.float32, torch.bool],
        [torch.Size([2]), torch.Size([1])], [8, 1],
        [[b[i].data_ptr() for b in bufs] for i in range(4)], [1], [], [bytearray(4)], bufs,
        [1, -1], [(0, -1, "a", 1), (0, 0, "b", 1)],
    )  # fmt: skip
    plan.bind(TensorDict, 1, 1, 4)
    plan.arm(100, float("inf"))
    nxt = TensorDict({"done": torch.tensor([False])})

    def root(value, **extra):
        return TensorDict({"a": TensorDict({"b": TensorDict({"x": value, **extra})})})

    assert plan.append(root(torch.tensor([1.0, 2.0])), nxt) == 0
    assert torch.equal(bufs[0][0], torch.tensor([1.0, 2.0]))
    assert plan.append(root(torch.zeros(2), y=torch.zeros(1)), nxt) == -1  # a nested extra key
    assert plan.append(root(torch.zeros(3)), nxt) == -1  # a nested mismatch
    other = TensorDict({"a": TensorDict({"c": TensorDict({"x": torch.zeros(2)})})})
    assert plan.append(other, nxt) == -1  # the same counts, another nested key
    assert plan.append(TensorDict({"a": {"b": torch.zeros(2)}}), nxt) == -1  # a leaf, not a sub-td
    assert plan.count == 1
    r = root(torch.tensor([3.0, 4.0]))  # step (the Python path's caller) skips the counts
    assert plan.step(r._tensordict, nxt._tensordict, 1, True) == 0
    assert torch.equal(bufs[0][1], torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match="earlier prefix"):
        _capture.Plan(
            torch.Tensor, ["x"], [0], [torch.float32], [torch.Size([2])], [8], [[0]], [], [],
            [bytearray(1)], None, [0], [(0, 0, "a", 1)],
        )  # fmt: skip


def test_hold_fails_while_a_step_is_being_staged():
    plan, _bufs, _ = _bound_plan(capacity=4, buffers=1)
    plan.arm(100, float("inf"))
    held = []

    class Peeking(torch.Tensor):
        """A leaf whose attributes run Python code (another thread could run here)."""

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if not held:
                held.append(plan.hold())
            return super().__torch_function__(func, types, args, kwargs or {})

    r, n = _td_step(1.0)
    r["x"] = r["x"].as_subclass(Peeking)
    assert plan.append(r, n) == 0
    assert held == [False]  # the step was half-staged: the committer must not write now
    assert plan.hold()
    assert plan.append(*_td_step(2.0)) == -1


def test_the_writer_counts_native_steps_for_its_clock(tmp_path, stub_env, path_kind):
    rollout = stub_env.rollout(12, break_when_any_done=False)
    kw = {"commit_every_steps": 4, "commit_on_done": False, "background": False}
    with TrajectoryWriter(tmp_path / "c", **kw) as w:  # commits on disk when they return
        for t in range(6):
            w.append(rollout[t])
            assert w.num_steps == t + 1
            assert w.num_transitions == t + 1
            assert w.clock.pending == (t + 1) % 4
        assert TrajectoryReader(tmp_path / "c").num_steps == 4  # committed at the 4th step
        w.end_episode()  # a reset: the Python path stages the next step
        w.append(rollout[6])
        w.extend(rollout[7:9])
        w.append(rollout[9])
        assert w.num_steps == 10
    r = TrajectoryReader(tmp_path / "c")
    assert r.num_steps == 10


def test_the_idle_committer_never_commits_a_half_staged_step(tmp_path, stub_env, path_kind):
    rollout = stub_env.rollout(3, break_when_any_done=False)
    answers = []

    class Peeking(torch.Tensor):
        """A leaf whose attributes run Python code: the idle committer asks meanwhile."""

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if not answers:
                answers.append(w.commit_if_idle())
            return super().__torch_function__(func, types, args, kwargs or {})

    with TrajectoryWriter(tmp_path / "h", background=False, commit_every_steps=1) as w:
        w.append(rollout[0])
        step = rollout[1].clone()
        step["observation"] = step["observation"].as_subclass(Peeking)
        w.append(step)
        assert answers == [False]  # busy: it commits at its next wake-up
        w.append(rollout[2])
    assert_store_matches(TrajectoryReader(tmp_path / "h"), rollout)
