"""JIT runtime: toolchain discovery, nvcc or NVRTC compilation, content-addressed kernel cache, ctypes
loader (nvcc libraries) and driver-API launcher (NVRTC cubins)."""

from .cubin import CubinKernel
from .env import print_configs_enabled
from .library import KernelLibrary
from .parallel import CompileOutcome, compile_each, compile_many
from .runtime import build, cache_dir, cache_key, cache_size_bytes, compile_only, reset, stats
from .source import TemplateArg
from .toolchain import Toolchain, get_toolchain, toolchain_info

__all__ = [
    "CompileOutcome",
    "CubinKernel",
    "KernelLibrary",
    "TemplateArg",
    "Toolchain",
    "build",
    "cache_dir",
    "cache_key",
    "cache_size_bytes",
    "compile_each",
    "compile_many",
    "compile_only",
    "get_toolchain",
    "print_configs_enabled",
    "reset",
    "stats",
    "toolchain_info",
]
