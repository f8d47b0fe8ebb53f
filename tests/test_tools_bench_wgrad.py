"""tools/bench_wgrad.py without a GPU: its cases fit both libraries' rules, its parser, and its input
construction and checks on tiny CPU problems (the ops run their float64 reference on CPU), beside a stand-in
for DeepGEMM that asserts what DeepGEMM 2.6.1's host code asserts for the two SM90 entry points the
benchmark calls and reads the operands the way its kernels do. The stand-in proves the benchmark's layout
conversion for DeepGEMM matches this reading of DeepGEMM's source; only the GPU run shows DeepGEMM agrees."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from dg_moe import reference
from dg_moe.layout import align, ceil_div
from dg_moe.reference.common import RECIPE_1D1D, round_to_dtype

from .tool_modules import TOOLS, load_tool

ROOT = Path(__file__).resolve().parents[1]
TOOL = TOOLS / "bench_wgrad.py"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return load_tool("bench_wgrad")


def _mn_major_aligned(sf: torch.Tensor, mn: int) -> bool:
    # What DeepGEMM's get_mn_major_tma_aligned_tensor returns untouched; anything else it copies in every call.
    return sf.stride() == (1, align(mn, 4))


class FakeDeepGemm:
    """DeepGEMM's fp8_gemm_nt (1D1D, recipe (1, 1, 128)) and k_grouped_fp8_gemm_nt_contiguous on SM90: the
    argument checks of its apis/gemm.hpp and sm90_fp8_gemm_1d1d.hpp, then dg_moe's float64 reference on
    the operands as its kernels address them. ``refuse`` makes every call raise, as a host assert does."""

    __version__ = "fake"

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: list[str] = []

    def fp8_gemm_nt(self, a, b, d, c=None, recipe=None, recipe_a=None, recipe_b=None, compiled_dims="nk",
                    disable_ue8m0_cast=False) -> None:
        self.calls.append("fp8_gemm_nt")
        if self.refuse:
            raise RuntimeError("Assertion error (gemm.hpp:1): refused\nsecond line")
        assert recipe == (1, 1, 128) and recipe_a is None and recipe_b is None
        (m, k), (n, k_b) = a[0].shape, b[0].shape
        assert a[0].dtype == b[0].dtype == torch.float8_e4m3fn and k == k_b
        assert a[0].stride(-1) == 1 and b[0].stride(-1) == 1, "SM90 FP8 takes K-major A and B only"
        assert d.shape == (m, n) and d.dtype == torch.float32 and d.stride(-1) == 1
        assert c is not None, "the SM90 1D1D kernel requires c"
        if c.data_ptr() == d.data_ptr():
            assert c.shape == d.shape and c.stride() == d.stride()
        for sf, mn in ((a[1], m), (b[1], n)):
            assert sf.dtype == torch.float32 and sf.shape == (mn, ceil_div(k, 128))
            assert _mn_major_aligned(sf, mn), "would be transposed inside every timed call"
        d.copy_(round_to_dtype(reference.ref_fp8_gemm_nt(a, b, c, RECIPE_1D1D), torch.float32))

    def k_grouped_fp8_gemm_nt_contiguous(self, a, b, d, ks_cpu, grouped_layout, c=None, recipe=(1, 1, 128),
                                         compiled_dims="mn", use_psum_layout=False) -> None:
        self.calls.append("k_grouped_fp8_gemm_nt_contiguous")
        if self.refuse:
            raise RuntimeError("refused")
        assert recipe == (1, 1, 128)
        assert not use_psum_layout and isinstance(ks_cpu, list) and ks_cpu
        assert all(type(k) is int and k % 128 == 0 for k in ks_cpu)
        g, m, n = d.shape
        assert grouped_layout.is_contiguous() and grouped_layout.dtype == torch.int32 and grouped_layout.numel() == g
        assert grouped_layout.tolist() == ks_cpu, "the kernel reads the sizes from grouped_layout"
        sum_k = sum(ks_cpu)
        assert a[0].dtype == b[0].dtype == torch.float8_e4m3fn
        assert a[0].numel() == sum_k * m and b[0].numel() == sum_k * n
        assert a[0].is_contiguous() and b[0].is_contiguous() and d.is_contiguous() and d.dtype == torch.float32
        assert c is not None and c.is_contiguous()
        for sf, mn in ((a[1], m), (b[1], n)):
            assert sf.dim() == 2 and sf.dtype == torch.float32 and sf.shape == (mn, sum_k // 128)
            assert _mn_major_aligned(sf, mn)
        out = c.to(torch.float64, copy=True)
        start = 0
        for group, k in enumerate(ks_cpu):
            if k:
                blocks = slice(start // 128, (start + k) // 128)
                a_g = (a[0][start * m:(start + k) * m].view(m, k), a[1][:, blocks])
                b_g = (b[0][start * n:(start + k) * n].view(n, k), b[1][:, blocks])
                out[group] += reference.ref_fp8_gemm_nt(a_g, b_g, None, RECIPE_1D1D)
            start += k
        d.copy_(round_to_dtype(out, torch.float32))


def test_case_list_fits_both_libraries(tool):
    cases = tool.cases()
    assert len(cases) == len(set(cases)) == len(tool.DENSE_MN) + len(tool.K_GROUPED)
    assert cases == tool.cases(), "group sizes must be the same on every run"
    assert {(c.m, c.n) for c in cases if c.kind == "dense"} >= {(7168, 2112), (7168, 16384), (24576, 1536)}
    for case in cases:
        assert case.ks and all(k % 128 == 0 for k in case.ks), case
        # MN-major scales with a TMA-aligned pitch need no copy, and FP32 d rows stay 16-byte aligned.
        assert case.m % 4 == 0 and case.n % 4 == 0, case
        assert case.flops == 2.0 * case.m * case.n * sum(case.ks)
        if case.kind == "dense":
            assert case.groups == 1 and case.sum_k == tool.TOKENS
        else:
            assert case.m % 128 == 0 and case.n % 128 == 0, case  # the shapes of DeepGEMM's K-grouped test
            assert case.groups in (4, 8, 32) and len(set(case.ks) - {0}) > 1, case
            assert all(k > 0 for k in case.ks) or case.ks.count(0) == 1
            assert all(1000 <= k <= 11000 for k in case.ks if k), case  # a few thousand tokens each
    assert sum(0 in c.ks for c in cases) == 1
    assert [c.kind for c in tool.cases("dense")] == ["dense"] * len(tool.DENSE_MN)
    assert {c.kind for c in tool.cases("k_grouped")} == {"k_grouped"}


def test_variants_cover_every_case(tool):
    variants = tool.variants(tool.cases(), 132)
    assert variants and len(variants) == len({tuple(sorted(v.items())) for v in variants})
    assert {v["SHAPE_N"] for v in variants} == {c.n for c in tool.cases()}
    for case in tool.cases():
        config = tool.our_config(case, 132)
        pair = "x2B" if config.share_b else ""
        assert tool.describe_config(config) == f"{config.block_m}x{config.block_n}{pair} s{config.num_stages}"
        # The K-grouped cases (even m-block counts) run the heuristic's 144-wide B-sharing pairs.
        assert config.share_b == (case.wgrad_type != tool.WgradType.NORMAL)


def test_parser(tool, capsys):
    args = tool.parse_args([])
    assert (args.no_deepgemm, args.only, args.list) == (False, None, False)
    args = tool.parse_args(["--no-deepgemm", "--only", "k_grouped"])
    assert args.no_deepgemm and args.only == "k_grouped"
    with pytest.raises(SystemExit) as exited:
        tool.parse_args(["--only", "masked"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        tool.parse_args(["--help"])
    assert exited.value.code == 0 and "--no-deepgemm" in capsys.readouterr().out


def test_list_needs_no_gpu(tool, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tool.main(["--list", "--only", "k_grouped"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(tool.K_GROUPED) and all("ks=[" in line for line in lines)
    assert tool.main([]) == 1  # without a GPU it says so instead of failing in CUDA


def test_forced_width_reaches_every_case(tool, capsys, monkeypatch):
    from dg_moe.kernels.sm90_fp8_wgrad import launcher

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launcher, "config_for", launcher.config_for)  # undone after the test
    with pytest.raises(SystemExit):
        tool.parse_args(["--block-n", "160"])  # not a width the kernel builds
    assert tool.main(["--list", "--block-n", "144"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(tool.cases()) and all(" 128x144 s6" in line for line in lines)


def test_forced_b_sharing_only_where_m_blocks_pair_up(tool, capsys, monkeypatch):
    from dg_moe.kernels.sm90_fp8_wgrad import launcher

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launcher, "config_for", launcher.config_for)  # undone after the test
    with pytest.raises(SystemExit):
        tool.parse_args(["--share-b", "--block-n", "152"])  # 76 rows a CTA: not whole swizzle atoms
    assert tool.main(["--list", "--share-b"]) == 0
    for case, line in zip(tool.cases(), capsys.readouterr().out.splitlines(), strict=True):
        # 2112 and 576 rows: 17 and 5 m-blocks, which cannot pair up; every other case shares B.
        assert ("x2B s" in line) == (math.ceil(case.m / 128) % 2 == 0), line


def test_script_help_runs_standalone():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--only" in result.stdout


def test_deepgemm_operand_is_one_row_major_block_per_group(tool):
    ks = [256, 0, 128]
    k_major = torch.arange(5 * 384, dtype=torch.float32).view(5, 384)
    sf = torch.arange(3 * 5, dtype=torch.float32).view(3, 5)
    flat, sf_t = tool.deepgemm_k_grouped_operand(k_major, sf, ks)
    assert flat.shape == (384 * 5,) and flat.is_contiguous()
    assert torch.equal(flat[:256 * 5].view(5, 256), k_major[:, :256])
    assert torch.equal(flat[256 * 5:].view(5, 128), k_major[:, 256:])
    assert torch.equal(sf_t, sf.T) and sf_t.data_ptr() == sf.data_ptr()


TINY = [("dense", 64, 96, (256,)), ("dense", 36, 8, (384,)), ("k_grouped", 64, 48, (256, 0, 128)),
        ("k_grouped", 8, 36, (0, 128, 384))]


@pytest.mark.parametrize("kind,m,n,ks", TINY)
def test_check_on_cpu(tool, kind, m, n, ks, cuda_untouchable):
    fake = FakeDeepGemm()
    case = tool.Case(kind, m, n, ks)
    checked = tool.check(tool.problem(case, CPU, fake, seed=3), CPU, seed=3)
    assert not checked.errors
    assert fake.calls == ["fp8_gemm_nt" if kind == "dense" else "k_grouped_fp8_gemm_nt_contiguous"]
    # On CPU both run the float64 reference rounded once to FP32: all that is left is that rounding.
    assert set(checked.diff) == {"dg_moe", "deepgemm"}
    assert all(0.0 <= diff < 1e-12 for diff in checked.diff.values()), checked.diff
    assert checked.in_place_same is True and checked.same_as_peer is True
    assert set(checked.calls) == {"dg_moe", "deepgemm"}
    checked.calls["dg_moe"]()  # the timed calls go on accumulating in place
    checked.calls["deepgemm"]()


def test_check_reports_a_missing_or_refusing_peer(tool, cuda_untouchable):
    case = tool.Case("k_grouped", 16, 24, (128, 128))
    checked = tool.check(tool.problem(case, CPU, SimpleNamespace(), seed=1), CPU, seed=1)
    assert checked.errors == {"deepgemm": "deep_gemm has no k_grouped_fp8_gemm_nt_contiguous"}
    assert set(checked.calls) == {"dg_moe"} and checked.same_as_peer is None
    assert checked.diff["dg_moe"] < 1e-12 and checked.in_place_same

    checked = tool.check(tool.problem(tool.Case("dense", 16, 24, (128,)), CPU, FakeDeepGemm(refuse=True)), CPU)
    assert checked.errors["deepgemm"].startswith("RuntimeError: Assertion error") and "\n" not in \
        checked.errors["deepgemm"]
    assert set(checked.calls) == {"dg_moe"} and set(checked.diff) == {"dg_moe"}

    checked = tool.check(tool.problem(case, CPU, None), CPU)
    assert checked.errors == {"deepgemm": "DeepGEMM not loaded"}


def test_unwritten_output_shows_as_nan(tool, cuda_untouchable):
    prob = tool.problem(tool.Case("dense", 16, 24, (128,)), CPU, None)
    real = prob.ours

    def skips_a_row(d, c):
        real(d, c)
        if d.data_ptr() != c.data_ptr():
            d[3] = float("nan")

    prob.ours = skips_a_row
    checked = tool.check(prob, CPU)
    assert math.isnan(checked.diff["dg_moe"]) and checked.in_place_same is False


def test_worst_part(tool):
    assert tool._worst([1e-5, 3e-4, 0.0]) == 3e-4
    assert math.isnan(tool._worst([1e-5, float("nan"), 2.0]))
    assert tool._worst([]) == 0.0


def test_row_formats_times_and_failures(tool, monkeypatch, cuda_untouchable):
    timed: list[int] = []

    def fake_times(fns):
        timed.append(len(fns))
        for fn in fns:
            fn()
        return [100.0, "n/a (RuntimeError: capture failed)"][:len(fns)]

    monkeypatch.setattr(tool, "gpu_times_us", fake_times)
    case = tool.Case("dense", 64, 96, (256,))
    row = tool._row(case, CPU, FakeDeepGemm(), 0, 132)
    assert row.startswith(case.label) and "yes" in row and "n/a (RuntimeError: capture failed)" in row
    assert f"dg_moe {case.flops / 100.0 / 1e6:7.1f} (   100.0)" in row
    assert row.endswith(tool.describe_config(tool.our_config(case, 132)))

    row = tool._row(case, CPU, FakeDeepGemm(refuse=True), 0, 132)
    assert "deepgemm n/a (RuntimeError: Assertion error (gemm.hpp:1): refused)" in row and "   - |" in row
    assert timed == [2, 1]

    monkeypatch.setattr(tool, "gpu_times_us", lambda fns: [100.0, 150.0])
    row = tool._row(tool.Case("k_grouped", 16, 24, (128, 0)), CPU, FakeDeepGemm(), 0, 132)
    assert "   1.50 |" in row


def test_main_prints_header_groups_table_and_total(tool, monkeypatch, capsys):
    compiled = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake H100")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(tool.dg_moe.device, "num_sms_for", lambda device: 132)
    monkeypatch.setattr(tool, "compile_many",
                        lambda family, variants, source_root=None: compiled.append((family, variants)))

    def row(case, device, deep_gemm, seed, num_sms):
        if seed == 1:
            raise MemoryError("out of memory")
        return f"row {case.label} seed={seed}"

    monkeypatch.setattr(tool, "_row", row)
    assert tool.main(["--only", "k_grouped", "--no-deepgemm"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Fake H100 (132 SMs); torch ") and out[0].endswith("DeepGEMM: --no-deepgemm")
    assert compiled == [(tool.FAMILY, tool.variants(tool.cases("k_grouped"), 132))]
    groups = len(tool.K_GROUPED)
    assert all("ks=[" in line for line in out[1:1 + groups])
    assert out[1 + groups].startswith("diff: ") and out[2 + groups].startswith("case")
    rows = out[3 + groups:-1]
    assert rows[0].startswith("row k_grouped") and "failed: MemoryError: out of memory" in rows[1]
    assert len(rows) == groups and out[-1].startswith(f"{groups} cases in")

    compiled.clear()
    assert tool.main(["--compile-only", "--only", "dense"]) == 0
    assert compiled == [(tool.FAMILY, tool.variants(tool.cases("dense"), 132))]
    assert capsys.readouterr().out.startswith(f"compiled dg_moe's {len(compiled[0][1])} variants")


def test_kernel_tree_reaches_every_bind(tool, monkeypatch, tmp_path):
    from dg_moe.kernels.sm90_fp8_wgrad import launcher

    seen = []
    monkeypatch.setattr(launcher, "bind", lambda t, c, n, source_root=None: seen.append((t, c, n, source_root)))
    with pytest.raises(SystemExit) as refused:
        tool.use_kernel_tree(str(tmp_path))  # no kernels/ in it
    assert "not a kernel source tree" in str(refused.value) and seen == []
    (tmp_path / "kernels").mkdir()
    monkeypatch.chdir(tmp_path.parent)
    assert tool.use_kernel_tree(tmp_path.name) == str(tmp_path.resolve())  # relative: made absolute
    launcher.bind("type", "config", 7168)
    assert seen == [("type", "config", 7168, str(tmp_path.resolve()))]
    assert tool.parse_args(["--base", str(tmp_path)]).base == str(tmp_path)


def test_ncu_case_names_an_unknown_case(monkeypatch):
    ncu_case = load_tool("ncu_wgrad_case")
    with pytest.raises(SystemExit) as exited:
        ncu_case.main(["dense M=1 N=1 K=1"])
    assert "no bench_wgrad case is labelled 'dense M=1 N=1 K=1'" in str(exited.value)


def test_profile_once_warms_then_profiles_each_call_once(monkeypatch):
    ncu_case = load_tool("ncu_case")
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("sync"))
    profiler = SimpleNamespace(cudaProfilerStart=lambda: events.append("start"),
                               cudaProfilerStop=lambda: events.append("stop"))
    monkeypatch.setattr(torch.cuda, "cudart", lambda: profiler)
    ncu_case.profile_once([lambda: events.append("a"), lambda: events.append("b")])
    assert events == ["a", "b", "sync", "start", "a", "b", "sync", "stop"]
