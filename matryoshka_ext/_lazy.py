"""Lazy package attributes: a package lists {name: submodule}, and a name's submodule is imported on first use,
so importing the package costs nothing beyond torch (its submodules pull in matplotlib, datasets, peers, ...)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for `package` that resolves ``exports[name]`` (a submodule) on demand."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
