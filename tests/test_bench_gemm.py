"""`dg-moe bench gemm` without a GPU: its cases, the kernels it plans to compile, the ratio and geomean
arithmetic, the JSON document, the CLI, and what it reports when DeepGEMM cannot be imported."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

import dg_moe
from dg_moe import checks
from dg_moe.bench import gemm, gemm_warmup
from dg_moe.bench.gemm_cases import (
    DENSE_NK,
    FAMILIES,
    FORMS,
    MOE_NK,
    PEERS,
    ContiguousCase,
    DenseCase,
    MaskedCase,
    call_labels,
    family_cases,
    parse_families,
)
from dg_moe.bench.gemm_plan import bench_variants, estimate_seconds, gemm_calls
from dg_moe.bench.gemm_problems import Call, Problem
from dg_moe.bench.gemm_report import SCHEMA, document, eager_row, geomean, geomeans, ratio, result_row, table
from dg_moe.bench.peer_deepgemm import load_deep_gemm
from dg_moe.cli import main as cli_main
from dg_moe.kernels.sm90_fp8_gemm import GemmType, launcher
from dg_moe.ops import gemm_checks
from dg_moe.reference.common import RECIPE_1D2D

TIMED = ("dense", "contiguous", "masked")


def _all_timed(quick: bool = False):
    return [c for f in TIMED for c in family_cases(f, quick)]


# --- cases -----------------------------------------------------------------------------------------


def test_dense_cases_are_three_ms_by_the_six_deepseek_shapes():
    cases = family_cases("dense")
    assert len(cases) == 18
    assert {(c.m, c.n, c.k) for c in cases} == {(m, n, k) for m in (64, 128, 4096) for n, k in DENSE_NK}
    assert DENSE_NK == ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048))


def test_contiguous_cases_are_three_group_counts_at_both_expert_shapes():
    cases = family_cases("contiguous")
    assert [(c.groups, c.rows_per_group) for c in cases[::2]] == [(4, 8192), (8, 4096), (32, 256)]
    assert {(c.n, c.k) for c in cases} == set(MOE_NK) == {(4096, 7168), (7168, 2048)}
    assert len(cases) == 6


def test_masked_cases_pair_rows_with_their_group_counts():
    cases = family_cases("masked")
    assert len(cases) == 16
    groups = {c.expected_m: c.groups for c in cases}
    assert groups == {1: 32, 4: 32, 16: 32, 32: 16, 64: 8, 128: 16, 256: 4, 1024: 1}
    assert all({(c.n, c.k) for c in cases if c.expected_m == e} == set(MOE_NK) for e in groups)


def test_eager_and_quick_selections():
    assert family_cases("eager") == [DenseCase(128, 2112, 7168)]
    quick = _all_timed(quick=True)
    assert quick and all((c.n, c.k) == (4096, 7168) for c in quick)
    assert len(family_cases("dense", quick=True)) == 3 and len(family_cases("masked", quick=True)) == 8


def test_family_names_parse_in_canonical_order():
    assert parse_families("masked,dense") == ["dense", "masked"]
    assert parse_families(",".join(FAMILIES)) == list(FAMILIES)
    for bad in ("dense,sparse", ""):
        with pytest.raises(ValueError, match="choose from"):
            parse_families(bad)


@pytest.mark.parametrize("case", family_cases("contiguous"), ids=lambda c: c.label)
def test_contiguous_layouts_describe_the_same_rows(case: ContiguousCase):
    counts, starts, ends = case.counts, case.starts, case.ends
    assert all(0.7 * case.rows_per_group - 1 <= c <= 1.3 * case.rows_per_group + 1 for c in counts)
    assert all(s % 128 == 0 for s in starts) and case.m_sum % 128 == 0
    assert case.m_sum == starts[-1] + math.ceil(counts[-1] / 128) * 128
    ids = torch.tensor(case.m_indices, dtype=torch.int32)
    assert ids.shape == (case.m_sum,) and int((ids >= 0).sum()) == case.valid_rows == sum(counts)
    for g, (start, end) in enumerate(zip(starts, ends, strict=True)):
        assert (ids[start:end] == g).all() and (ids[end:start + math.ceil((end - start) / 128) * 128] == -1).all()
    # The two public forms pass dg_moe's own layout checks.
    checks.psum_ends("test", "ends", torch.tensor(ends, dtype=torch.int32), case.m_sum, "M_sum")
    gemm_checks.per_row_tiles("test", ids, case.groups)
    assert case.counts == ContiguousCase(case.groups, case.rows_per_group, case.n, case.k).counts  # seeded


@pytest.mark.parametrize("case", family_cases("masked"), ids=lambda c: c.label)
def test_masked_counts_fit_an_aligned_max_m(case: MaskedCase):
    counts = case.counts
    assert len(counts) == case.groups and min(counts) >= 1
    assert all(round(0.7 * case.expected_m) <= c <= round(1.3 * case.expected_m) for c in counts)
    # DeepGEMM stores whole 64- or 128-row tiles per group: max_m must be a multiple of 128.
    assert case.max_m % 128 == 0 and case.max_m >= max(counts)
    assert case.counts == MaskedCase(case.groups, case.expected_m, case.n, case.k).counts


def test_masked_bytes_count_weights_valid_rows_and_scales():
    case = MaskedCase(1, 1024, 4096, 7168)
    valid = case.valid_rows
    expected = 4096 * 7168 + 32 * 56 * 4 + valid * (7168 + 56 * 4 + 4096 * 2)
    assert case.bytes_moved == expected


# --- plan ------------------------------------------------------------------------------------------


def test_planned_hints_are_the_launchers(monkeypatch):
    """The warm-up compiles what the launcher will ask for: the same (layout, rows hint, N, K, groups)."""
    seen = []

    def record(gemm_type, a, b, d, layout, rows_hint):
        groups = 1 if gemm_type == GemmType.NORMAL else b[0].shape[0]
        seen.append((gemm_type, rows_hint, b[0].shape[-2], a[0].shape[-1], groups))

    monkeypatch.setattr(launcher, "_launch", record)
    planned = []
    for case in _all_timed():
        n, k = case.n, case.k
        planned += [(t, hint, n, k, groups) for t, hint, groups in gemm_calls(case)]
        fp8 = {"device": "meta", "dtype": torch.float8_e4m3fn}
        d = {"device": "meta", "dtype": torch.bfloat16}
        if isinstance(case, DenseCase):
            a, b = (torch.empty(case.m, k, **fp8), None), (torch.empty(n, k, **fp8), None)
            launcher.fp8_gemm_nt_kernel(a, b, torch.empty(case.m, n, **d), None, RECIPE_1D2D, "nk", False)
            continue
        b = (torch.empty(case.groups, n, k, **fp8), None)
        if isinstance(case, ContiguousCase):
            a = (torch.empty(case.m_sum, k, **fp8), None)
            out = torch.empty(case.m_sum, n, **d)
            launcher.m_grouped_fp8_gemm_nt_contiguous_kernel(a, b, out, None, RECIPE_1D2D, "nk", False, True,
                                                             case.rows_per_group)
            launcher.m_grouped_fp8_gemm_nt_contiguous_kernel(a, b, out, None, RECIPE_1D2D, "nk", False, False)
        else:
            a = (torch.empty(case.groups, case.max_m, k, **fp8), None)
            out = torch.empty(case.groups, case.max_m, n, **d)
            launcher.m_grouped_fp8_gemm_nt_masked_kernel(a, b, out, None, case.expected_m, RECIPE_1D2D, "nk", False)
    assert seen == planned


def test_variants_are_distinct_and_cover_every_layout():
    variants = bench_variants(_all_timed(), 132)
    assert len({tuple(sorted(v.items())) for v in variants}) == len(variants)
    assert {v["GEMM_TYPE"] for v in variants} == {t.cpp for t in
                                                  (GemmType.NORMAL, GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM,
                                                   GemmType.MASKED)}
    assert len(bench_variants(_all_timed(quick=True), 132)) < len(variants)


def test_the_timing_fits_the_four_minute_budget():
    full = estimate_seconds(_all_timed(), 132, with_deepgemm=True)
    assert 20 < full < 240
    assert estimate_seconds(_all_timed(quick=True), 132, True) < full
    assert estimate_seconds(_all_timed(), 132, with_deepgemm=False) < full


# --- arithmetic and the document -------------------------------------------------------------------


def test_ratio_and_geomean():
    assert ratio(30.0, 20.0) == 1.5
    assert ratio("n/a (ImportError)", 20.0) is None and ratio(30.0, None) is None and ratio(0.0, 20.0) is None
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([None, 2.0, 8.0]) == pytest.approx(4.0)
    assert geomean([]) is None and geomean([None]) is None


def _row(case, times, bitwise=None):
    return result_row(case, times, bitwise or {})


def test_result_rows_price_work_and_pair_forms():
    dense = _row(DenseCase(4096, 4096, 7168), {"dg_moe": 200.0, "deepgemm": 220.0, "cublas_blockwise": "n/a (x)"},
                 {"dg_moe": True})
    assert dense["throughput"]["dg_moe"] == pytest.approx(2 * 4096 * 4096 * 7168 / 200e-6 / 1e12)
    assert "cublas_blockwise" not in dense["throughput"] and dense["unit"] == "TFLOPS"
    assert dense["ratios"] == {"dg_moe": pytest.approx(1.1)} and dense["bitwise_equal"] is True

    case = ContiguousCase(4, 8192, 4096, 7168)
    contiguous = _row(case, {"dg_moe_psum": 100.0, "dg_moe_rows": 100.0, "deepgemm_psum": 80.0,
                             "deepgemm_rows": 120.0}, {"dg_moe_psum": True, "dg_moe_rows": False})
    assert contiguous["ratios"] == {"dg_moe_psum": pytest.approx(0.8), "dg_moe_rows": pytest.approx(1.2)}
    assert contiguous["bitwise_equal"] is False
    assert contiguous["throughput"]["dg_moe_psum"] == pytest.approx(case.flops / 100e-6 / 1e12)

    masked_case = MaskedCase(8, 64, 4096, 7168)
    masked = _row(masked_case, {"dg_moe": 100.0, "deepgemm": "n/a: deep_gemm not importable"})
    assert masked["unit"] == "GB/s" and masked["throughput"]["dg_moe"] == pytest.approx(masked_case.bytes_moved / 1e5)
    assert masked["ratios"] == {"dg_moe": None} and masked["bitwise_equal"] is None


def test_geomeans_per_family_and_form():
    rows = [_row(DenseCase(64, n, k), {"dg_moe": 10.0, "deepgemm": us}) for (n, k), us in
            zip(DENSE_NK[:3], (5.0, 20.0, "n/a (RuntimeError: x)"), strict=True)]
    out = geomeans({"dense": rows, "masked": []})
    assert out["dense"]["dg_moe"] == {"geomean": pytest.approx(1.0), "cases": 2}
    assert out["masked"]["dg_moe"] == {"geomean": None, "cases": 0}


def test_document_schema_is_json():
    rows = {"dense": [_row(DenseCase(128, 2112, 7168), {"dg_moe": 10.0, "deepgemm": 12.0})],
            "contiguous": [_row(ContiguousCase(32, 256, 7168, 2048), {"dg_moe_psum": 50.0})]}
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "deepgemm": load_deep_gemm("disabled by test").describe()}
    doc = json.loads(json.dumps(document(meta, rows, eager_row(20.0, 15.0, DenseCase(128, 2112, 7168)))))
    assert doc["schema"] == SCHEMA == "dg_moe.bench.gemm/1"
    assert set(doc) == {"schema", "meta", "results", "geomeans", "eager"}
    assert doc["meta"]["deepgemm"] == {"available": False, "version": None, "path": None, "reason": "disabled by test"}
    row = doc["results"]["dense"][0]
    assert set(row) == {"family", "label", "case", "times_us", "unit", "throughput", "ratios", "bitwise",
                        "bitwise_equal"}
    assert row["case"] == {"m": 128, "n": 2112, "k": 7168, "flops": 2 * 128 * 2112 * 7168,
                           "bytes": DenseCase(128, 2112, 7168).bytes_moved}
    assert row["ratios"]["dg_moe"] == pytest.approx(1.2)
    assert doc["results"]["contiguous"][0]["case"]["counts"] == ContiguousCase(32, 256, 7168, 2048).counts
    assert doc["geomeans"]["contiguous"]["dg_moe_rows"] == {"geomean": None, "cases": 0}
    assert doc["eager"]["ratio"] == pytest.approx(0.75)


def test_tables_say_why_a_column_is_empty():
    missing = "n/a: deep_gemm not importable (ModuleNotFoundError: No module named 'deep_gemm')"
    rows = [_row(MaskedCase(32, 4, 4096, 7168), {"dg_moe": 300.0, "deepgemm": missing, "bmm_bf16": 500.0})]
    lines = table("masked", rows)
    assert lines[0].startswith("Masked grouped FP8 GEMM")
    assert "n/a" in lines[2] and "3139" in lines[2]  # dg_moe's GB/s: 941779392 bytes in 300 us
    assert any(line.startswith("geomean DeepGEMM / dg_moe time: n/a over 0 cases") for line in lines)
    assert f"deepgemm: {missing}" in lines


def test_call_labels_pair_each_form_with_deepgemm():
    assert call_labels("contiguous") == ["dg_moe_psum", "dg_moe_rows", "deepgemm_psum", "deepgemm_rows",
                                         "grouped_mm_bf16"]
    assert all(set(FORMS[f].values()) <= set(call_labels(f)) and PEERS[f] in call_labels(f) for f in TIMED)


# --- the runner on CPU stand-ins -------------------------------------------------------------------


@pytest.fixture
def cpu_runner(monkeypatch):
    """run_case on CPU: synchronize is a no-op and every timed call takes 10 us."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(gemm, "gpu_times_us", lambda fns: [10.0] * len(fns))


def _problem(case, writers):
    """CPU stand-in: each call fills its output with a value (None: writes nothing) or is the given function."""
    calls = {}
    for label, value in writers.items():
        out = torch.zeros(4, 8, dtype=torch.bfloat16)
        fill = (lambda o=out, v=value: o.fill_(v)) if value is not None else (lambda: None)
        calls[label] = Call(value if callable(value) else fill, out)
    return Problem(case, calls, valid=lambda d: d[:2], peer=lambda: (lambda: None))


def test_run_case_compares_valid_rows_after_poisoning(cpu_runner, monkeypatch):
    case = DenseCase(64, 2112, 7168)
    status = load_deep_gemm("stand-in")
    present = type(status)(module=dg_moe, version="test")  # any module: the stand-in problem never calls it

    monkeypatch.setattr(gemm, "build_problem", lambda c, dg: _problem(c, {"dg_moe": 1.0, "deepgemm": 1.0}))
    row = gemm.run_case(case, present)
    assert row["bitwise_equal"] is True and row["ratios"]["dg_moe"] == 1.0
    assert row["times_us"] == {"dg_moe": 10.0, "deepgemm": 10.0, "cublas_blockwise": 10.0}

    monkeypatch.setattr(gemm, "build_problem", lambda c, dg: _problem(c, {"dg_moe": 1.0, "deepgemm": 2.0}))
    assert gemm.run_case(case, present)["bitwise_equal"] is False

    # A call that writes nothing leaves the NaN poison: never equal, even to another unwritten output.
    monkeypatch.setattr(gemm, "build_problem", lambda c, dg: _problem(c, {"dg_moe": None, "deepgemm": None}))
    assert gemm.run_case(case, present)["bitwise_equal"] is False


def test_run_case_reports_a_failing_call_and_goes_on(cpu_runner, monkeypatch):
    def broken():
        raise RuntimeError("DG_HOST_ASSERT failed\nmore")

    monkeypatch.setattr(gemm, "build_problem", lambda c, dg: _problem(c, {"dg_moe": 1.0, "deepgemm": broken}))
    row = gemm.run_case(DenseCase(64, 2112, 7168), type(load_deep_gemm("x"))(module=dg_moe))
    assert row["times_us"]["deepgemm"] == "n/a (first call: RuntimeError: DG_HOST_ASSERT failed)"
    assert row["times_us"]["dg_moe"] == 10.0 and row["bitwise_equal"] is None


# --- DeepGEMM absent, and the CLI ------------------------------------------------------------------


def test_absent_deepgemm_reports_why(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "deep_gemm", None)  # not installed at all
    assert load_deep_gemm().reason.startswith("deep_gemm not importable (ModuleNotFoundError: ")
    # A peer whose extension does not load (the usual failure of a broken build).
    package = tmp_path / "deep_gemm"
    package.mkdir()
    (package / "__init__.py").write_text('raise ImportError("libnvrtc.so.13: cannot open shared object file")\n')
    monkeypatch.delitem(sys.modules, "deep_gemm")
    monkeypatch.syspath_prepend(str(tmp_path))
    status = load_deep_gemm()
    assert status.module is None
    assert status.reason == "deep_gemm not importable (ImportError: libnvrtc.so.13: cannot open shared object file)"
    assert status.describe()["available"] is False and status.missing == f"n/a: {status.reason}"
    assert load_deep_gemm("disabled by --no-deepgemm").reason == "disabled by --no-deepgemm"


def test_an_alias_of_dg_moe_is_not_deepgemm(monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_gemm", dg_moe)
    status = load_deep_gemm()
    assert status.module is None and "dg_moe itself" in status.reason


def test_run_case_without_deepgemm_fills_its_columns(cpu_runner, monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_gemm", None)
    status = load_deep_gemm()
    case = ContiguousCase(4, 8192, 4096, 7168)
    monkeypatch.setattr(gemm, "build_problem", lambda c, dg: _problem(c, {"dg_moe_psum": 1.0, "dg_moe_rows": 1.0}))
    row = gemm.run_case(case, status)
    assert row["times_us"]["deepgemm_psum"] == row["times_us"]["deepgemm_rows"] == status.missing
    assert row["times_us"]["dg_moe_psum"] == 10.0 and row["ratios"] == {"dg_moe_psum": None, "dg_moe_rows": None}


def test_help_needs_no_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "gemm", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in ("--family", "--quick", "--json", "--out", "--warmup", "--dry-run"))


def test_dry_run_lists_cases_and_the_missing_peer(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deep_gemm", None)
    assert cli_main(["bench", "gemm", "--dry-run", "--family", "masked,eager"]) == 0
    out = capsys.readouterr().out
    assert "masked: 16 cases" in out and "eager: 1 cases" in out and "dense:" not in out
    assert "DeepGEMM: deep_gemm not importable (ModuleNotFoundError" in out and "estimated timing:" in out


def test_warmup_without_deepgemm_compiles_dg_moe_only(monkeypatch, capsys):
    compiled = []
    monkeypatch.setattr(gemm_warmup, "compile_many", lambda family, variants, jobs: compiled.append(variants))
    monkeypatch.setattr(gemm_warmup, "get_toolchain", lambda: None)  # no nvcc runs: the test needs none
    monkeypatch.setattr(gemm_warmup, "num_sms", lambda: 132)
    assert cli_main(["bench", "gemm", "--warmup", "--no-deepgemm", "--family", "dense,eager", "--jobs", "2"]) == 0
    assert compiled == [bench_variants(family_cases("dense"), 132)]
    assert "DeepGEMM: not warmed (disabled by --no-deepgemm)" in capsys.readouterr().out


def test_bench_without_gpu_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main(["bench", "gemm", "--no-deepgemm"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "needs a CUDA GPU" in captured.err and "--dry-run" in captured.err


def test_eager_line_without_deepgemm_and_with_a_failing_call(monkeypatch):
    monkeypatch.setattr(gemm, "build_problem", lambda c, dg: _problem(c, {"dg_moe": 1.0}))
    monkeypatch.setattr(gemm, "eager_us", lambda fn: 20.0)
    status = load_deep_gemm("disabled by --no-deepgemm")
    eager = gemm.run_eager(status)
    assert eager["times_us"] == {"dg_moe": 20.0, "deepgemm": status.missing} and eager["ratio"] is None

    def broken(fn):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(gemm, "eager_us", broken)
    assert gemm.run_eager(status)["times_us"]["dg_moe"] == "n/a (RuntimeError: launch failed)"


def test_bench_end_to_end_on_stand_ins(cpu_runner, monkeypatch, tmp_path, capsys):
    """The whole run's orchestration: a progress line per case, tables last, and the JSON file."""
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: type("Props", (), {"name": "stand-in", "multi_processor_count": 132})())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(gemm, "machine_facts", lambda: {"gpu": "stand-in"})
    monkeypatch.setattr(gemm, "eager_us", lambda fn: 5.0)
    monkeypatch.setattr(gemm, "build_problem", lambda c, dg: _problem(c, {label: 1.0 for label in FORMS[c.family]}))
    status = load_deep_gemm("disabled by --no-deepgemm")
    path = tmp_path / "out" / "bench_gemm.json"
    assert gemm.bench(["dense", "masked", "eager"], True, status, str(path)) == 0
    out = capsys.readouterr().out
    assert out.count("[dense ") == 3 and out.count("[masked ") == 8
    assert out.index("Dense FP8 GEMM") > out.index("[masked 8/8]") and "deepgemm: n/a: disabled by" in out
    doc = json.loads(path.read_text())
    assert doc["meta"]["gpu"] == "stand-in" and doc["meta"]["deepgemm"]["reason"] == "disabled by --no-deepgemm"
    assert doc["meta"]["families"] == ["dense", "masked", "eager"] and doc["meta"]["quick"] is True
    assert [len(doc["results"][f]) for f in ("dense", "masked")] == [3, 8]
    assert doc["eager"]["times_us"]["dg_moe"] == 5.0 and doc["geomeans"]["masked"]["dg_moe"]["cases"] == 0
