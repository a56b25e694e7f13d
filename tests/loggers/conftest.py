"""The ``backend`` fixture, parametrised over every logger backend, and an offline W&B env.

Tests log through ``backend.logger``, call ``backend.close()`` and read back with
``backend.scalars(name)`` / ``backend.video(name, step)`` (see ``logger_readback.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loggers.logger_readback import Backend
from trlrec.loggers import CSVLogger, MemoryLogger, TensorBoardLogger, WandbLogger


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline, silent W&B environment writing under ``tmp_path``."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    return tmp_path


BACKENDS = ["csv", "tensorboard", "wandb", "memory"]


def make_backend(kind: str, tmp_path: Path) -> Backend:
    if kind == "csv":
        return Backend(kind, CSVLogger("exp", log_dir=tmp_path / "csv"))
    if kind == "tensorboard":
        return Backend(kind, TensorBoardLogger("exp", log_dir=tmp_path / "tb"))
    if kind == "wandb":
        return Backend(kind, WandbLogger("exp", offline=True, save_dir=tmp_path / "wb"))
    return Backend(kind, MemoryLogger("exp"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend in turn; W&B runs offline in ``tmp_path``."""
    if request.param == "wandb":
        request.getfixturevalue("wandb_env")
    b = make_backend(request.param, tmp_path)
    yield b
    b.logger.close()
