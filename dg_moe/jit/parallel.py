"""Compile many variants of one kernel family at once, one nvcc process per worker."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import CompileError
from .runtime import check_toolchain, compile_only, stats
from .source import TemplateArg


@dataclass(frozen=True)
class CompileOutcome:
    """One variant's result in :func:`compile_each`: its kernel.so, or the compiler's error."""

    index: int
    """Position of the variant in the list given."""
    path: Path | None
    compiled: bool
    """True when nvcc ran; False when the cache already held the variant (or the compile failed)."""
    seconds: float
    error: str | None = None


def _compile_one(family: str, source_root: str | None, args: Mapping[str, TemplateArg]) -> Path:
    return compile_only(family, args, source_root=source_root)


def _compile_counted(family: str, index: int, args: Mapping[str, TemplateArg]) -> CompileOutcome:
    # In a worker: the process's counters tell a compile from a cache hit (a worker serves several variants).
    before = stats()
    start = time.perf_counter()
    try:
        path = compile_only(family, args)
    except CompileError as err:
        return CompileOutcome(index, None, False, time.perf_counter() - start, str(err))
    after = stats()
    ran_nvcc = after["compiles"] + after["rebuilds"] > before["compiles"] + before["rebuilds"]
    return CompileOutcome(index, path, ran_nvcc, time.perf_counter() - start)


def _workers(count: int, jobs: int | None) -> int:
    return max(1, min(count, jobs or os.cpu_count() or 1))


def compile_many(family: str, variants: Sequence[Mapping[str, TemplateArg]], jobs: int | None = None,
                 source_root: str | None = None) -> list[Path]:
    """Make sure the cache holds every variant of ``family`` (built from the kernel source tree ``source_root``
    where given, searched before the package's); returns their kernel.so paths in order.

    The JIT serialises compiles inside one process, so the variants go to ``jobs`` worker processes
    (default: one per CPU). Variants already cached cost a look-up; concurrent processes compiling
    the same key wait on its file lock and compile it once.
    """
    check_toolchain()  # a missing nvcc (or libnvrtc) fails here with the install hint, not inside a worker
    if not variants:
        return []
    with ProcessPoolExecutor(max_workers=_workers(len(variants), jobs)) as pool:
        return list(pool.map(partial(_compile_one, family, source_root), variants))


def compile_each(
    family: str, variants: Sequence[Mapping[str, TemplateArg]], jobs: int | None = None
) -> Iterator[CompileOutcome]:
    """As :func:`compile_many`, but yields each variant's outcome as soon as it is done (completion order),
    so a caller can show progress; a variant nvcc rejects is an outcome with its error, the others go on.
    A missing toolchain raises here, before the first outcome is asked for."""
    check_toolchain()
    return _outcomes(family, variants, jobs)


def _outcomes(family: str, variants: Sequence[Mapping[str, TemplateArg]], jobs: int | None) -> Iterator[CompileOutcome]:
    if not variants:
        return
    with ProcessPoolExecutor(max_workers=_workers(len(variants), jobs)) as pool:
        futures = [pool.submit(_compile_counted, family, i, v) for i, v in enumerate(variants)]
        for future in as_completed(futures):
            yield future.result()
