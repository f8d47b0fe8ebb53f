"""Importing dg_moe and its adapters imports no serving framework (each imports its own in register()).

This test needs no serving framework installed.
"""

from __future__ import annotations

import subprocess
import sys


def test_importing_dg_moe_and_its_adapters_imports_no_framework():
    script = (
        "import sys, dg_moe, dg_moe.integrations, dg_moe.integrations.transformers\n"
        "import dg_moe.integrations.vllm, dg_moe.integrations.sglang\n"
        "loaded = sorted(name for name in ('transformers', 'vllm', 'sglang') if name in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
