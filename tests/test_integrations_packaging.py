"""How the adapters are packaged: integrations/ installs as dg_moe.integrations, and imports no framework.

These tests need no serving framework installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_package_list_covers_the_tree():
    # pyproject.toml lists the packages (packages.find cannot map dg_moe.integrations to integrations/):
    # a dg_moe subpackage missing from the list would import from the source tree and an editable
    # install, but be absent from a wheel.
    tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "dg_moe").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert set(setuptools_cfg["packages"]) == on_disk | {"dg_moe.integrations"}
    assert setuptools_cfg["package-dir"] == {"dg_moe.integrations": "integrations"}
    assert (ROOT / "integrations" / "__init__.py").is_file()


def test_importing_dg_moe_and_its_adapters_imports_no_framework():
    script = (
        "import sys, dg_moe, dg_moe.integrations, dg_moe.integrations.transformers\n"
        "loaded = sorted(name for name in ('transformers', 'vllm', 'sglang') if name in sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert 'integrations' not in sys.modules, 'imported as a top-level package'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
