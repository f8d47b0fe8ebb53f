"""`dg-moe` as a serving engineer meets it, on any machine: a user error is one stderr line and exit status 2,
--help needs neither a GPU nor nvcc, --version has one source, warmup reports progress and a JSON summary,
and warmup and bench moe offer the same models."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import torch

from dg_moe import __version__, cli
from dg_moe.jit import CompileOutcome, get_toolchain
from dg_moe.moe import warmup
from dg_moe.moe.shapes import MODEL_SHAPES, MoEShape

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--shape", "256,128,8,2", "--batches", "1", "--num-sms", "132"]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without a CUDA GPU, also where the tests run on one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def ampere_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """One visible GPU that is not SM90."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA A100-SXM4-80GB")


@pytest.fixture
def no_nvcc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The JIT finds no nvcc: DG_MOE_NVCC names a file that is not there, and the memo is forgotten."""
    monkeypatch.setenv("DG_MOE_NVCC", str(tmp_path / "no-such-nvcc"))
    get_toolchain.cache_clear()
    yield
    get_toolchain.cache_clear()  # the next test finds the real toolchain again



def user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `dg-moe argv`: exit status 2, nothing on stdout, one stderr line with no traceback; that line."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith(f"{cli.command_name(argv)}: error: ")
    return line


@pytest.mark.parametrize("argv, expected", [
    ([], ["required: command", "`dg-moe --help`"]),
    (["serve"], ["invalid choice: 'serve'", "info"]),
    (["bench"], ["required: what", "`dg-moe bench --help`"]),
    (["bench", "sort"], ["invalid choice: 'sort'", "moe"]),
    (["demo", "--device", "foo"], ["'foo'", "auto, cpu, cuda"]),
    (["demo", "--bogus"], ["unrecognized arguments: --bogus", "`dg-moe demo --help`"]),
    (["warmup", "--models", "llama-3-70b"], ["unknown model(s) llama-3-70b", "mixtral-8x7b"]),
    (["warmup", "--batches", "1,x,-3"], ["--batches", "'1,x,-3'", "e.g. 1,8,128"]),
    (["warmup", "--batches", ""], ["--batches", "positive token counts"]),
    (["warmup", "--shape", "7168,2048,256"], ["--shape", "H,I,E,K[,Is]"]),
    (["warmup", "--shape", "100,2048,256,8"], ["--shape", "multiples of 128"]),
    (["warmup", "--jobs", "0"], ["--jobs", "positive integer"]),
    (["warmup", "--num-sms", "many"], ["--num-sms", "positive integer"]),
    (["warmup", "--models", "deepseek-v3", "--shape", "256,128,8,2"], ["not allowed with"]),
    (["bench", "moe", "--models", "deepseek-v4"], ["unknown model(s) deepseek-v4", "qwen3-30b-a3b"]),
    (["bench", "moe", "--batches", "1,x,-3"], ["--batches", "'1,x,-3'"]),
    (["bench", "gemm", "--family", "sparse"], ["--family", "sparse", "dense"]),
    (["bench", "gemm", "--dry-run", "--jobs", "-1"], ["--jobs", "positive integer"]),
    (["bench", "layout", "--tokens", "8"], ["unrecognized arguments", "`dg-moe bench layout --help`"]),
])
def test_bad_arguments_are_one_line(capsys, argv, expected):
    line = user_error(capsys, argv)
    for text in expected:
        assert text in line


@pytest.mark.parametrize("argv, fix", [
    (["demo", "--device", "cuda"], "--device cpu"),
    (["demo", "--device", "cuda:1"], "--device cpu"),
    (["bench", "moe"], "H100/H200"),
    (["bench", "moe", "--models", "mixtral-8x7b"], "H100/H200"),
    (["bench", "layout"], "CUDA GPU"),
    (["bench", "gemm", "--no-deepgemm"], "--dry-run"),
])
def test_commands_that_need_a_gpu_say_so_without_one(no_gpu, capsys, argv, fix):
    line = user_error(capsys, argv)
    assert "needs a CUDA GPU" in line
    assert fix in line


@pytest.mark.parametrize("argv, problem", [
    (["demo", "--device", "cuda"], "compute capability 8.0"),
    (["demo", "--device", "cuda:3"], "no GPU cuda:3 (1 visible)"),
    (["bench", "moe"], "compute capability 8.0"),
])
def test_a_gpu_that_is_not_sm90_or_not_there_is_a_user_error(ampere_gpu, capsys, argv, problem):
    line = user_error(capsys, argv)
    assert problem in line


def test_warmup_without_nvcc_names_the_fix(no_nvcc, capsys):
    line = user_error(capsys, ["warmup", *TINY])
    assert "DG_MOE_NVCC" in line and "nvcc binary" in line


def test_bench_gemm_warmup_without_nvcc_names_the_fix(no_nvcc, capsys):
    line = user_error(capsys, ["bench", "gemm", "--warmup", "--no-deepgemm", "--family", "dense"])
    assert "nvcc" in line


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    def broken() -> int:
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["info"])


def _python(code: str) -> subprocess.CompletedProcess[str]:
    # Not from the checkout: `python -c` puts its working directory first on sys.path, and .ci/wheel runs this
    # test against the installed wheel.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")


def test_console_process_user_error_and_bug():
    """The real process: exit status and stderr as a shell sees them, for a user error and for a bug."""
    user = _python("import sys; from dg_moe.cli import main; sys.exit(main(['demo', '--device', 'foo']))")
    assert user.returncode == 2
    assert user.stderr.splitlines() == [user.stderr.strip()]
    assert user.stderr.startswith("dg-moe demo: error: --device 'foo'")
    bug = _python("import sys; from dg_moe import cli; cli.cmd_info = lambda: 1 // 0; sys.exit(cli.main(['info']))")
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


@pytest.mark.parametrize("argv, usage", [
    (["--help"], "usage: dg-moe "),
    (["info", "--help"], "usage: dg-moe info"),
    (["demo", "--help"], "usage: dg-moe demo"),
    (["warmup", "--help"], "usage: dg-moe warmup"),
    (["bench", "--help"], "usage: dg-moe bench"),
    (["bench", "moe", "--help"], "usage: dg-moe bench moe"),
    (["bench", "layout", "--help"], "usage: dg-moe bench layout"),
    (["bench", "gemm", "--help"], "usage: dg-moe bench gemm"),
])
def test_help_needs_neither_gpu_nor_nvcc(cuda_untouchable, no_nvcc, capsys, argv, usage):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(usage)
    assert captured.err == ""


def test_version_has_one_source(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"dg-moe {__version__}\n"
    assert importlib.metadata.version("dg-moe") == __version__
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dg_moe.__version__"}


def test_warmup_and_bench_moe_offer_the_same_models(cuda_untouchable, no_nvcc, capsys):
    for argv in (["warmup", "--help"], ["bench", "moe", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert f"comma list of {', '.join(MODEL_SHAPES)}" in text
    assert "mixtral-8x7b" in MODEL_SHAPES


class FakeCompiles:
    """Stands in for the JIT's compile_each: the outcome of each variant, by position, without nvcc."""

    def __init__(self, failing: Sequence[int] = (), cached: Sequence[int] = ()):
        self.failing, self.cached = set(failing), set(cached)
        self.variants: list[Mapping[str, object]] = []

    def __call__(self, family: str, variants: Sequence[Mapping[str, object]], jobs: int) -> Iterator[CompileOutcome]:
        self.variants = list(variants)
        for index in reversed(range(len(variants))):  # completion order need not be the list's
            if index in self.failing:
                yield CompileOutcome(index, None, False, 0.5, "nvcc: error: static assertion failed\nin detail")
            else:
                yield CompileOutcome(index, Path(f"/cache/{index}/kernel.so"), index not in self.cached, 0.25)


@pytest.fixture
def fake_compiles(monkeypatch: pytest.MonkeyPatch) -> FakeCompiles:
    fake = FakeCompiles(failing=[1], cached=[0])
    monkeypatch.setattr(warmup, "compile_each", fake)
    monkeypatch.setattr(warmup, "get_toolchain", lambda: None)
    return fake


def test_warmup_reports_progress_on_stderr_and_json_on_stdout(fake_compiles, capsys):
    assert cli.main(["warmup", *TINY, "--json"]) == 1  # a variant failed
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    n = len(warmup.unique_variants([MoEShape("custom", 256, 128, 8, 2)], [1], 132))
    assert n == len(fake_compiles.variants) >= 3
    assert {k: summary[k] for k in ("variants", "compiled", "cached", "failed")} == \
        {"variants": n, "compiled": n - 2, "cached": 1, "failed": 1}
    assert summary["seconds"] >= 0 and summary["models"] == ["custom"] and summary["num_sms"] == 132
    assert summary["failures"] == [{"variant": warmup.describe_variant(fake_compiles.variants[1]),
                                    "error": "nvcc: error: static assertion failed\nin detail"}]
    progress = [line for line in captured.err.splitlines() if "] " in line]
    assert [line.split("]")[0] for line in progress] == [f"dg-moe warmup: [{i}/{n}" for i in range(1, n + 1)]
    assert all("s elapsed)" in line for line in progress)
    assert "FAILED (nvcc: error: static assertion failed)" in captured.err


def test_warmup_summary_line_and_models_in_any_case(fake_compiles, capsys):
    fake_compiles.failing.clear()
    argv = ["warmup", "--models", "Mixtral-8x7B", "--batches", "1,8", "--num-sms", "132"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    n = len(warmup.unique_variants([MODEL_SHAPES["mixtral-8x7b"]], [1, 8], 132))
    assert out.startswith(f"dg-moe warmup: {n} of {n} variants cached in ")
    assert out.endswith(f" s ({n - 1} compiled, 1 already cached, 0 failed)\n")
