"""trlrec: crash-safe, memory-mapped recording of TorchRL rollouts.

Names are imported lazily, so ``import trlrec`` stays cheap and a missing
optional dependency only matters when its class is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "TrajectoryWriter": "trlrec.storage.writer",
    "TrajectoryReader": "trlrec.storage.reader",
    "TensorDictRecorder": "trlrec.transforms.tensordict_recorder",
    "VideoRecorder": "trlrec.transforms.video_recorder",
    "PixelRenderTransform": "trlrec.transforms.pixel_render",
    "PlaybackEnv": "trlrec.playback",
    "as_replay_buffer": "trlrec.storage.reader",
    # as torchrl.record exports its loggers: switching is an import change
    "CSVLogger": "trlrec.loggers",
    "TensorBoardLogger": "trlrec.loggers",
    "TensorboardLogger": "trlrec.loggers",
    "WandbLogger": "trlrec.loggers",
}

__all__ = [*_EXPORTS, "errors", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name == "errors":
        return importlib.import_module("trlrec.errors")
    raise AttributeError(f"module 'trlrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
