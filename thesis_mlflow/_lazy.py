"""Lazy public faces for the subpackages (PEP 562).

Each subpackage's ``__init__`` names its public API, but importing a package must stay cheap:
the CLI starts in well under a second because ``thesis-mlflow --help`` loads neither torch nor
MLflow. So a package's public names resolve to their module only on first use.
"""

from __future__ import annotations

import importlib


def public(package: str, names: dict[str, str]):
    """A module ``__getattr__`` and ``__dir__`` for ``package`` whose public ``names`` map to
    the submodule (relative, without the dot) that defines them."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    def __dir__():
        return sorted(names)

    return __getattr__, __dir__
