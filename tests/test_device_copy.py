"""DeviceCopies and the recorders' GPU path, driven on the CPU by a fake device.

The fake models what matters of CUDA: work queued on a device's *current* stream (the
env's) runs in order with the env's own work, so it runs at once here; work on a side
stream runs only when an event recorded after it is waited for. Host buffers start
poisoned, so a consumer reading one before its copy's event completed reads poison and
the bit-for-bit comparisons fail. The fake refuses a copy queued on another device's
stream, an event recorded on another device's stream, and any wait on an env's stream.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import TransformedEnv

from tests.storage.helpers import assert_store_matches, assert_td_identical
from trlrec import TensorDictRecorder, TrajectoryReader, VideoRecorder, device_copy
from trlrec.device_copy import CudaDevice, DeviceCopies
from trlrec.errors import ConfigError, UnsupportedDataError

POISON = 0xA5


class FakeStream:
    def __init__(self, fake: FakeDevice, index: int, name: str, deferred: bool) -> None:
        self.fake, self.index, self.name, self.deferred = fake, index, name, deferred
        self.queue: deque[tuple[str, Any]] = deque()

    def wait_event(self, event: FakeEvent) -> None:
        self.fake.log.append(("wait", self.name, event.name))
        if not self.deferred:
            raise AssertionError(f"the env's stream {self.name} was made to wait for {event.name}")
        self.queue.append(("wait", event))

    def enqueue(self, fn: Any) -> None:
        if self.deferred:
            self.queue.append(("op", fn))
        else:
            fn()

    def run_until(self, event: FakeEvent) -> None:
        while self.queue:
            kind, item = self.queue.popleft()
            if kind == "op":
                item()
            elif kind == "wait":
                item.complete()
            else:
                item.completed = True
                if item is event:
                    return
        if not event.completed:
            raise AssertionError(f"{event.name} was never recorded on {self.name}")


class FakeEvent:
    def __init__(self, fake: FakeDevice, index: int, name: str) -> None:
        self.fake, self.index, self.name = fake, index, name
        self.stream: FakeStream | None = None
        self.completed = False

    def record(self, stream: FakeStream) -> None:
        if stream.index != self.index:
            raise AssertionError(f"{self.name} of cuda:{self.index} recorded on {stream.name}")
        self.fake.log.append(("record", self.name, stream.name))
        self.stream, self.completed = stream, False
        if stream.deferred:
            stream.queue.append(("mark", self))
        else:
            self.completed = True

    def complete(self) -> None:
        if not self.completed:
            if self.stream is None:
                raise AssertionError(f"{self.name} waited for but never recorded")
            self.stream.run_until(self)

    def synchronize(self) -> None:
        self.fake.log.append(("sync", self.name, self.stream.name if self.stream else None))
        self.complete()


class FakeDevice:
    """Every tensor is on ``default`` unless registered with :meth:`put` / as a host buffer."""

    def __init__(self, default: str = "cuda:1", current_index: int = 0) -> None:
        self.default = torch.device(default)
        self.current_index = current_index
        self.ranges: list[tuple[int, int, torch.device | None]] = []
        self.log: list[tuple[Any, ...]] = []
        self.buffers = 0
        self.env: dict[int, FakeStream] = {}
        self.side: dict[int, FakeStream] = {}
        self.active: dict[int, FakeStream] = {}
        self.events = 0

    def put(self, t: torch.Tensor, device: str | None) -> torch.Tensor:
        """Say ``t`` lives on ``device`` (None: host memory)."""
        place = None if device is None else torch.device(device)
        nbytes = t.untyped_storage().nbytes()
        start = t.untyped_storage().data_ptr()
        self.ranges.append((start, start + max(1, nbytes), place))
        return t

    def _index(self, device: torch.device) -> int:
        return self.current_index if device.index is None else device.index

    def placement(self, tensor: torch.Tensor) -> torch.device | None:
        ptr = tensor.untyped_storage().data_ptr()
        for lo, hi, place in reversed(self.ranges):
            if lo <= ptr < hi:
                return place
        return self.default

    def current_stream(self, device: torch.device) -> FakeStream:
        i = self._index(device)
        if i in self.active:
            return self.active[i]
        return self.env.setdefault(i, FakeStream(self, i, f"env:{i}", deferred=False))

    def side_stream(self, device: torch.device) -> FakeStream:
        i = self._index(device)
        return self.side.setdefault(i, FakeStream(self, i, f"side:{i}", deferred=True))

    @contextlib.contextmanager
    def on(self, stream: FakeStream) -> Iterator[None]:
        before = self.active.get(stream.index)
        self.active[stream.index] = stream
        try:
            yield
        finally:
            if before is None:
                self.active.pop(stream.index)
            else:
                self.active[stream.index] = before

    def event(self, device: torch.device) -> FakeEvent:
        self.events += 1
        return FakeEvent(self, self._index(device), f"ev{self.events}")

    def device_buffer(self, nbytes: int, device: torch.device) -> torch.Tensor:
        self.buffers += 1
        return self.put(torch.full((nbytes,), 0x5A, dtype=torch.uint8), str(device))

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        self.buffers += 1
        return self.put(torch.full((nbytes,), POISON, dtype=torch.uint8), None)

    def copy(self, dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
        places = {self.placement(t) for t in (*dst, *src)} - {None}
        if len(places) != 1:
            raise AssertionError(f"one copy spans devices {places}")
        (place,) = places
        stream = self.current_stream(place)
        pairs = list(zip(dst, src, strict=True))

        def run() -> None:
            for d, s in pairs:
                d.copy_(s)

        self.log.append(("copy", stream.name, len(pairs)))
        stream.enqueue(run)


@pytest.fixture
def fake(monkeypatch) -> FakeDevice:
    """A fake cuda:1 (current device cuda:0) that new recorders' DeviceCopies use."""
    dev = FakeDevice()
    monkeypatch.setattr(device_copy, "default_device", lambda: dev)
    return dev


def step_td(i: int, batch: int = 4) -> TensorDict:
    """A step of every dtype and layout the store takes, its values a function of ``i``."""
    g = torch.Generator().manual_seed(i)
    return TensorDict(
        {
            "obs": torch.randn(batch, 5, generator=g),
            "wide": torch.randn(batch, 3, generator=g, dtype=torch.float64),
            "half": torch.randn(batch, 2, generator=g).to(torch.bfloat16),
            "action": torch.randint(0, 9, (batch, 1), generator=g),
            "strided": torch.randn(3, batch, generator=g).t(),  # not contiguous
            "empty": torch.zeros(batch, 0),
            "next": {
                "done": torch.rand(batch, 1, generator=g) > 0.5,
                "pix": torch.randint(0, 255, (batch, 2, 3, 3), generator=g, dtype=torch.uint8),
                "c": torch.randn(batch, 2, generator=g, dtype=torch.complex64),
            },
        },
        batch_size=[batch],
    )


# ----------------------------------------------------------------------------- DeviceCopies


def test_copies_are_bit_exact_and_consumed_only_after_their_event(fake):
    copies = DeviceCopies(fake)
    got, want = [], []

    def consume(host):
        kind, event, stream = fake.log[-1]  # the host waited for this copy, then reads it
        assert (kind, stream) == ("sync", "side:1")
        assert next(e for e in fake.log if e[1] == event) == ("record", event, "side:1")
        got.append(host["step"].clone())

    for i in range(6):
        td = step_td(i)
        want.append(td.clone())
        copies.push({"step": td}, consume)
        td.apply_(lambda x: x.zero_() if x.dtype != torch.bool else x.logical_not_())
    copies.drain()
    assert len(got) == 6
    for g, w in zip(got, want, strict=True):
        assert_td_identical(g, w)  # the snapshot, not what the env wrote afterwards


def test_consumer_reads_nothing_before_the_copy_completed(fake):
    """The host buffer holds poison until the side stream ran: a read before is caught."""
    copies = DeviceCopies(fake)
    seen = []
    copies.push({"x": torch.arange(16.0)}, lambda host: seen.append(host["x"].clone()))
    (slot,) = [s for pool in copies._pools.values() for s in pool]
    host = slot.groups[0].flat_host
    assert bool((host == POISON).all())  # queued, not copied: the env goes on meanwhile
    copies.drain()
    assert torch.equal(seen[0], torch.arange(16.0))
    syncs = [e for e in fake.log if e[0] == "sync"]
    assert syncs
    assert all(stream.startswith("side:") for _, _, stream in syncs)


def test_events_and_copies_go_to_the_leaf_device_not_the_current_one(fake):
    """cuda:1 while the current device is cuda:0: every event and copy is on cuda:1's streams."""
    assert fake.current_index == 0
    copies = DeviceCopies(fake)
    copies.push({"step": step_td(0)}, lambda host: None)
    copies.drain()
    records = [(stream) for kind, _, stream in fake.log if kind == "record"]
    assert records == ["env:1", "side:1"]  # ready on the env's stream, done on the side one
    copy_streams = [stream for kind, stream, _ in fake.log if kind == "copy"]
    assert copy_streams == ["env:1", "side:1"]  # the snapshot, then the copy to the host
    assert [e for e in fake.log if e[0] == "wait"] == [("wait", "side:1", "ev1")]
    assert set(fake.env) == {1}  # nothing touched cuda:0
    assert set(fake.side) == {1}


def test_leaves_on_two_devices_are_copied_on_each_devices_streams(fake):
    copies = DeviceCopies(fake)
    a = fake.put(torch.arange(6.0), "cuda:0")
    b = torch.arange(4, dtype=torch.int32)  # the default: cuda:1
    got = []
    copies.push({"t": TensorDict({"a": a, "b": b}, [])}, lambda h: got.append(h["t"].clone()))
    copies.drain()
    assert torch.equal(got[0]["a"], a)
    assert torch.equal(got[0]["b"], b)
    records = sorted(stream for kind, _, stream in fake.log if kind == "record")
    assert records == ["env:0", "env:1", "side:0", "side:1"]


def test_double_buffering_overlaps_the_next_step_with_the_copy(fake):
    for depth in (2, 3):
        copies = DeviceCopies(fake, depth=depth)
        consumed: list[float] = []

        def consume(host, consumed=consumed):
            consumed.append(float(host["x"][0]))  # a view: read while it is valid

        for i in range(5):
            copies.push({"x": torch.full((8,), float(i))}, consume)
            # the copies of the last depth - 1 pushes are in flight while the env steps on
            assert len(consumed) == max(0, i + 2 - depth)
            assert len(copies) == min(i + 1, depth - 1)
            assert fake.side[1].queue  # this push's copy is still queued
        copies.drain()
        assert consumed == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_memory_stays_flat_over_many_pushes(fake):
    copies = DeviceCopies(fake)
    for i in range(400):
        copies.push({"step": step_td(i % 7)}, lambda host: None)
        assert len(copies) <= 1
        assert len(fake.side[1].queue) <= 3  # wait, copy, mark: one push in flight
    assert fake.buffers == 2 * 2  # depth slots, each a device and a host buffer
    assert copies.slots() == 2
    for n in range(1, 12):  # many layouts: only a few are kept
        copies.push({"x": torch.zeros(n)}, lambda host: None)
    assert copies.slots() <= 4 * 2
    assert len(list(copies.layouts())) <= 4


def test_host_leaves_are_copied_at_push_and_skip_the_device(fake):
    copies = DeviceCopies(fake)
    cpu = fake.put(torch.arange(5.0), None)
    gpu = torch.arange(3.0)
    got = []
    copies.push({"t": TensorDict({"c": cpu, "g": gpu}, [])}, lambda h: got.append(h["t"].clone()))
    cpu.zero_()  # the env reuses its CPU buffer before the copy is consumed
    copies.drain()
    assert torch.equal(got[0]["c"], torch.arange(5.0))
    assert torch.equal(got[0]["g"], gpu)
    assert copies.wanted(TensorDict({"c": cpu}, [])) is False
    assert copies.wanted(TensorDict({"c": cpu, "g": gpu}, [])) is True


def test_cpu_only_torch_never_asks_for_pinned_memory(monkeypatch, tmp_path, stub_env_cls):
    def refuse(self, nbytes):
        raise AssertionError("pinned memory requested for CPU tensors")

    monkeypatch.setattr(CudaDevice, "host_buffer", refuse)
    copies = DeviceCopies()
    assert isinstance(copies.device, CudaDevice)
    step = step_td(0)
    assert copies.wanted(step) is False
    copies.push({"s": step}, lambda host: None)  # all host leaves: plain memory
    copies.drain()
    env = TransformedEnv(stub_env_cls(batch_size=(2,)), TensorDictRecorder(tmp_path / "run"))
    rollout = env.rollout(7, break_when_any_done=False)
    env.transform.close()
    assert env.transform._async is False  # CPU leaves: the writer gets the steps directly
    assert_store_matches(TrajectoryReader(tmp_path / "run"), rollout)


def test_bad_depth_and_non_tensor_leaves(fake):
    with pytest.raises(ConfigError, match="depth must be an int >= 1, got 0"):
        DeviceCopies(fake, depth=0)
    td = TensorDict({"x": torch.zeros(2)}, [])
    td.set_non_tensor("label", "hello")
    with pytest.raises(UnsupportedDataError, match="'label' holds NonTensorData"):
        DeviceCopies(fake).push({"t": td}, lambda host: None)


# ----------------------------------------------------------------------------- recorders


def test_recorder_steps_on_a_gpu_are_stored_bit_exact(tmp_path, fake, stub_env_cls):
    torch.manual_seed(0)
    env = TransformedEnv(
        stub_env_cls(episode_lengths=(3, 4, 5), batch_size=(3,), pixels=(2, 2, 3)),
        TensorDictRecorder(tmp_path / "run"),
    )
    rollout = env.rollout(13, break_when_any_done=False)  # partial resets on the way
    rec = env.transform
    assert rec._async is True
    assert len(rec._copies) == 1  # the last step is still being copied
    pushes = [e for e in fake.log if e[0] == "record" and e[2] == "side:1"]
    syncs = [e for e in fake.log if e[0] == "sync"]
    assert len(syncs) == len(pushes) - 1  # resets rode along: no drain, no wait
    rec.close()
    assert_store_matches(TrajectoryReader(tmp_path / "run"), rollout)
    assert not [e for e in fake.log if e[0] == "wait" and e[1].startswith("env")]
    assert fake.buffers <= 2 * 2 * 2  # steps and steps-with-reset layouts, two slots each


def test_dump_after_a_reset_keeps_the_reset_in_order(tmp_path, fake, stub_env_cls):
    """A reset behind an in-flight copy, then dump(), then more steps: episodes stay exact."""
    torch.manual_seed(0)
    rec = TensorDictRecorder(tmp_path / "run")
    env = TransformedEnv(stub_env_cls(episode_lengths=(2, 3), batch_size=(2,)), rec)
    td = env.reset()
    rows = []
    for t in range(9):
        td.set("action", torch.randint(0, 3, (2, 1)))
        row, td = env.step_and_maybe_reset(td)
        rows.append(row.clone())
        if t in (1, 3):  # sub-env 0 was just reset: its mask waits for the next push
            assert rec._pending_reset is not None
            rec.dump()
            assert rec._pending_reset is None
            assert len(rec._copies) == 0
    rec.close()
    assert_store_matches(TrajectoryReader(tmp_path / "run"), torch.stack(rows, dim=1))


def _steps_with_resets(path, stub_env_cls) -> TrajectoryReader:
    torch.manual_seed(0)
    rec = TensorDictRecorder(path)
    env = TransformedEnv(stub_env_cls(episode_lengths=(3, 4), batch_size=(2,)), rec)
    td = env.reset()
    for t in range(8):
        td.set("action", torch.randint(0, 3, (2, 1)))
        _, td = env.step_and_maybe_reset(td)
        if t in (2, 5):
            td = env.reset()  # all sub-envs, right after a partial reset: the masks merge
    rec.close()
    return TrajectoryReader(path)


def test_resets_between_steps_give_the_cpu_paths_episodes(tmp_path, monkeypatch, stub_env_cls):
    want = _steps_with_resets(tmp_path / "cpu", stub_env_cls)
    fake = FakeDevice()
    monkeypatch.setattr(device_copy, "default_device", lambda: fake)
    got = _steps_with_resets(tmp_path / "gpu", stub_env_cls)
    assert [e for e in fake.log if e[0] == "record"]
    assert got.num_episodes == want.num_episodes > 4
    for i in range(want.num_episodes):
        assert got.episode_info(i) == want.episode_info(i)
        assert_td_identical(got.episodes[i], want.episodes[i])


def test_recorder_extend_of_gpu_batches_overlaps_and_is_bit_exact(tmp_path, fake, stub_env_cls):
    torch.manual_seed(0)
    env = stub_env_cls(episode_lengths=(3, 5), batch_size=(2,))
    rollout = env.rollout(12, break_when_any_done=False)
    rec = TensorDictRecorder(tmp_path / "run")
    rec.extend(rollout[:, :5])
    assert rec.writer is not None
    assert rec.writer.num_transitions == 0  # being copied
    rec.extend(rollout[:, 5:])
    assert rec.writer.num_transitions == 2 * 5  # the first batch, while the second copies
    rec.dump()
    assert rec.writer.num_transitions == 2 * 12
    rec.close()
    assert_store_matches(TrajectoryReader(tmp_path / "run"), rollout)


class FrameLogger:
    def __init__(self) -> None:
        self.videos: list[SimpleNamespace] = []

    def log_video(self, name: str, video: torch.Tensor, step: int | None = None, **kw: Any):
        self.videos.append(SimpleNamespace(name=name, frames=video[0].clone(), step=step))


def _videos(tmp_path, name, stub_env_cls, batch, make_grid, steps=9):
    torch.manual_seed(0)
    logger = FrameLogger()
    rec = VideoRecorder(
        logger, tag="v", in_keys=["pixels"], make_grid=make_grid, spool_dir=tmp_path / name
    )
    env = TransformedEnv(
        stub_env_cls(episode_lengths=(3, 4), batch_size=batch, pixels=(4, 6, 3)), rec
    )
    env.rollout(steps, break_when_any_done=False)
    batch_td = env.rollout(steps, break_when_any_done=False)
    rec.extend(batch_td)
    rec.dump()
    rec.close()
    return rec, logger


@pytest.mark.parametrize(("batch", "make_grid"), [((), True), ((4,), True), ((3,), False)])
def test_video_frames_on_a_gpu_equal_the_cpu_path(
    tmp_path, monkeypatch, stub_env_cls, batch, make_grid
):
    _, want = _videos(tmp_path, "cpu", stub_env_cls, batch, make_grid)
    fake = FakeDevice()
    monkeypatch.setattr(device_copy, "default_device", lambda: fake)
    rec, got = _videos(tmp_path, "gpu", stub_env_cls, batch, make_grid)
    assert rec._fast is None  # the CPU fast lane never takes GPU frames
    assert [e for e in fake.log if e[0] == "record"]  # the device path was taken
    assert want.videos
    assert [(v.name, v.step) for v in got.videos] == [(v.name, v.step) for v in want.videos]
    for g, w in zip(got.videos, want.videos, strict=True):
        assert torch.equal(g.frames, w.frames), g.name
