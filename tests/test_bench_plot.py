"""The benchmarks' roofline charts, on CPU: drawn from recorded JSON (tests/data, built by tests/bench_results.py
with the benchmarks' own writers), the roofs they draw, the `--json`/`--plot` options all three benchmarks
share, and the one-line error, before any GPU work, when matplotlib is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from dg_moe import cli
from dg_moe.bench import gemm, layout, moe, plot
from dg_moe.bench.gemm_cases import ContiguousCase, DenseCase, family_cases
from dg_moe.bench.gemm_report import SCHEMA as GEMM_SCHEMA
from dg_moe.bench.gemm_report import result_row
from dg_moe.bench.peer_deepgemm import load_deep_gemm
from dg_moe.bench.roofline import hbm_bandwidth, peaks, peaks_of, roof
from dg_moe.moe.shapes import MODEL_SHAPES

from .bench_results import GPU, MACHINE, PEAK, RESULTS, SMS
from .bench_results import path as recorded

NAMES = tuple(RESULTS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load(name: str) -> dict[str, object]:
    return json.loads(recorded(name).read_text())



@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import matplotlib`` fails, as where the plot extra is not installed (also where it is)."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def _user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `dg-moe argv`: exit status 2, one stderr line and nothing on stdout; that line."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith(f"{cli.command_name(argv)}: error: ")
    return line


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 20_000  # a chart of bars, text and lines, not an empty canvas


# --- the recorded results and what the charts draw from them (no matplotlib) -----------------------


@pytest.mark.parametrize("name", NAMES)
def test_recorded_results_are_what_the_writers_write(name):
    """The fixtures follow the benchmarks' writers: after a writer changes, `python -m tests.bench_results`."""
    assert _load(name) == json.loads(json.dumps(RESULTS[name]()))


def test_schemas_are_the_benchmarks_own():
    assert plot.SCHEMAS == (GEMM_SCHEMA, moe.SCHEMA, layout.SCHEMA)
    assert [_load(name)["schema"] for name in NAMES] == list(plot.SCHEMAS)


def test_the_peaks_are_the_benchmarks_floors():
    assert hbm_bandwidth("NVIDIA H200") == 4.8e12 and moe.hbm_bandwidth is hbm_bandwidth
    assert PEAK["fp8_flops_per_s"] == pytest.approx(1979e12) and PEAK["hbm_bytes_per_s"] == 3.35e12
    assert peaks("NVIDIA A100-SXM4-80GB", None)["hbm_bytes_per_s"] is None
    # A result recorded before the meta carried its peaks: the GPU's name and SM count give them.
    assert peaks_of({"gpu": GPU, "sms": SMS}) == PEAK and peaks_of({"roofline": {"x": 1}}) == {"x": 1}


def test_cases_price_their_compulsory_bytes():
    dense = DenseCase(64, 4096, 7168)
    assert dense.bytes_moved == 4096 * 7168 + 32 * 56 * 4 + 64 * (7168 + 56 * 4 + 4096 * 2)
    contiguous = ContiguousCase(4, 8192, 4096, 7168)
    assert contiguous.bytes_moved == 4 * (4096 * 7168 + 32 * 56 * 4) + contiguous.valid_rows * (7168 + 56 * 4 + 8192)
    assert dense.describe()["bytes"] == dense.bytes_moved and contiguous.describe()["flops"] == contiguous.flops


def test_a_roof_is_the_work_over_the_floor():
    big, small = DenseCase(4096, 4096, 7168), DenseCase(64, 4096, 7168)
    assert roof("TFLOPS", big.flops, big.bytes_moved, PEAK) == pytest.approx(1979)  # compute-bound
    # 64 rows stream a 29 MB weight: the floor is the read, the roof far below the FP8 peak.
    assert roof("TFLOPS", small.flops, small.bytes_moved, PEAK) == pytest.approx(
        small.flops / (small.bytes_moved / 3.35e12) / 1e12)
    assert roof("GB/s", None, 1e9, PEAK) == pytest.approx(3350) and roof("GB/s", None, 1e9, {}) is None


def test_gemm_panels_one_per_family_with_roofs_and_reasons():
    dense, contiguous, masked = plot.panels(_load("gemm"))
    assert [p.unit for p in (dense, contiguous, masked)] == ["TFLOPS", "TFLOPS", "GB/s"]
    assert dense.series == ["dg_moe", "deepgemm", "cublas_blockwise"] and dense.peak == pytest.approx(1979)
    assert contiguous.series[:2] == ["dg_moe_psum", "dg_moe_rows"] and masked.peak == pytest.approx(3350)
    assert [g.label for g in dense.groups] == [c.label.replace(" ", "\n") for c in family_cases("dense", True)]
    roofs = [g.roof for g in dense.groups]  # M = 64, 128, 4096: memory-bound until M = 4096
    assert roofs[0] < roofs[1] < roofs[2] == pytest.approx(1979)
    assert all(g.roof <= masked.peak + 1e-6 for g in masked.groups)
    assert all(max(g.values.values()) < g.roof for p in (dense, contiguous, masked) for g in p.groups)
    assert "deepgemm" not in masked.groups[2].values
    assert masked.notes[0].startswith("deepgemm: no bar in 1 of 8 cases (n/a (first call: RuntimeError")
    assert masked.notes[-1].startswith("eager call (host included, not charted): dg_moe 11.8 us")


def test_moe_panels_decode_in_gbps_prefill_in_tflops_gpu_and_eager():
    decode, prefill, eager = plot.panels(_load("moe"))
    assert (decode.unit, prefill.unit, eager.unit) == ("GB/s", "TFLOPS", "TFLOPS")
    assert "GPU time" in prefill.title and "eager wall time" in eager.title
    # The DeepGEMM layer peer beside ours, the BF16 peer last.
    assert decode.series == prefill.series == eager.series == ["dg_moe", "deepgemm_layer", "bf16_grouped"]
    assert [g.label for g in decode.groups] == [f"deepseek-v3\nT={t}" for t in (1, 8, 32, 128)]
    row = _load("moe")["results"][0]
    assert decode.groups[0].values["dg_moe"] == pytest.approx(row["weight_gbps"])
    assert decode.groups[0].roof == pytest.approx(3350)  # one token: reading the weights is the floor
    # At 512 tokens reading all 256 experts still outweighs the math: the roof is far below the FP8 peak; at
    # 4096 too (3.4 ms of reading against 1.9 ms of math at the compute floor's 1500 TFLOPS).
    assert prefill.groups[0].roof < 0.1 * prefill.peak < prefill.groups[1].roof < 1500
    last = _load("moe")["results"][-1]
    assert prefill.groups[1].roof == pytest.approx(last["flops"] / last["weight_floor_us"] / 1e6)
    assert eager.groups[1].values["dg_moe"] < prefill.groups[1].values["dg_moe"]  # the host's time on top
    assert all(p.notes[-1].startswith("roof: work over max(weight floor, compute floor at 1500 TFLOPS)")
               for p in (decode, prefill, eager))


def test_layout_panels_per_layout_against_the_bandwidth():
    masked, contiguous = plot.panels(_load("layout"))
    assert masked.title.startswith("Layout ops, masked layout (T=128)") and masked.series == ["triton", "torch"]
    assert [g.label for g in contiguous.groups] == ["route_to_contiguous", "silu_and_mul contiguous",
                                                    "reduce contiguous"]
    assert all(g.roof == pytest.approx(3350) for p in (masked, contiguous) for g in p.groups)


@pytest.mark.parametrize("doc", [[], {"schema": "dg_moe.bench.sort/1"}, {"rows": []}])
def test_a_document_of_no_benchmark_is_a_user_error(doc):
    with pytest.raises(plot.UsageError, match="not a dg-moe bench result"):
        plot.panels(doc)


# --- drawing (matplotlib) --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_charts_render_from_recorded_json(name, tmp_path):
    pytest.importorskip("matplotlib", reason='the chart needs matplotlib: pip install "dg_moe[plot]"')
    out = tmp_path / "charts" / f"{name}.png"
    plot.render(_load(name), str(out))
    _assert_png(out)


def test_bench_plot_redraws_a_recorded_result(tmp_path, cuda_untouchable, capsys):
    pytest.importorskip("matplotlib", reason='the chart needs matplotlib: pip install "dg_moe[plot]"')
    results = tmp_path / "run.json"
    results.write_text(recorded("layout").read_text())
    assert cli.main(["bench", "plot", str(results)]) == 0  # default: beside the JSON
    assert capsys.readouterr().out == f"chart: {tmp_path / 'run.png'}\n"
    _assert_png(tmp_path / "run.png")
    assert cli.main(["bench", "plot", str(results), "--out", str(tmp_path / "run.svg")]) == 0
    assert (tmp_path / "run.svg").read_text().lstrip().startswith("<?xml")


def test_bench_plot_reports_unreadable_results(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the file is read after the matplotlib check")
    assert "cannot read" in _user_error(capsys, ["bench", "plot", str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text("{")
    assert "is not JSON" in _user_error(capsys, ["bench", "plot", str(tmp_path / "bad.json")])
    (tmp_path / "list.json").write_text("[]")
    line = _user_error(capsys, ["bench", "plot", str(tmp_path / "list.json")])
    assert "list.json" in line and "not a dg-moe bench result" in line


# --- the options, and a missing matplotlib ---------------------------------------------------------


@pytest.mark.parametrize("bench", ["gemm", "moe", "layout"])
def test_every_bench_takes_the_same_output_options(bench, cuda_untouchable, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", bench, "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "[--json PATH | --out DIR] [--plot FILE.png]" in usage and f"DIR/bench_{bench}.json" in usage


@pytest.mark.parametrize("argv", [
    ["bench", "gemm", "--no-deepgemm"], ["bench", "gemm", "--dry-run"], ["bench", "moe"], ["bench", "layout"],
])
def test_plot_without_matplotlib_fails_before_any_gpu_work(argv, no_matplotlib, cuda_untouchable, capsys,
                                                           tmp_path):
    line = _user_error(capsys, [*argv, "--plot", str(tmp_path / "chart.png")])
    assert "--plot needs matplotlib, which is not importable" in line
    assert 'install it with: pip install "dg_moe[plot]"' in line
    assert not (tmp_path / "chart.png").exists()


def test_bench_plot_without_matplotlib_names_the_fix(no_matplotlib, capsys):
    line = _user_error(capsys, ["bench", "plot", str(recorded("gemm"))])
    assert "the chart needs matplotlib" in line and 'pip install "dg_moe[plot]"' in line


def test_a_chart_format_matplotlib_is_not_asked_for_is_a_user_error(cuda_untouchable, capsys):
    line = _user_error(capsys, ["bench", "layout", "--plot", "chart.jpg"])
    assert "--plot 'chart.jpg'" in line and ".png, .svg, .pdf" in line


# --- the benchmarks write both files (GPU work stood in for) ---------------------------------------


def test_gemm_bench_writes_the_json_and_its_chart(monkeypatch, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason='the chart needs matplotlib: pip install "dg_moe[plot]"')
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: type("Props", (), {"name": GPU, "multi_processor_count": SMS})())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(gemm, "machine_facts", lambda: MACHINE)
    monkeypatch.setattr(gemm, "run_case", lambda case, status: result_row(case, {"dg_moe": 40.0}, {}))
    json_path, chart = tmp_path / "gemm.json", tmp_path / "gemm.png"
    assert gemm.bench(["dense", "masked"], True, load_deep_gemm("disabled"), str(json_path), str(chart)) == 0
    assert capsys.readouterr().out.endswith(f"\nJSON: {json_path}\nchart: {chart}\n")
    doc = json.loads(json_path.read_text())
    assert doc["schema"] == GEMM_SCHEMA and doc["meta"]["roofline"] == PEAK
    _assert_png(chart)


def test_moe_bench_writes_the_json_and_its_chart(monkeypatch, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason='the chart needs matplotlib: pip install "dg_moe[plot]"')
    shape = MODEL_SHAPES["qwen3-30b-a3b"]
    monkeypatch.setattr(moe, "require_gpu", lambda fix: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPU)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(moe, "machine_facts", lambda: MACHINE)

    def bench_shape(s, batches, hbm, fp8, deepgemm):
        assert deepgemm == "n/a: disabled by --no-deepgemm"
        for t in batches:
            gpu = {"dg_moe": 300.0, "deepgemm_layer": deepgemm, "bf16_grouped": 600.0}
            eager = None if t <= 128 else {**gpu, "dg_moe": 500.0}
            yield moe.make_row(s, t, "masked" if t <= 128 else "contiguous", 64, 10_000_000, gpu, eager,
                               {"deepgemm_layer": deepgemm, "bf16_grouped": 1e-3}, hbm, fp8)

    monkeypatch.setattr(moe, "bench_shape", bench_shape)
    argv = ["bench", "moe", "--models", shape.name, "--batches", "8,4096", "--out", str(tmp_path),
            "--plot", str(tmp_path / "moe.png"), "--no-deepgemm"]
    assert cli.main(argv) == 0
    doc = json.loads((tmp_path / "bench_moe.json").read_text())
    assert doc["schema"] == moe.SCHEMA and doc["meta"]["models"] == [shape.name] and doc["meta"]["roofline"] == PEAK
    assert doc["results"][1]["flops"] == 6 * 4096 * shape.top_k * shape.hidden * shape.intermediate
    assert set(doc["results"][0]) == set(_load("moe")["results"][0])
    assert capsys.readouterr().out.endswith(f"chart: {tmp_path / 'moe.png'}\n")
    _assert_png(tmp_path / "moe.png")


def test_layout_bench_writes_the_json_and_its_chart(monkeypatch, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason='the chart needs matplotlib: pip install "dg_moe[plot]"')
    monkeypatch.setattr(layout, "require_gpu", lambda fix, sm90: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPU)
    monkeypatch.setattr(layout, "machine_facts", lambda: MACHINE)
    monkeypatch.setattr(layout, "_cases", lambda tokens: [(f"reduce x T={tokens}", None, 3_350_000)])
    monkeypatch.setattr(layout, "gpu_times_us", lambda fns: [2.0, "n/a (RuntimeError: no kernel)"])
    assert cli.main(["bench", "layout", "--json", str(tmp_path / "l.json"), "--plot", str(tmp_path / "l.png")]) == 0
    out = capsys.readouterr().out
    assert "reduce x T=128" in out and "n/a (RuntimeError: no kernel)" in out and "1675" in out
    doc = json.loads((tmp_path / "l.json").read_text())
    assert doc["schema"] == layout.SCHEMA and [r["layout"] for r in doc["results"]] == ["masked", "contiguous"]
    assert set(doc["results"][0]) == set(_load("layout")["results"][0]) and doc["results"][0]["speedup"] is None
    _assert_png(tmp_path / "l.png")
