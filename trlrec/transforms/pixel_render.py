"""PixelRenderTransform: the parent env's ``render()`` written into the tensordict as ``"pixels"``.

So that a state-based env (CartPole) can be filmed:
``GymEnv("CartPole-v1", render_mode="rgb_array").append_transform(PixelRenderTransform())``
then a :class:`~trlrec.VideoRecorder`. A drop-in for ``torchrl.record.PixelRenderTransform``
(same arguments) without its defects: the list a batched env (``SerialEnv`` /
``ParallelEnv``) returns from ``render()`` is stacked on every call, not only the first;
reading ``observation_spec`` does not reset the env when it can already render (it has
been reset or seeded), and never more than once; a missing ``render_mode="rgb_array"``
gives a :class:`~trlrec.errors.VideoError` that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tensordict import NonTensorData, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data.tensor_specs import Bounded, NonTensor, TensorSpec, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.batched_envs import BatchedEnvBase
from torchrl.envs.transforms import Transform

from trlrec.errors import VideoError

__all__ = ["PixelRenderTransform"]

_RENDER_MODE_HELP = (
    "create the env with render_mode='rgb_array', e.g. "
    "GymEnv('CartPole-v1', render_mode='rgb_array')"
)


class PixelRenderTransform(Transform):
    """Calls the parent env's ``render()`` on reset and step; writes the image under ``"pixels"``.

    Args:
        out_keys: the one key to write (default ``"pixels"``).
        preproc: ``preproc(frame) -> frame``, applied to each frame before it is written:
            on a batched env to each sub-env's image (whether ``render()`` returns a list
            of them or one array whose leading dims are the batch size), else to what
            ``render()`` returns (one image).
        as_non_tensor: write the image as non-tensor data (True) or a tensor (False);
            default: a tensor when the image's leading dims are the env's batch size
            (one image per sub-env), else non-tensor (one image for a whole batch).
        render_method: the name of the env's render method.
        pass_tensordict: pass the tensordict to the render method (stateless envs).
        **kwargs: passed to the render method.

    Raises:
        VideoError: for several out keys; while running, when ``render()`` returns no
            image (the env was not created with ``render_mode="rgb_array"``).

    Turn rendering off and on (e.g. during training steps) with :meth:`switch` or
    ``enabled``; a downstream :class:`~trlrec.VideoRecorder` then needs
    ``set_missing_tolerance(True)`` to skip the steps without pixels.
    """

    def __init__(
        self,
        out_keys: list[NestedKey] | NestedKey | None = None,
        preproc: Callable[[Any], Any] | None = None,
        as_non_tensor: bool | None = None,
        render_method: str = "render",
        pass_tensordict: bool = False,
        **kwargs: Any,
    ) -> None:
        if out_keys is None:
            out_keys = ["pixels"]
        elif isinstance(out_keys, str | tuple):
            out_keys = [out_keys]
        out_keys = list(out_keys)
        if len(out_keys) != 1:
            raise VideoError(f"PixelRenderTransform writes one key, got out_keys={out_keys}")
        if preproc is not None and not callable(preproc):
            raise VideoError(f"preproc must be callable, got {preproc!r}")
        if as_non_tensor is not None and not isinstance(as_non_tensor, bool):
            raise VideoError(f"as_non_tensor must be a bool or None, got {as_non_tensor!r}")
        super().__init__(in_keys=[], out_keys=out_keys)
        self.preproc = preproc
        self.as_non_tensor = as_non_tensor
        self.render_method = render_method
        self.pass_tensordict = bool(pass_tensordict)
        self.kwargs = kwargs
        self._enabled = True
        self._frame: tuple[torch.Size, torch.dtype, bool] | None = None

    # ------------------------------------------------------------ switch

    @property
    def enabled(self) -> bool:
        """Whether frames are rendered; settable."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.switch(value)

    def switch(self, mode: bool | str | None = None) -> None:
        """Turns rendering on or off: ``True``/``"on"``, ``False``/``"off"``, None to toggle.

        Raises:
            VideoError: for another value.
        """
        if mode is None:
            mode = not self._enabled
        elif isinstance(mode, str) and mode in ("on", "off"):
            mode = mode == "on"
        elif not isinstance(mode, bool):
            raise VideoError(f"switch() takes True/False, 'on'/'off' or None, got {mode!r}")
        self._enabled = mode

    # ------------------------------------------------------------ transform hooks

    def set_container(self, container: Transform | EnvBase) -> None:
        """Attaches the transform; checks that the env has the render method."""
        out = super().set_container(container)
        parent = self.parent
        if isinstance(parent, EnvBase) and not _not_started(parent):
            method = getattr(parent, self.render_method, None)
            if not callable(method):
                raise VideoError(
                    f"PixelRenderTransform needs a callable {_env_name(parent)}."
                    f"{self.render_method}(), got {method!r}; pass render_method=<name>"
                )
        return out

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        return self._call(tensordict_reset)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        if not self._enabled:
            return next_tensordict
        image = self._render(next_tensordict)
        self._write(next_tensordict, image)
        return next_tensordict

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Renders the parent env into ``tensordict`` (as a step would)."""
        return self._call(tensordict)

    def transform_observation_spec(self, observation_spec: TensorSpec) -> TensorSpec:
        """Adds the spec of the pixels: from the last image, else one ``render()``.

        The env is reset (once) only when it cannot render yet: it was never reset.
        """
        if self._frame is None:
            parent = self.parent
            image = None
            if not _not_started(parent):
                try:
                    image = self._render(None)
                except Exception:  # the env cannot render before its first reset (ResetNeeded...)
                    image = None
            if image is None:
                parent.reset()
                image = self._render(None)
            self._remember(image, parent.batch_size)
        frame = self._frame
        if frame is None:  # _remember sets it, or raises
            raise VideoError("the first frame could not be rendered; check the env's render()")
        shape, dtype, non_tensor = frame
        device = observation_spec.device
        if non_tensor:
            spec: TensorSpec = NonTensor(shape=observation_spec.shape, device=device)
        elif dtype == torch.uint8:
            spec = Bounded(0, 255, shape=shape, dtype=dtype, device=device)
        else:
            spec = Unbounded(shape=shape, dtype=dtype, device=device)
        observation_spec[self.out_keys[0]] = spec
        return observation_spec

    # ------------------------------------------------------------ helpers

    def _render(self, tensordict: TensorDictBase | None) -> torch.Tensor | Any:
        parent = self.parent
        method = getattr(parent, self.render_method)
        args = (tensordict,) if self.pass_tensordict else ()
        image = method(*args, **self.kwargs)
        if self.preproc is not None:
            image = _per_frame(self.preproc, image, parent.batch_size)
        return _as_image(image, parent)

    def _write(self, tensordict: TensorDictBase, image: Any) -> None:
        non_tensor = self._remember(image, tensordict.batch_size)
        key = self.out_keys[0]
        if non_tensor:
            tensordict.set_non_tensor(key, image)
            return
        try:
            tensordict.set(key, image)
        except (RuntimeError, ValueError) as err:
            raise VideoError(
                f"could not write the rendered image (shape {tuple(image.shape)}, dtype "
                f"{image.dtype}) under {key!r} of a tensordict of batch size "
                f"{tuple(tensordict.batch_size)}: {err}. Reshape it with preproc= or pass "
                "as_non_tensor=True"
            ) from err

    def _remember(self, image: Any, batch_size: torch.Size) -> bool:
        """Caches the image's shape/dtype for the spec; returns whether it goes as non-tensor."""
        if not isinstance(image, torch.Tensor):
            self._frame = (batch_size, torch.uint8, True)
            return True
        wanted = self.as_non_tensor
        non_tensor = image.shape[: len(batch_size)] != batch_size if wanted is None else wanted
        self._frame = (image.shape, image.dtype, non_tensor)
        return non_tensor


def _per_frame(preproc: Callable[[Any], Any], image: Any, batch_size: torch.Size) -> Any:
    """``preproc`` applied to each sub-env's frame of a batched render, or to the one image."""
    if isinstance(image, list | tuple):
        return [preproc(item) for item in image]
    lead = len(batch_size)
    if lead and isinstance(image, np.ndarray | torch.Tensor) and image.shape[:lead] == batch_size:
        flat = image.reshape(-1, *image.shape[lead:])
        frames = [preproc(frame) for frame in flat]
        if all(isinstance(f, torch.Tensor) for f in frames):
            stacked: Any = torch.stack(frames)
        else:
            stacked = np.stack([np.asarray(f) for f in frames])
        return stacked.reshape(*batch_size, *stacked.shape[1:])
    return preproc(image)


def _env_name(parent: Any) -> str:
    return type(getattr(parent, "base_env", parent)).__name__


def _not_started(parent: EnvBase) -> bool:
    """A batched env that has not started has no sub-envs to ask for render() yet."""
    base = getattr(parent, "base_env", parent)
    return isinstance(base, BatchedEnvBase) and base.is_closed


def _as_image(image: Any, parent: Any) -> Any:
    """The render output as a tensor: lists of sub-env images are stacked on every call."""
    where = f"{_env_name(parent)}.render()"
    if isinstance(image, list | tuple):
        if not image:
            raise VideoError(
                f"{where} returned an empty {type(image).__name__}; {_RENDER_MODE_HELP}"
            )
        if any(item is None for item in image):
            raise VideoError(f"{where} returned None for a sub-env; {_RENDER_MODE_HELP}")
        if all(isinstance(item, torch.Tensor) for item in image):
            return torch.stack(list(image))
        try:
            image = np.stack([np.asarray(item) for item in image])
        except ValueError as err:
            raise VideoError(
                f"{where} returned images of different shapes "
                f"{[getattr(i, 'shape', None) for i in image]}: {err}"
            ) from err
    if image is None:
        raise VideoError(f"{where} returned None, so there is no frame; {_RENDER_MODE_HELP}")
    if isinstance(image, NonTensorData):
        image = image.data
    if isinstance(image, np.ndarray):
        if image.dtype.kind not in "uif":
            raise VideoError(f"{where} returned an array of dtype {image.dtype}; expected an image")
        return torch.from_numpy(
            np.ascontiguousarray(image) if image.flags.writeable else image.copy()
        )
    if isinstance(image, torch.Tensor):
        return image
    raise VideoError(
        f"{where} returned a {type(image).__name__}, not an image array; {_RENDER_MODE_HELP}"
    )
