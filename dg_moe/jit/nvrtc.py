"""NVRTC backend (``DG_MOE_JIT_BACKEND=nvrtc``): a family's device code to an sm_90a cubin, in-process.

NVRTC compiles device code only. The generated translation unit is the same as nvcc's; under NVRTC
(``__CUDACC_RTC__``) the launch file and the common headers leave their host parts out and keep the
kernel instantiation, ``kKernel`` in the launch file's anonymous namespace, whose mangled name NVRTC
reports through a name expression. The host part (tensor maps, launch) is Python: cubin.py.

libnvrtc is found in the ``nvidia-cuda-nvrtc`` wheel (``nvidia/cu13/lib`` or ``nvidia/cuda_nvrtc/lib``,
the one CUDA builds of torch bring), ``$CUDA_HOME/lib64``, ``/usr/local/cuda/lib64``, then the loader's
path. CUDA's ``cuda_bf16.h``/``cuda_fp8.h`` come from the toolkit or the ``nvidia-cuda-runtime`` wheel;
NVRTC has no C++ standard headers, so ``dg_moe/csrc/rtc`` provides the ``<cstdint>`` and
``<type_traits>`` the kernels include.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompileError, ToolchainNotFoundError
from . import env
from .source import CSRC_DIR
from .toolchain import nvidia_wheel_roots

ARCH = "sm_90a"
RTC_SHIM_DIR = CSRC_DIR / "rtc"
KERNEL_EXPRESSION = "kKernel"
_HEADERS_KEYED = ("cuda_bf16.h", "cuda_bf16.hpp", "cuda_fp16.h", "cuda_fp16.hpp", "cuda_fp8.h", "cuda_fp8.hpp")
_FIX = (
    "`pip install nvidia-cuda-nvrtc` (CUDA builds of torch bring it) or install the CUDA toolkit and set "
    "CUDA_HOME, or point DG_MOE_NVRTC at libnvrtc.so"
)


@dataclass(frozen=True)
class Nvrtc:
    """A loaded libnvrtc and everything about it that enters a cache key."""

    path: Path
    version: str  # "13.0" from nvrtcVersion
    cuda_include: Path  # holds cuda_bf16.h and cuda_fp8.h
    headers_sha256: str  # of CUDA's bf16/fp16/fp8 headers, which NVRTC includes from cuda_include
    lib: ctypes.CDLL


def compile_options(ptxas_verbose: bool) -> list[str]:
    """NVRTC options of every cubin, include dirs aside; all of them enter the cache key.

    NVRTC optimises like nvcc -O3 by default; it has no -fPIC/-shared (no host code) and no
    --expt-relaxed-constexpr (the kernels do not need it: nvcc's flag is for host constexpr calls)."""
    options = [
        "-std=c++17",
        "-lineinfo",
        f"--gpu-architecture={ARCH}",
    ]
    if ptxas_verbose:
        options.append("--ptxas-options=-v")
    return options


def _wheel_lib_dirs() -> Iterator[Path]:
    for root in nvidia_wheel_roots():
        yield from (root / sub / "lib" for sub in ("cu13", "cuda_nvrtc", "cu12"))


def _candidates() -> Iterator[Path]:
    for folder in _wheel_lib_dirs():
        yield from sorted(folder.glob("libnvrtc.so.*"))
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    for home in filter(None, homes):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            folder = Path(home).expanduser() / sub
            yield from sorted(folder.glob("libnvrtc.so.*"))
            yield folder / "libnvrtc.so"


def _load(path: Path) -> ctypes.CDLL:
    # libnvrtc dlopens libnvrtc-builtins by its soname; the wheel's folder is not on the loader's path,
    # so the builtins beside it are loaded first (RTLD_GLOBAL) and the dlopen finds them mapped.
    for builtins in sorted(path.parent.glob("libnvrtc-builtins.so.*")):
        if not builtins.name.endswith(".alt.so") and ".alt." not in builtins.name:
            ctypes.CDLL(str(builtins), mode=os.RTLD_NOW | os.RTLD_GLOBAL)
            break
    return ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_GLOBAL)


def find_nvrtc_library() -> Path:
    """Path of the libnvrtc to use; raises ToolchainNotFoundError naming the places searched."""
    override = os.environ.get("DG_MOE_NVRTC")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ToolchainNotFoundError(f"DG_MOE_NVRTC={override!r} is not a file; point it at libnvrtc.so.N")
        return path.absolute()
    tried = []
    for path in _candidates():
        if path.is_file() and ".alt." not in path.name:
            return path.absolute()
        tried.append(str(path))
    raise ToolchainNotFoundError(f"libnvrtc not found (searched {', '.join(tried[:6]) or 'the nvidia wheels'}); {_FIX}")


def find_rtc_include(nvrtc_path: Path) -> Path:
    """Folder with cuda_bf16.h and cuda_fp8.h (CUDA_HOME, the nvidia wheels, /usr/local/cuda)."""
    roots = [os.environ.get("CUDA_HOME"), str(nvrtc_path.parent.parent)]
    roots += [str(d.parent) for d in _wheel_lib_dirs()]
    roots.append("/usr/local/cuda")
    tried = []
    for root in filter(None, roots):
        for sub in ("include", "targets/x86_64-linux/include", "targets/sbsa-linux/include"):
            inc = Path(root).expanduser() / sub
            if (inc / "cuda_bf16.h").is_file() and (inc / "cuda_fp8.h").is_file():
                return inc
            tried.append(str(inc))
    raise ToolchainNotFoundError(
        f"cuda_bf16.h / cuda_fp8.h not found for NVRTC (searched {', '.join(tried[:6])}); install the CUDA "
        "toolkit and set CUDA_HOME, or `pip install nvidia-cuda-runtime` (its include/ holds them)"
    )


def _headers_sha256(include: Path) -> str:
    digest = hashlib.sha256()
    for name in _HEADERS_KEYED:
        path = include / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def get_nvrtc() -> Nvrtc:
    """libnvrtc, loaded once per process (``runtime.reset()`` forgets it); raises ToolchainNotFoundError."""
    path = find_nvrtc_library()
    try:
        lib = _load(path)
    except OSError as exc:
        raise ToolchainNotFoundError(f"{path} does not load ({exc}); {_FIX}") from exc
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    include = find_rtc_include(path)
    return Nvrtc(path, f"{major.value}.{minor.value}", include, _headers_sha256(include), lib)


def _check(lib: ctypes.CDLL, result: int, what: str, log: str = "") -> None:
    if result != 0:
        text = lib.nvrtcGetErrorString(result).decode(errors="replace")
        raise CompileError(f"{what} failed: {text} ({result})" + (f"\n{log}" if log else ""))


@dataclass(frozen=True)
class CubinResult:
    cubin: bytes
    lowered: dict[str, str]  # name expression -> mangled kernel name
    log: str
    seconds: float


def compile_cubin(
    source: str,
    name: str,
    include_dirs: Sequence[Path],
    options: Sequence[str],
    expressions: Sequence[str] = (KERNEL_EXPRESSION,),
) -> CubinResult:
    """Compile ``source`` (named ``name`` in diagnostics) to an sm_90a cubin with NVRTC.

    Raises CompileError carrying the options and NVRTC's log when the compile fails."""
    nv = get_nvrtc()
    lib = nv.lib
    all_options = [*options, *(f"--include-path={d}" for d in (*include_dirs, RTC_SHIM_DIR, nv.cuda_include))]
    if env.jit_debug():
        print(f"[dg_moe.jit] nvrtc {nv.path} ({nv.version}): {name} {' '.join(all_options)}", file=sys.stderr)
    start = time.perf_counter()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        for expr in expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        encoded = [o.encode() for o in all_options]
        status = lib.nvrtcCompileProgram(prog, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buffer)
        log = buffer.value.decode(errors="replace").strip()
        if status != 0:
            raise CompileError(f"NVRTC failed on {name} (options: {' '.join(all_options)}):\n{log}")
        lowered = {}
        for expr in expressions:
            mangled = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(mangled)),
                   f"nvrtcGetLoweredName({expr})")
            lowered[expr] = mangled.value.decode()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    seconds = time.perf_counter() - start
    if env.ptxas_verbose() and log:
        print(f"[dg_moe.jit] NVRTC report for {name}:\n{log}", file=sys.stderr)
    if env.jit_debug():
        print(f"[dg_moe.jit] NVRTC compiled {name} in {seconds:.2f} s", file=sys.stderr)
    return CubinResult(cubin.raw, lowered, log, seconds)
