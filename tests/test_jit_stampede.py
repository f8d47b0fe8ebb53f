"""The JIT stampede tool (tools/jit_stampede.py) in its compile-only mode, which needs nvcc but no GPU: 4
processes ask for the same 3 sm90_scale variants at once from an empty cache, two entries are corrupted
between the two request rounds; each variant compiles once, each corrupted entry is rebuilt once, every
process loads working libraries and nothing hangs. (The GPU run, 16 x 20 GEMM variants, is in
tools/gpu_reliability.sh.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.nvcc
def test_compile_only_stampede(tmp_path: Path) -> None:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "jit_stampede.py"), "--mode", "compile", "--procs", "4",
         "--variants", "3", "--corrupt", "2", "--timeout", "150", "--cache-dir", str(cache)],
        capture_output=True, text=True, env=env, timeout=200,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("jit_stampede PASS: 4 procs x 3 variants, compiles A=3 B=2"), done.stdout
    print(last)
