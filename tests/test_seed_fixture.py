"""The seed fixture of tests/conftest.py: one seed per test, the same in every process, shown on failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_seed_is_the_crc_of_the_node_id(seed: int, request) -> None:
    assert seed == zlib.crc32(request.node.nodeid.encode())


def _failing_run(tmp_path: Path, hash_seed: str) -> str:
    """Output of a pytest process, with the given PYTHONHASHSEED, whose one test takes the seed and fails."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport, seed  # noqa: F401\n")
    (tmp_path / "test_fails.py").write_text(
        "def test_fails(seed):\n    print('str hash', hash('x'))\n    assert False\n")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fails.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout


def test_a_failure_reports_the_same_seed_in_another_process(tmp_path: Path) -> None:
    hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    out = _failing_run(tmp_path, hash_seed)
    assert re.search(r"str hash (-?\d+)", out).group(1) != str(hash("x")), "strings hash alike: this proves nothing"
    expected = zlib.crc32(b"test_fails.py::test_fails")
    assert re.search(r"-+ seed -+\n" + str(expected) + r", the CRC-32 of the node id", out), out
