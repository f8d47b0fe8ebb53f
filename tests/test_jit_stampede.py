"""The JIT stampede tool (tools/jit_stampede.py) in its compile-only mode, which needs nvcc but no GPU: 4
processes ask for the same 3 sm90_scale variants at once from an empty cache, two entries are corrupted
between the two request rounds; each variant compiles once, each corrupted entry is rebuilt once, every
process loads working libraries and nothing hangs. (The GPU run, 16 x 20 GEMM variants, is in
tools/gpu_reliability.sh.) And the tool's report of a hang: a worker still running at its phase's limit is
killed, and the report names the key whose lock it waited for and the lock's holder."""

from __future__ import annotations

import os
import re
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


@pytest.mark.nvcc
def test_stampede_names_the_lock_a_hung_worker_waits_for(tmp_path: Path) -> None:
    # --hold-lock: the parent takes the corrupted entry's key lock before phase B and never lets go, as a
    # process that leaked it would; every worker blocks on it and phase B overruns its 6 s.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "jit_stampede.py"), "--mode", "compile", "--procs", "2",
         "--variants", "2", "--corrupt", "1", "--timeout-a", "150", "--timeout-b", "6", "--hold-lock",
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=200,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "FAIL worker 0 did not finish phase B within 6 s; killed" in out, out
    waits = re.findall(r"waiting since \+[\d.]+ s for the lock of key ([0-9a-f]{16}) \(kernel\.so differs from the "
                       r"sha256 in meta\.json\); held by the stampede's parent \(--hold-lock\)", out)
    assert len(waits) == 2 and waits[0] == waits[1], out
    assert "in key_lock" in out, out  # each straggler's innermost frame, from faulthandler
