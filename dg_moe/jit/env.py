"""Environment variables that steer the JIT, read on each use so tests can change them."""

from __future__ import annotations

import os
from pathlib import Path

BACKENDS = ("nvcc", "nvrtc")


def _enabled(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def cache_dir() -> Path:
    """Root of the kernel cache: ``DG_MOE_CACHE_DIR``, else ``~/.cache/dg_moe``."""
    return Path(os.environ.get("DG_MOE_CACHE_DIR") or "~/.cache/dg_moe").expanduser()


def jit_debug() -> bool:
    """``DG_MOE_JIT_DEBUG=1``: print compile commands, compile times, cache hits and misses to stderr."""
    return _enabled("DG_MOE_JIT_DEBUG")


def ptxas_verbose() -> bool:
    """``DG_MOE_PTXAS_VERBOSE=1``: compile with ``-Xptxas -v`` and print ptxas's register/spill report."""
    return _enabled("DG_MOE_PTXAS_VERBOSE")


def print_configs_enabled() -> bool:
    """``DG_MOE_PRINT_CONFIGS=1``: the config heuristics print the block configuration they choose."""
    return _enabled("DG_MOE_PRINT_CONFIGS")


def backend() -> str:
    """The compiler backend from ``DG_MOE_JIT_BACKEND``: ``nvcc`` (default) or ``nvrtc``.

    ``nvrtc`` compiles device code to a cubin, which ``build`` returns as a CubinKernel that the
    family's Python launcher runs through the CUDA driver (docs/jit.md, "NVRTC backend: design")."""
    name = os.environ.get("DG_MOE_JIT_BACKEND", "").strip().lower() or "nvcc"
    if name not in BACKENDS:
        raise ValueError(f"DG_MOE_JIT_BACKEND={name!r} is not a backend; use one of {', '.join(BACKENDS)}")
    return name
