"""The built sdist and wheel carry the whole package: every module and CUDA source under dg_moe/, the entry
points, and (the sdist) the tests and docs.

An editable install and the source tree import from the checkout, so a subpackage or a kernel source the
build configuration misses only shows in a built distribution: this test builds both, as `python -m build`
does for a release (the wheel from the unpacked sdist). .ci/wheel installs such a wheel into a fresh venv.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from dg_moe import __version__

ROOT = Path(__file__).resolve().parent.parent

# What a developer's tree holds beside the sources: copying it would only slow the build down.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache"
)

# pyproject.toml's [project.scripts] and [project.entry-points.*]: the command line, and the groups through
# which vLLM and SGLang find their adapters in an installed dg_moe.
ENTRY_POINTS = {
    "console_scripts": {"dg-moe": "dg_moe.cli:main"},
    "vllm.general_plugins": {"dg_moe": "dg_moe.integrations.vllm:register"},
    "sglang.srt.plugins": {"dg_moe": "dg_moe.integrations.sglang:register"},
}


def _in_tree(*folders: str) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for folder in folders
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder with the sdist and the wheel, built once for this module's tests."""
    # A copy, so the build's egg-info folder never lands in the checkout; no build isolation, so the test
    # needs no index (the test extra brings build and setuptools).
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCES)
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    return out


def test_wheel_holds_every_module_cuda_source_and_entry_point(dist: Path):
    (wheel_path,) = dist.glob(f"dg_moe-{__version__}-py3-none-any.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        names = wheel.namelist()
        (entry_points_txt,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str  # keep names as written (dg-moe, not lower-cased)
        entry_points.read_string(wheel.read(entry_points_txt).decode())
    in_tree = _in_tree("dg_moe")
    assert any(name.startswith("dg_moe/csrc/launch/") and name.endswith(".cu") for name in in_tree)
    assert any(name.startswith("dg_moe/csrc/kernels/") and name.endswith(".cuh") for name in in_tree)
    assert {name for name in names if ".dist-info/" not in name} == in_tree
    assert {group: dict(entry_points[group]) for group in entry_points.sections()} == ENTRY_POINTS
    # Each entry point must name a module the wheel ships.
    for group in ENTRY_POINTS.values():
        for target in group.values():
            assert target.split(":")[0].replace(".", "/") + ".py" in names


def test_sdist_holds_the_package_tests_and_docs(dist: Path):
    (sdist_path,) = dist.glob(f"dg_moe-{__version__}.tar.gz")
    prefix = f"dg_moe-{__version__}/"
    with tarfile.open(sdist_path) as sdist:
        names = {member.name.removeprefix(prefix) for member in sdist.getmembers() if member.isfile()}
    assert {"pyproject.toml", "README.md", "MANIFEST.in", "PKG-INFO"} <= names
    shipped = {name for name in names if name.split("/")[0] in ("dg_moe", "tests", "docs")}
    assert shipped == _in_tree("dg_moe", "tests", "docs")
