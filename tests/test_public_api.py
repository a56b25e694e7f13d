"""The package's public names: ``__all__`` is complete and every name resolves."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import trlrec
import trlrec.errors


def test_every_name_in_all_resolves():
    for name in trlrec.__all__:
        assert getattr(trlrec, name) is not None, name


def test_design_contract_names_are_exported():
    for name in (
        "TensorDictRecorder",
        "VideoRecorder",
        "PixelRenderTransform",
        "TrajectoryWriter",
        "TrajectoryReader",
    ):
        assert name in trlrec.__all__


def test_errors_all_is_complete_and_every_error_is_a_trlrec_error():
    classes = {
        n for n, v in vars(trlrec.errors).items() if inspect.isclass(v) and issubclass(v, Exception)
    }
    assert set(trlrec.errors.__all__) == classes
    for name in classes:
        assert issubclass(getattr(trlrec.errors, name), trlrec.errors.TrlrecError)


def test_every_public_module_declares_all():
    for info in pkgutil.walk_packages(trlrec.__path__, "trlrec."):
        if info.name.split(".")[-1].startswith("_"):
            continue
        module = importlib.import_module(info.name)
        if not info.ispkg:
            assert hasattr(module, "__all__"), f"{info.name} has no __all__"
            for name in module.__all__:
                assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"


def test_unknown_attribute():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        trlrec.Nope  # noqa: B018
