"""Compile many variants of one kernel family at once, one nvcc process per worker."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from .runtime import compile_only
from .source import TemplateArg
from .toolchain import get_toolchain


def _compile_one(family: str, args: Mapping[str, TemplateArg]) -> Path:
    return compile_only(family, args)


def compile_many(family: str, variants: Sequence[Mapping[str, TemplateArg]], jobs: int | None = None) -> list[Path]:
    """Make sure the cache holds every variant of ``family``; returns their kernel.so paths in order.

    The JIT serialises compiles inside one process, so the variants go to ``jobs`` worker processes
    (default: one per CPU). Variants already cached cost a look-up; concurrent processes compiling
    the same key wait on its file lock and compile it once.
    """
    get_toolchain()  # a missing nvcc fails here with the install hint, not inside a worker
    if not variants:
        return []
    workers = max(1, min(len(variants), jobs or os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(partial(_compile_one, family), variants))
