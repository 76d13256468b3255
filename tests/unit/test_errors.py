"""One exception root: every error class the project defines derives from CardiowatchError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import models
import services
import streaming
from models.errors import CardiowatchError

# modules that need optional heavy imports at import time are still importable here
_PACKAGES = (models, streaming, services)


def _modules():
    for pkg in _PACKAGES:
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


def test_every_public_exception_class_derives_from_the_project_root() -> None:
    found = []
    for mod in _modules():
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == mod.__name__
                    and not name.startswith("_")):
                found.append(obj)
                assert issubclass(obj, CardiowatchError), f"{mod.__name__}.{name} is not a CardiowatchError"
    assert len(found) >= 15, [c.__name__ for c in found]


def test_bad_values_are_also_value_errors() -> None:
    from services.settings import SettingsError
    from streaming.errors import PolicyConfigError

    for cls in (SettingsError, PolicyConfigError):
        with pytest.raises(ValueError):
            raise cls("x")
