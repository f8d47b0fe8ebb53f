"""Serving-framework adapters, one module per framework (docs/integrations.md).

Each adapter imports its framework only when its ``register()`` runs, so importing dg_moe, or this
package, never imports a serving framework.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any


def lazy_exports(
    module: str, impl: str, exports: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module-level ``__getattr__`` and ``__dir__`` for ``module`` that resolve the names in ``exports``
    from ``impl`` (the module that imports the framework) on first use, so importing ``module`` itself
    never imports the framework."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(impl), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[module]), *exports])

    return __getattr__, __dir__
