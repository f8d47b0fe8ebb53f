"""Paths the repository cites in comments, docstrings and docs lead to files in the repository.

A citation such as ``docs/jit.md`` or ``dg_moe/csrc/kernels/<family>.cuh`` tells a reader where to
look; after a move it silently points nowhere, and a citation of a document kept outside the
repository points where a reader of a clone cannot follow.
"""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCANNED_SUFFIXES = {".py", ".md", ".cu", ".cuh", ".h", ".sh"}
# The perf log is a history: an entry names the files as they were when it was written. This file
# cites missing paths on purpose, to check that they are caught.
NOT_CHECKED = {"docs/perf-log.md", Path(__file__).resolve().relative_to(ROOT).as_posix()}
# A repository-relative path: starts at one of these folders, not inside a longer path or a module
# name, and may carry globs, {a,b} alternatives or <placeholder> segments.
PATH = re.compile(
    r"(?<![\w./-])((?:\.ci|docs|dg_moe|csrc|tests|tools|integrations)(?:/(?:[\w.*<>-]|\{[\w.,-]+\})+)+/?)"
)
OUTSIDE = re.compile(r"PERFORMANCE\.md|ARCHITECTURE\.md|\.\./shared\b")


def _repository_files() -> list[str]:
    """Tracked files and new ones git does not ignore, so a citation is checked before its commit."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in listed.stdout.splitlines()
            if (Path(name).suffix in SCANNED_SUFFIXES or name.startswith(".ci/")) and (ROOT / name).is_file()]


def _expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    # {a,b} lists alternatives; a single name in braces is a placeholder (an f-string field), like <family>.
    choices = match.group(1).split(",") if "," in match.group(1) else ["*"]
    return [expanded for choice in choices
            for expanded in _expand_braces(path[:match.start()] + choice + path[match.end():])]


def cited_paths(text: str) -> list[tuple[int, str]]:
    """(line, path) of each citation in ``text`` that names a file (a last segment with a suffix)
    or a folder (a final /). A bare name such as ``dg_moe/integrations`` is as likely prose as a
    path, so it is left out."""
    cited = []
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if path.endswith("/") or "." in path.rsplit("/", 1)[-1]:
            cited.append((text.count("\n", 0, match.start()) + 1, path))
    return cited


def resolves(path: str) -> bool:
    """Whether every alternative of ``path`` matches something in the repository."""
    return all(glob.glob(re.sub(r"<[^>]*>", "*", alternative), root_dir=ROOT)
               for alternative in _expand_braces(path))


def test_citation_forms_are_recognised():
    text = ("see `docs/jit.md`, dg_moe/csrc/kernels/<family>.cuh and tests/test_sm90_fp8_gemm_{gpu,compile}.py.\n"
            "not: site-packages/vllm/tests/x.py, dg_moe.integrations.vllm, dg_moe/integrations, a/docs/b.md")
    assert cited_paths(text) == [(1, "docs/jit.md"), (1, "dg_moe/csrc/kernels/<family>.cuh"),
                                 (1, "tests/test_sm90_fp8_gemm_{gpu,compile}.py")]
    assert all(resolves(path) for _, path in cited_paths(text))
    assert not resolves("tests/test_sm90_fp8_gemm_{gpu,nothing}.py")
    assert not resolves("csrc/kernels/sm90_fp8_gemm.cuh")  # relative to dg_moe/, not to the repository


def test_cited_paths_exist():
    missing = [f"{name}:{line}: {path}"
               for name in _repository_files() if name not in NOT_CHECKED
               for line, path in cited_paths((ROOT / name).read_text(errors="replace"))
               if not resolves(path)]
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


def test_nothing_cites_documents_outside_the_repository():
    outside = [f"{name}:{number}: {line.strip()}"
               for name in _repository_files()
               for number, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
               if OUTSIDE.search(line)]
    assert not outside, ("citations of documents outside the repository (docs/performance.md holds the facts):\n"
                         + "\n".join(outside))
