"""build() / compile_only(): from (family, template arguments) to a loaded or cached kernel library
(nvcc: a KernelLibrary of host entries) or kernel (nvrtc: a CubinKernel launched from Python).

A warm ``build`` is one dictionary look-up. The first call per (family, arguments) in a process
computes the cache key (generated source, dg_moe headers it includes, toolchain versions, flags,
arch), then loads the cached library, or compiles it under the key's file lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CompileError
from . import cache, env, nvrtc
from .compiler import ARCH, compile_flags, run_nvcc
from .cubin import CubinKernel
from .library import KernelLibrary
from .source import CSRC_DIR, TemplateArg, forget_headers, header_digests, render_source
from .toolchain import Toolchain, get_toolchain

# Bump when the key material or the entry layout changes: old entries are then never looked up.
KEY_FORMAT = 2  # 2: the backend (nvcc or nvrtc) is part of the key

# (family, sorted template args, source_root, DG_MOE_CACHE_DIR, DG_MOE_PTXAS_VERBOSE, DG_MOE_JIT_BACKEND)
_Memo = tuple[Any, ...]
Loaded = KernelLibrary | CubinKernel


@dataclass(frozen=True)
class _Prepared:
    family: str
    key: str
    source: str
    material: dict[str, Any]
    include_dirs: tuple[Path, ...]
    flags: tuple[str, ...]
    toolchain: Toolchain | None  # None for the nvrtc backend
    backend: str = "nvcc"

    @property
    def artifact(self) -> str:
        return cache.CUBIN_FILE if self.backend == "nvrtc" else cache.LIBRARY_FILE


_lock = threading.RLock()
_loaded: dict[_Memo, Loaded] = {}
_by_key: dict[tuple[Path, str], Loaded] = {}
_stats = {"memory_hits": 0, "disk_hits": 0, "compiles": 0, "rebuilds": 0}


def _debug(message: str) -> None:
    if env.jit_debug():
        print(f"[dg_moe.jit] {message}", file=sys.stderr)


def check_toolchain() -> None:
    """Raise ToolchainNotFoundError now when the backend in force cannot compile (before any worker)."""
    if env.backend() == "nvrtc":
        nvrtc.get_nvrtc()
    else:
        get_toolchain()


def _prepare(family: str, template_args: Mapping[str, TemplateArg], source_root: Path | None) -> _Prepared:
    backend = env.backend()
    source = render_source(family, template_args)
    roots = ([source_root] if source_root is not None else []) + [CSRC_DIR]
    headers = header_digests(source, roots)
    if not any(name == f"launch/{family}.cu" for name, _ in headers):
        searched = ", ".join(map(str, roots))
        raise ValueError(f"unknown kernel family {family!r}: no launch/{family}.cu under {searched}")
    # What every backend's key covers; each adds its compiler's identity and flags.
    common = {
        "format": KEY_FORMAT,
        "backend": backend,
        "family": family,
        "template_args": dict(template_args),
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
        "headers": headers,
    }
    if backend == "nvrtc":
        return _prepare_nvrtc(family, source, roots, common)
    tc = get_toolchain()
    flags = compile_flags(env.ptxas_verbose())
    material = {
        **common,
        "cutlass_version": tc.cutlass_version,
        "nvcc_version": tc.nvcc_version,
        "nvcc_build": tc.nvcc_build,
        "flags": flags,
        "arch": ARCH,
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    include_dirs = (*roots, tc.cutlass_include)
    return _Prepared(family, key, source, material, include_dirs, tuple(flags), tc)


def _prepare_nvrtc(family: str, source: str, roots: list[Path], common: dict[str, object]) -> _Prepared:
    nv = nvrtc.get_nvrtc()
    options = nvrtc.compile_options(env.ptxas_verbose())
    shims = header_digests("".join(f'#include "{p.name}"\n' for p in sorted(nvrtc.RTC_SHIM_DIR.iterdir())),
                           [nvrtc.RTC_SHIM_DIR])
    material = {
        **common,
        "rtc_shims": shims,
        "nvrtc_version": nv.version,
        "cuda_headers_sha256": nv.headers_sha256,
        "flags": options,
        "kernel_expressions": [nvrtc.KERNEL_EXPRESSION],
        "arch": nvrtc.ARCH,
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return _Prepared(family, key, source, material, tuple(roots), tuple(options), None, "nvrtc")


def cache_key(
    family: str, template_args: Mapping[str, TemplateArg] | None = None, *, source_root: Path | None = None
) -> str:
    """The cache key ``build`` would use now (re-reading headers: no per-process memo)."""
    forget_headers()
    return _prepare(family, template_args or {}, _root(source_root)).key


def _compile_nvrtc(prep: _Prepared, staging: Path) -> None:
    (staging / cache.SOURCE_FILE).write_text(prep.source)
    result = nvrtc.compile_cubin(prep.source, cache.SOURCE_FILE, prep.include_dirs, prep.flags)
    (staging / cache.CUBIN_FILE).write_bytes(result.cubin)
    meta = {**prep.material, "key": prep.key, "nvrtc": str(nvrtc.get_nvrtc().path), "compile_seconds": result.seconds,
            "kernels": result.lowered, "created": time.time()}
    cache.write_meta(staging, meta, cache.CUBIN_FILE)


def _compile(prep: _Prepared, root: Path, entry: Path) -> None:
    staging = cache.staging_dir(root, prep.family, prep.key)
    try:
        if prep.backend == "nvrtc":
            _compile_nvrtc(prep, staging)
            cache.publish(staging, entry)
            _stats["compiles"] += 1
            return
        assert prep.toolchain is not None
        source = staging / cache.SOURCE_FILE
        source.write_text(prep.source)
        nvcc = prep.toolchain.nvcc
        library_dirs = [] if prep.toolchain.cuda_lib is None else [prep.toolchain.cuda_lib]
        seconds = run_nvcc(nvcc, source, staging / cache.LIBRARY_FILE, prep.include_dirs, prep.flags, library_dirs)
        meta = {**prep.material, "key": prep.key, "nvcc": str(nvcc), "compile_seconds": seconds}
        meta["created"] = time.time()
        cache.write_meta(staging, meta)
        cache.publish(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _stats["compiles"] += 1


def _load_cubin(prep: _Prepared, entry: Path) -> CubinKernel | str:
    # The cubin reaches the driver at the first launch; here only its kernel's name is looked up.
    try:
        meta = json.loads((entry / cache.META_FILE).read_text())
        return CubinKernel(entry / cache.CUBIN_FILE, meta["kernels"][nvrtc.KERNEL_EXPRESSION], prep.family, prep.key)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"kernel.cubin's meta.json names no {nvrtc.KERNEL_EXPRESSION} ({exc!r})"


def _load(prep: _Prepared, entry: Path) -> Loaded | str:
    if prep.backend == "nvrtc":
        return _load_cubin(prep, entry)
    try:
        return KernelLibrary(entry / cache.LIBRARY_FILE, prep.family, prep.key)
    except (OSError, AttributeError) as exc:
        return f"kernel.so does not load ({exc})"


def _existing(prep: _Prepared, entry: Path, load: bool, when: str) -> tuple[Loaded | Path | None, str | None]:
    """(the cached library or kernel.so, None) when the entry is intact, else (None, what is wrong)."""
    problem = cache.check_entry(entry, prep.key, KEY_FORMAT, prep.artifact)
    if problem is None:
        result = _load(prep, entry) if load else entry / prep.artifact
        if not isinstance(result, str):
            _stats["disk_hits"] += 1
            _debug(f"cache hit{when}: {prep.family} {entry}")
            return result, None
        problem = result
    return None, problem


def _ensure(prep: _Prepared, root: Path, load: bool) -> Loaded | Path:
    """The loaded library (load=True) or the path of an intact kernel.so, compiling if needed."""
    entry = cache.entry_dir(root, prep.family, prep.key)
    found, problem = _existing(prep, entry, load, "")
    if found is not None:
        return found
    _debug(f"cache miss: {prep.family} {entry} ({problem})")
    with cache.key_lock(root, prep.family, prep.key):
        # Another process may have published (or repaired) the entry while we waited.
        found, problem = _existing(prep, entry, load, " after waiting for the key lock")
        if found is not None:
            return found
        if problem != cache.ABSENT:
            _debug(f"discarding corrupt entry {entry}: {problem}")
            cache.discard(entry)
            _stats["rebuilds"] += 1
        _compile(prep, root, entry)
    if not load:
        return entry / prep.artifact
    result = _load(prep, entry)
    if isinstance(result, str):
        raise CompileError(f"{prep.family}: {prep.backend} built {entry / prep.artifact} but {result}")
    return result


def _root(source_root: Path | str | None) -> Path | None:
    return None if source_root is None else Path(source_root).resolve()


def build(
    family: str,
    template_args: Mapping[str, TemplateArg] | None = None,
    *,
    source_root: Path | str | None = None,
) -> Loaded:
    """Load (compiling on first use) the library of ``family`` instantiated with ``template_args``:
    a KernelLibrary (its host entries), or under DG_MOE_JIT_BACKEND=nvrtc a CubinKernel (the kernel,
    launched by the family's Python launcher; the cubin reaches the driver at its first launch).

    ``template_args`` become ``#define DG_MOE_<NAME> <value>`` ahead of ``#include "launch/<family>.cu"``.
    ``source_root`` is an extra source tree searched before ``dg_moe/csrc`` (tests, out-of-tree kernels).
    Raises ToolchainNotFoundError, CompileError, or ValueError for a bad family or argument.
    """
    items = tuple(sorted((template_args or {}).items()))
    environ = os.environ
    memo = (family, items, source_root, environ.get("DG_MOE_CACHE_DIR"), environ.get("DG_MOE_PTXAS_VERBOSE"),
            environ.get("DG_MOE_JIT_BACKEND"))
    lib = _loaded.get(memo)
    if lib is not None:
        _stats["memory_hits"] += 1
        return lib
    with _lock:
        lib = _loaded.get(memo)
        if lib is None:
            prep = _prepare(family, dict(items), _root(source_root))
            root = env.cache_dir()
            lib = _by_key.get((root, prep.key))
            if lib is None:
                lib = _ensure(prep, root, load=True)
                assert isinstance(lib, (KernelLibrary, CubinKernel))
                _by_key[(root, prep.key)] = lib
            _loaded[memo] = lib
        return lib


def compile_only(
    family: str,
    template_args: Mapping[str, TemplateArg] | None = None,
    *,
    source_root: Path | str | None = None,
) -> Path:
    """Make sure the cache holds an intact library for these arguments (no dlopen); return its kernel.so
    (kernel.cubin under DG_MOE_JIT_BACKEND=nvrtc)."""
    with _lock:
        prep = _prepare(family, template_args or {}, _root(source_root))
        path = _ensure(prep, env.cache_dir(), load=False)
        assert isinstance(path, Path)
        return path


def stats() -> dict[str, int]:
    """Counters since the process started: memory_hits, disk_hits, compiles, rebuilds (corrupt entries)."""
    return dict(_stats)


def reset() -> None:
    """Forget every in-process memo (toolchain, header digests, keys, loaded libraries).

    Loaded libraries stay mapped; the next ``build`` re-checks the disk. For tests and long-lived
    processes whose headers or environment changed.
    """
    with _lock:
        _loaded.clear()
        _by_key.clear()
        get_toolchain.cache_clear()
        nvrtc.get_nvrtc.cache_clear()
        forget_headers()


def cache_dir() -> Path:
    """The cache root now in effect (``DG_MOE_CACHE_DIR`` or ``~/.cache/dg_moe``)."""
    return env.cache_dir()


def cache_size_bytes() -> int:
    """Bytes used by the cache (0 when it does not exist yet)."""
    return cache.size_bytes(env.cache_dir())
