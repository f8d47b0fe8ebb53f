"""The built wheel carries the whole package: every module and CUDA source under dg_moe/, nothing else.

An editable install and the source tree import from the checkout, so a subpackage or a kernel source the
build configuration misses only shows in a wheel: this test builds one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What a developer's tree holds beside the sources: copying it would only slow the build down.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache"
)


def _build_wheel(tmp_path: Path) -> Path:
    # A copy, so the build's build/ and egg-info folders never land in the checkout; no build isolation, so
    # the test needs no index (the test extra brings setuptools).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCES)
    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("dg_moe-*.whl")
    return wheel


def test_wheel_holds_every_module_and_cuda_source(tmp_path: Path):
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
        (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
        plugins = wheel.read(entry_points).decode()
    in_tree = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "dg_moe").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert any(name.startswith("dg_moe/csrc/launch/") for name in in_tree)
    assert {name for name in names if ".dist-info/" not in name} == in_tree
    # The serving frameworks find the adapters through these entry points: they must name shipped modules.
    for framework in ("vllm", "sglang"):
        assert f"dg_moe.integrations.{framework}:register" in plugins
        assert f"dg_moe/integrations/{framework}.py" in names
