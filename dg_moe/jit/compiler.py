"""Run nvcc on a generated translation unit to produce a kernel library (.so) for sm_90a."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import CompileError
from . import env

ARCH = "sm_90a"


def compile_flags(ptxas_verbose: bool) -> list[str]:
    """nvcc flags of every library, include dirs and file names aside; all of them enter the cache key."""
    flags = [
        "-std=c++17",
        "-O3",
        "--expt-relaxed-constexpr",
        "-lineinfo",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-Xcompiler=-fPIC",
        # Only the extern "C" entries are exported, and the static cudart's symbols stay bound
        # inside the library even when the process already holds another cudart (torch's).
        "-Xcompiler=-fvisibility=hidden",
        "-Xlinker=--exclude-libs=ALL",
        "-Xlinker=--strip-all",  # host symbol tables only: smaller file, faster to hash and map
        "-shared",
    ]
    if ptxas_verbose:
        flags.append("-Xptxas=-v")
    return flags


def run_nvcc(
    nvcc: Path,
    source: Path,
    output: Path,
    include_dirs: Sequence[Path],
    flags: Sequence[str],
    library_dirs: Sequence[Path] = (),
) -> float:
    """Compile ``source`` into the shared library ``output``; return the seconds it took.

    Raises CompileError carrying the command and nvcc's output when nvcc fails.
    """
    command = [
        str(nvcc), *flags, *(f"-I{d}" for d in include_dirs), *(f"-L{d}" for d in library_dirs),
        str(source), "-o", str(output),
    ]
    if env.jit_debug():
        print(f"[dg_moe.jit] compile: {shlex.join(command)}", file=sys.stderr)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    report = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise CompileError(
            f"nvcc failed (exit {done.returncode}) on {source.name}:\n{shlex.join(command)}\n{report}"
        )
    if env.ptxas_verbose() and report:
        print(f"[dg_moe.jit] ptxas report for {source.name}:\n{report}", file=sys.stderr)
    if env.jit_debug():
        print(f"[dg_moe.jit] compiled {output} in {seconds:.2f} s", file=sys.stderr)
    return seconds
