"""Lazy re-exports: a package's public names, imported from their modules on first use.

``pennello --help`` and ``pennello status`` must not pay for importing torch, Pillow or pystray,
so subpackages export their names through a module-level ``__getattr__`` made here:

    >>> __getattr__ = lazy_exports("pennello.daemon", {"Engine": "engine"})
    >>> __getattr__("Engine").__name__  # doctest: +SKIP
    'Engine'
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that serves ``name`` from ``package.exports[name]``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
