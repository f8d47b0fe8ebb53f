"""Find nvcc, its version, the CUDA headers and the CUTLASS/CuTe headers the JIT compiles against.

nvcc is looked up in order: ``DG_MOE_NVCC``, ``$CUDA_HOME/bin/nvcc``, ``PATH``, the
``nvidia-cuda-nvcc`` wheel (``nvidia/cu13/bin/nvcc`` or ``nvidia/cuda_nvcc/bin/nvcc``), then
``/usr/local/cuda/bin/nvcc``. Its version is asked once per nvcc binary and kept in a small file
in the cache directory (keyed by path, mtime and size), so a process that only loads cached
kernels never spawns nvcc.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolchainNotFoundError
from . import env

_NVCC_FIX = (
    "install the CUDA toolkit (12.8+) and set CUDA_HOME or put nvcc on PATH, or install dg_moe's `test` "
    "extra, which brings nvcc and the CUDA headers as wheels, or point DG_MOE_NVCC at an nvcc binary"
)
_CUTLASS_FIX = "`pip install nvidia-cutlass` (its cutlass_library package carries the CUTLASS/CuTe headers)"
_VERSION_RECORD_FORMAT = 1


@dataclass(frozen=True)
class Toolchain:
    """Everything the compiler needs and everything about it that goes into a cache key."""

    nvcc: Path
    nvcc_version: str  # e.g. "13.0.88"
    nvcc_build: str  # nvcc's "Build ..." line, which names the exact compiler build
    cuda_include: Path  # holds cuda.h and cudaTypedefs.h
    cuda_lib: Path | None  # holds libcudart_static.a, when nvcc's own profile may not look there
    cutlass_include: Path  # holds cute/ and cutlass/
    cutlass_version: str


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def nvidia_wheel_roots() -> Iterator[Path]:
    """The folders of the ``nvidia`` namespace package (where NVIDIA's CUDA wheels install), if any."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    yield from (Path(location) for location in spec.submodule_search_locations)


def _wheel_nvcc_candidates() -> Iterator[Path]:
    for root in nvidia_wheel_roots():
        yield from (root / sub / "bin" / "nvcc" for sub in ("cu13", "cuda_nvcc", "cu12"))
        yield from sorted(root.glob("*/bin/nvcc"))


def _nvcc_candidates() -> Iterator[Path]:
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home:
        yield Path(cuda_home).expanduser() / "bin" / "nvcc"
    on_path = shutil.which("nvcc")
    if on_path:
        yield Path(on_path)
    yield from _wheel_nvcc_candidates()
    yield Path("/usr/local/cuda/bin/nvcc")


def find_nvcc() -> Path:
    """Path of the nvcc to use; raises ToolchainNotFoundError naming every place searched."""
    override = os.environ.get("DG_MOE_NVCC")
    if override:
        path = Path(override).expanduser()
        if not _is_executable(path):
            raise ToolchainNotFoundError(
                f"DG_MOE_NVCC={override!r} is not an executable nvcc; point it at an nvcc binary or unset it"
            )
        return path.absolute()
    tried = []
    for path in _nvcc_candidates():
        if _is_executable(path):
            return path.absolute()
        tried.append(str(path))
    raise ToolchainNotFoundError(
        f"nvcc not found (searched DG_MOE_NVCC, CUDA_HOME, PATH, the nvidia-cuda-nvcc wheel and "
        f"/usr/local/cuda: {', '.join(tried[:6])}); {_NVCC_FIX}"
    )


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_mtime_ns, st.st_size]


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        raise ToolchainNotFoundError(f"could not run {args[0]}: {exc}; {_NVCC_FIX}") from exc
    return done.stdout + done.stderr


def _probe_nvcc(nvcc: Path) -> dict[str, str]:
    text = _run([str(nvcc), "--version"])
    match = re.search(r"release (\d+)\.(\d+), V(\d+\.\d+\.\d+)", text)
    if match is None:
        raise ToolchainNotFoundError(f"{nvcc} --version named no CUDA release:\n{text.strip()}\n{_NVCC_FIX}")
    build = next((line.strip() for line in text.splitlines() if line.startswith("Build ")), "")
    # nvcc may be a wrapper script; its dry run names the real installation root (TOP).
    dry = _run([str(nvcc), "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull])
    top = re.search(r"^#\$ TOP=(.+)$", dry, re.MULTILINE)
    root = Path(top.group(1).strip()).resolve() if top else nvcc.resolve().parent.parent
    return {"version": match.group(3), "build": build, "root": str(root)}


def _version_record_path(nvcc: Path) -> Path:
    digest = hashlib.sha256(str(nvcc).encode()).hexdigest()[:16]
    return env.cache_dir() / "toolchain" / f"nvcc-{digest}.json"


def nvcc_probe(nvcc: Path) -> dict[str, str]:
    """nvcc's version, build line and installation root, from the on-disk record when still current."""
    record_path = _version_record_path(nvcc)
    stat = _stat_key(nvcc)
    try:
        record = json.loads(record_path.read_text())
        real = Path(record["root"]) / "bin" / "nvcc"
        if (
            record.get("format") == _VERSION_RECORD_FORMAT
            and record["nvcc"] == str(nvcc)
            and record["stat"] == stat
            and record["real_stat"] == _stat_key(real)
        ):
            return {k: record[k] for k in ("version", "build", "root")}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    probe = _probe_nvcc(nvcc)
    real = Path(probe["root"]) / "bin" / "nvcc"
    record = {"format": _VERSION_RECORD_FORMAT, "nvcc": str(nvcc), "stat": stat, **probe}
    try:
        record["real_stat"] = _stat_key(real)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = record_path.with_name(f"{record_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, record_path)
    except OSError:
        pass  # a read-only cache only costs a probe per process
    return probe


def find_cuda_include(nvcc: Path, root: Path | None = None) -> Path:
    """Directory holding cuda.h and cudaTypedefs.h for this nvcc."""
    roots = [r for r in (root, nvcc.resolve().parent.parent) if r is not None]
    if os.environ.get("CUDA_HOME"):
        roots.append(Path(os.environ["CUDA_HOME"]).expanduser())
    for base in roots:
        for sub in ("include", "targets/x86_64-linux/include", "targets/sbsa-linux/include"):
            inc = base / sub
            if (inc / "cuda.h").is_file() and (inc / "cudaTypedefs.h").is_file():
                return inc
    raise ToolchainNotFoundError(
        f"cuda.h / cudaTypedefs.h not found next to {nvcc} (searched the include/ and targets/*/include/ "
        f"folders of {', '.join(map(str, roots))}); install the full CUDA toolkit and set CUDA_HOME, "
        "or `pip install nvidia-cuda-runtime` beside the nvidia-cuda-nvcc wheel"
    )


def find_cuda_lib(nvcc: Path, root: Path | None = None) -> Path | None:
    """Directory holding libcudart_static.a for this nvcc, or None (then nvcc's defaults apply).

    nvcc's profile links from ``lib64``, which a toolkit install has; the nvidia-cuda-nvcc and
    nvidia-cuda-runtime wheels put the library in ``lib``, where the link fails to find it unless told.
    """
    roots = [r for r in (root, nvcc.resolve().parent.parent) if r is not None]
    for base in roots:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            if (base / sub / "libcudart_static.a").is_file():
                return base / sub
    return None


def _dist_version(site_dir: Path, dist_name: str) -> str | None:
    prefix, suffix = f"{dist_name}-", ".dist-info"
    try:
        with os.scandir(site_dir) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(suffix):
                    return entry.name[len(prefix) : -len(suffix)]
    except OSError:
        pass
    try:
        return importlib.metadata.version(dist_name.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def find_cutlass() -> tuple[Path, str]:
    """(include dir holding cute/ and cutlass/, version of the nvidia-cutlass package)."""
    try:
        spec = importlib.util.find_spec("cutlass_library")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainNotFoundError(f"CUTLASS/CuTe headers not found (no cutlass_library); {_CUTLASS_FIX}")
    package = Path(next(iter(spec.submodule_search_locations)))
    include = package / "source" / "include"
    if not ((include / "cute").is_dir() and (include / "cutlass").is_dir()):
        raise ToolchainNotFoundError(
            f"CUTLASS/CuTe headers not found: {include} lacks cute/ or cutlass/; reinstall: {_CUTLASS_FIX}"
        )
    version = _dist_version(package.parent, "nvidia_cutlass")
    if version is None:  # not from a wheel: the headers' own version stamp stands in for it
        stamp = include / "cutlass" / "version.h"
        version = "unknown"
        if stamp.is_file():
            version = "version.h:" + hashlib.sha256(stamp.read_bytes()).hexdigest()[:16]
    return include, version


@functools.lru_cache(maxsize=1)
def get_toolchain() -> Toolchain:
    """The toolchain, found once per process (``reset()`` forgets it); raises ToolchainNotFoundError."""
    env.backend()
    nvcc = find_nvcc()
    probe = nvcc_probe(nvcc)
    cutlass_include, cutlass_version = find_cutlass()
    return Toolchain(
        nvcc=nvcc,
        nvcc_version=probe["version"],
        nvcc_build=probe["build"],
        cuda_include=find_cuda_include(nvcc, Path(probe["root"])),
        cuda_lib=find_cuda_lib(nvcc, Path(probe["root"])),
        cutlass_include=cutlass_include,
        cutlass_version=cutlass_version,
    )


def toolchain_info() -> dict[str, str | None]:
    """What ``dg-moe info`` prints about the toolchain; never raises (problems go under ``errors``)."""
    info: dict[str, str | None] = {
        "backend": None,
        "nvcc": None,
        "nvcc_version": None,
        "cuda_include": None,
        "cutlass_include": None,
        "cutlass_version": None,
        "cache_dir": str(env.cache_dir()),
    }
    errors: list[str] = []
    try:
        info["backend"] = env.backend()
    except (ValueError, NotImplementedError) as exc:
        errors.append(str(exc))
    try:
        nvcc = find_nvcc()
        info["nvcc"] = str(nvcc)
        probe = nvcc_probe(nvcc)
        info["nvcc_version"] = probe["version"]
        info["cuda_include"] = str(find_cuda_include(nvcc, Path(probe["root"])))
    except (ToolchainNotFoundError, OSError) as exc:
        errors.append(str(exc))
    try:
        include, version = find_cutlass()
        info["cutlass_include"], info["cutlass_version"] = str(include), version
    except (ToolchainNotFoundError, OSError) as exc:
        errors.append(str(exc))
    info["errors"] = "; ".join(errors) if errors else None
    return info
