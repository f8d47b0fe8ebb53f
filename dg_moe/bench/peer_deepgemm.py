"""DeepGEMM as a measurement peer: imported when importable, else the reason it is not.

dg_moe keeps DeepGEMM's API, so a ``deep_gemm`` that is really dg_moe (an alias some setups install)
would compare dg_moe with itself: that counts as not importable too.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import dg_moe


@dataclass(frozen=True)
class DeepGemmStatus:
    """The imported module, or None with the reason."""

    module: ModuleType | None
    version: str | None = None
    path: str | None = None
    reason: str | None = None

    def describe(self) -> dict[str, object]:
        """For the JSON's meta: whether it ran, its version and location, or why not."""
        return {"available": self.module is not None, "version": self.version, "path": self.path,
                "reason": self.reason}

    @property
    def missing(self) -> str:
        """What the DeepGEMM columns show in place of a time."""
        return f"n/a: {self.reason}"


def _is_dg_moe(module: ModuleType) -> bool:
    package_dir = os.path.dirname(os.path.abspath(dg_moe.__file__))
    path = os.path.abspath(getattr(module, "__file__", None) or "")
    return module is dg_moe or path.startswith(package_dir + os.sep)


def load_deep_gemm(disabled: str | None = None) -> DeepGemmStatus:
    """Import ``deep_gemm``; ``disabled`` (e.g. from --no-deepgemm) skips the import and is the reason."""
    if disabled is not None:
        return DeepGemmStatus(None, reason=disabled)
    try:
        module = importlib.import_module("deep_gemm")
    except Exception as err:  # ImportError, OSError from its extension, or whatever its __init__ raises
        first_line = str(err).splitlines()[0] if str(err) else ""
        return DeepGemmStatus(None, reason=f"deep_gemm not importable ({type(err).__name__}: {first_line})")
    path = getattr(module, "__file__", None)
    if _is_dg_moe(module):
        return DeepGemmStatus(None, path=path, reason="deep_gemm resolves to dg_moe itself, not DeepGEMM")
    return DeepGemmStatus(module, version=str(getattr(module, "__version__", "unknown")), path=path)
