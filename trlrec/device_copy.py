"""Copies of accelerator tensors to the host that never stall the step loop.

A GPU env's step hands the recorders tensors on the device. :class:`DeviceCopies` takes
each step (or batch, or frame block) as a few tensordicts and, per device index:

1. snapshots its leaves into one flat device buffer on the device's *current* stream
   (the stream the env produced them on, so the snapshot follows the env's kernels and
   the env may overwrite its tensors in place right after);
2. records an event there, makes a side stream of the same device wait for it, and on
   that side stream copies the flat buffer into a pinned host buffer
   (``non_blocking``), then records a second event;
3. hands the host copy (tensordicts of views into the pinned buffer) to its consumer
   only once that second event completed, ``depth - 1`` pushes later (double-buffered
   by default: the env's step ``N + 1`` runs while step ``N`` is copied).

The env's stream never waits for anything, and no list of copies grows: each layout of
leaves has ``depth`` slots (device and host buffers), reused in turn. Leaves on the CPU
are copied into a slot's host buffer when pushed (the env may reuse them); a push with
no accelerator leaf needs none of this (see :meth:`DeviceCopies.wanted`).

The accelerator is reached through a :class:`Device` (its streams, events, buffers and
copies): :class:`CudaDevice` for torch's CUDA, a fake one in the tests, which check the
ordering on a machine without a GPU. Nothing here touches CUDA before a CUDA tensor is
seen: pinned memory is requested only for a CUDA leaf.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from tensordict import TensorDict, TensorDictBase

from trlrec.errors import ConfigError, UnsupportedDataError
from trlrec.storage.schema import _is_leaf  # the store's leaves: non-tensor data included

__all__ = ["CudaDevice", "Device", "DeviceCopies", "Event", "Stream", "default_device"]

_ALIGN = 64  # each leaf's offset in a flat buffer: any dtype's view of it is aligned
_POOLS = 4  # layouts whose slots are kept (a recorder has one for steps, one for batches)

Parts = Mapping[str, "TensorDictBase | torch.Tensor"]
"""What one push copies: named tensordicts (a transition's ``root`` and ``next``) or tensors."""
Consumer = Callable[[dict[str, Any]], None]


class Event(Protocol):
    """A point in a stream's work (``torch.cuda.Event``)."""

    def record(self, stream: Any) -> None:
        """Marks the point the stream's queued work has reached."""
        ...

    def synchronize(self) -> None:
        """Blocks the calling (host) thread until the recorded work is done."""
        ...


class Stream(Protocol):
    """A queue of device work (``torch.cuda.Stream``)."""

    def wait_event(self, event: Any) -> None:
        """Makes the stream's later work wait (on the device) for ``event``'s work."""
        ...


class Device(Protocol):
    """What :class:`DeviceCopies` needs of an accelerator: ``torch.cuda``, or a fake in tests."""

    def placement(self, tensor: torch.Tensor) -> torch.device | None:
        """The accelerator device (with its index) ``tensor`` is on; None for host memory."""
        ...

    def current_stream(self, device: torch.device) -> Stream:
        """The stream ``device``'s work is queued on now (the env's)."""
        ...

    def side_stream(self, device: torch.device) -> Stream:
        """A stream of ``device`` for the copies to the host (the same one at every call)."""
        ...

    def on(self, stream: Stream) -> AbstractContextManager[Any]:
        """A context in which work on the stream's device is queued on ``stream``."""
        ...

    def event(self, device: torch.device) -> Event:
        """A new event of ``device``."""
        ...

    def device_buffer(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """``nbytes`` uninitialised ``uint8`` on ``device``."""
        ...

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """``nbytes`` uninitialised ``uint8`` host memory the device copies into (pinned)."""
        ...

    def copy(self, dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
        """``dst[i].copy_(src[i], non_blocking=True)`` for each ``i``.

        Queued on the current stream of their device (device to device, or device to
        host).
        """
        ...


class CudaDevice:
    """:class:`Device` of torch's CUDA (one side stream per device index).

    Examples:
        >>> import torch
        >>> from trlrec.device_copy import CudaDevice
        >>> CudaDevice().placement(torch.zeros(3)) is None  # host memory: no device copy
        True
    """

    def __init__(self) -> None:
        self._side: dict[int, Any] = {}

    def placement(self, tensor: torch.Tensor) -> torch.device | None:
        """``cuda:<index>`` for a CUDA tensor (the index made explicit), else None."""
        device = tensor.device
        if device.type != "cuda":
            return None
        if device.index is None:  # "cuda" without an index: the current device
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def current_stream(self, device: torch.device) -> Any:
        """``torch.cuda.current_stream(device)``: that device's, not the current device's."""
        return torch.cuda.current_stream(device)

    def side_stream(self, device: torch.device) -> Any:
        """The copy stream of ``device`` (one per index, made on first use)."""
        stream = self._side.get(device.index)
        if stream is None:
            stream = self._side[device.index] = torch.cuda.Stream(device)
        return stream

    def on(self, stream: Any) -> AbstractContextManager[Any]:
        """``torch.cuda.stream(stream)``."""
        return torch.cuda.stream(stream)

    def event(self, device: torch.device) -> Any:
        """A ``torch.cuda.Event``; it belongs to the device of the stream it is recorded on."""
        return torch.cuda.Event()

    def device_buffer(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """``nbytes`` of ``uint8`` on ``device``."""
        return torch.empty(nbytes, dtype=torch.uint8, device=device)

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """``nbytes`` of pinned ``uint8`` (asked for only once a CUDA tensor was seen)."""
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def copy(self, dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
        """Non-blocking copies, one ``_foreach_copy_`` for several."""
        if len(dst) == 1:
            dst[0].copy_(src[0], non_blocking=True)
        else:
            torch._foreach_copy_(dst, src, non_blocking=True)


_DEFAULT: list[Device] = []


def default_device() -> Device:
    """The :class:`Device` new :class:`DeviceCopies` use: :class:`CudaDevice` (made once)."""
    if not _DEFAULT:
        _DEFAULT.append(CudaDevice())
    return _DEFAULT[0]


# ----------------------------------------------------------------------------- layout

LeafSig = tuple[str, Any, torch.Size, torch.dtype, "torch.device | None"]


def _leaves(parts: Parts, device: Device) -> tuple[tuple[LeafSig, ...], list[torch.Tensor]]:
    """Each part's leaves: their signature (part, key, shape, dtype, placement) and tensors."""
    sig: list[LeafSig] = []
    tensors: list[torch.Tensor] = []
    for name, part in parts.items():
        if isinstance(part, torch.Tensor):
            items: Any = [(None, part)]
        else:  # sorted: the same leaves in another order (a reset's td) share a layout
            items = sorted(part.items(True, True, is_leaf=_is_leaf), key=_key_order)
        for key, value in items:
            if not isinstance(value, torch.Tensor):
                raise UnsupportedDataError(
                    f"key {key!r} holds {type(value).__name__}; trlrec copies tensors only "
                    "from a device. Leave it out with in_keys, or encode it as a tensor"
                )
            sig.append((name, key, value.shape, value.dtype, device.placement(value)))
            tensors.append(value)
    return tuple(sig), tensors


def _key_order(item: tuple[Any, Any]) -> tuple[str, ...]:
    key = item[0]
    return (key,) if isinstance(key, str) else tuple(key)


def _place(leaves: list[tuple[int, int]]) -> tuple[list[int], int]:
    """Aligned offsets of leaves ``(index, nbytes)`` in one flat buffer, and its size."""
    offsets, end = [], 0
    for _, nbytes in leaves:
        offsets.append(end)
        end += -(-nbytes // _ALIGN) * _ALIGN
    return offsets, max(end, _ALIGN)


def _view(flat: torch.Tensor, offset: int, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    nbytes = shape.numel() * dtype.itemsize
    return flat[offset : offset + nbytes].view(dtype).view(shape)


class _Group:
    """The leaves of one device index in a slot: a flat device buffer and its host copy."""

    __slots__ = (
        "dev_views",
        "device",
        "done",
        "flat_dev",
        "flat_host",
        "index",
        "pending",
        "ready",
    )

    def __init__(
        self,
        device: torch.device,
        index: list[int],
        flat_host: torch.Tensor,
        flat_dev: torch.Tensor,
        dev_views: list[torch.Tensor],
        events: tuple[Event, Event],
    ) -> None:
        self.device = device
        self.index = index  # the leaves' positions in the layout
        self.flat_host = flat_host
        self.flat_dev = flat_dev
        self.dev_views = dev_views
        self.ready, self.done = events  # made once: the snapshot's end, the copy's end
        self.pending = False  # the copy to flat_host was queued and not waited for yet


class _Slot:
    """Buffers for one push of a layout: per device group, plus host views of every leaf."""

    def __init__(self, sig: tuple[LeafSig, ...], parts: Parts, device: Device) -> None:
        groups: dict[Any, list[int]] = {}
        for i, (_, _, _, _, place) in enumerate(sig):
            groups.setdefault(place, []).append(i)
        nbytes = [leaf[2].numel() * leaf[3].itemsize for leaf in sig]
        host_views: list[torch.Tensor | None] = [None] * len(sig)
        self.groups: list[_Group] = []
        self.host_index: list[int] = []
        self.host_views: list[torch.Tensor] = []
        for place, index in groups.items():
            offsets, size = _place([(i, nbytes[i]) for i in index])
            if place is None:  # plain host memory: never pinned (no CUDA needed)
                host = torch.empty(size, dtype=torch.uint8)
            else:
                host = device.host_buffer(size)
            views = [_view(host, o, *sig[i][2:4]) for i, o in zip(index, offsets, strict=True)]
            for i, v in zip(index, views, strict=True):
                host_views[i] = v
            if place is None:
                self.host_index, self.host_views = index, views
                continue
            flat = device.device_buffer(size, place)
            dev_views = [_view(flat, o, *sig[i][2:4]) for i, o in zip(index, offsets, strict=True)]
            events = (device.event(place), device.event(place))
            self.groups.append(_Group(place, index, host, flat, dev_views, events))
        self.out: dict[str, Any] = {}
        for name, part in parts.items():
            if isinstance(part, torch.Tensor):
                self.out[name] = next(
                    v for s, v in zip(sig, host_views, strict=True) if s[0] == name
                )
                continue
            out = TensorDict({}, batch_size=part.batch_size)
            for i, (owner, key, _, _, _) in enumerate(sig):
                if owner == name:
                    out.set(key, host_views[i])
            self.out[name] = out
        self.busy = False


class DeviceCopies:
    """Copies pushed tensordicts to the host behind the step loop, in push order.

    Args:
        device: the accelerator (default: :func:`default_device`, torch's CUDA).
        depth: pushes whose copies may be in flight at once (2: double-buffered); a push
            hands the oldest copies beyond ``depth - 1`` to their consumers.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from trlrec.device_copy import DeviceCopies
        >>> copies = DeviceCopies()
        >>> step = TensorDict({"obs": torch.arange(3.0)}, batch_size=[3])
        >>> copies.wanted(step)  # CPU leaves only: the step goes its plain way
        False
        >>> got = []
        >>> copies.push({"step": step}, lambda host: got.append(host["step"]["obs"].clone()))
        >>> copies.drain()  # a push is consumed later: at the next pushes, or here
        >>> got
        [tensor([0., 1., 2.])]
    """

    def __init__(self, device: Device | None = None, depth: int = 2) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"depth must be an int >= 1, got {depth!r}")
        self.device = default_device() if device is None else device
        self.depth = depth
        self._pools: OrderedDict[tuple[LeafSig, ...], list[_Slot]] = OrderedDict()
        self._inflight: deque[tuple[_Slot, Consumer]] = deque()

    def __len__(self) -> int:
        """Pushes not yet consumed."""
        return len(self._inflight)

    def wanted(self, value: TensorDictBase | torch.Tensor) -> bool:
        """Whether ``value`` has a leaf on the accelerator (else it needs no device copy)."""
        if isinstance(value, torch.Tensor):
            return self.device.placement(value) is not None
        placement = self.device.placement
        return any(
            isinstance(v, torch.Tensor) and placement(v) is not None
            for v in value.values(True, True)
        )

    def push(self, parts: Parts, consume: Consumer) -> None:
        """Starts copying ``parts``; ``consume(host_parts)`` is called once the copy is done.

        ``host_parts`` holds a tensordict (or tensor) per part, of the same keys, shapes
        and dtypes, whose leaves are views of host buffers: valid during the call only (copy what
        is kept). Consumers are called in push order, from this call (those of the
        pushes beyond the last ``depth - 1``) or from :meth:`drain`.

        Raises:
            UnsupportedDataError: a leaf is not a tensor.
        """
        device = self.device
        sig, tensors = _leaves(parts, device)
        slot = self._free_slot(sig, parts)
        with torch.no_grad():  # a policy's outputs may require grad: their values are copied
            if slot.host_index:  # host leaves: copied now (the caller may reuse them)
                torch._foreach_copy_(slot.host_views, [tensors[i] for i in slot.host_index])
            for group in slot.groups:
                dev = group.device
                # 1. the snapshot on the env's stream, after the kernels that made the leaves
                device.copy(group.dev_views, [tensors[i] for i in group.index])
                group.ready.record(device.current_stream(dev))
                # 2. the side stream waits for it (the env's stream waits for nothing)
                side = device.side_stream(dev)
                side.wait_event(group.ready)
                with device.on(side):
                    device.copy([group.flat_host], [group.flat_dev])
                    group.done.record(side)
                group.pending = True
        slot.busy = True
        self._inflight.append((slot, consume))
        while len(self._inflight) >= self.depth:
            self._consume_oldest()

    def drain(self) -> None:
        """Consumes every push not yet consumed (waits for their copies)."""
        while self._inflight:
            self._consume_oldest()

    def _consume_oldest(self) -> None:
        slot, consume = self._inflight.popleft()
        try:
            for group in slot.groups:
                if group.pending:
                    group.done.synchronize()  # the host waits for this copy, not the env
                    group.pending = False
            consume(slot.out)
        finally:
            slot.busy = False

    def _free_slot(self, sig: tuple[LeafSig, ...], parts: Parts) -> _Slot:
        pool = self._pools.get(sig)
        if pool is None:
            pool = self._pools[sig] = []
            self._evict()
        else:
            self._pools.move_to_end(sig)
        for slot in pool:
            if not slot.busy:
                return slot
        slot = _Slot(sig, parts, self.device)  # at most `depth` per layout
        pool.append(slot)
        return slot

    def _evict(self) -> None:
        """Forget the least recently used layouts beyond a few (their idle buffers go)."""
        while len(self._pools) > _POOLS:
            sig = next(iter(self._pools))
            self._pools.pop(sig)

    def slots(self) -> int:
        """Slots held, all layouts together (bounded: ``depth`` per kept layout)."""
        return sum(len(p) for p in self._pools.values())

    def layouts(self) -> Iterator[tuple[LeafSig, ...]]:
        """The layouts whose slots are kept, least recently used first."""
        return iter(self._pools)
