"""The MoE benchmark's peers compute the same MoE as ``fused_moe``, and its rows, floors and JSON, on CPU.

The BF16 peer runs torch._grouped_mm on CPU too. The DeepGEMM layer peer runs the fused layer's code with
its two grouped GEMMs taken from ``deep_gemm``; here a stand-in module does those GEMMs with dg_moe's CPU
reference and asserts what DeepGEMM's SM90 kernels assume of their buffers without checking it.
"""

from __future__ import annotations

import json
import sys
from types import ModuleType

import pytest
import torch

from dg_moe import cli
from dg_moe import reference as ref
from dg_moe.bench import moe
from dg_moe.bench.moe import grouped_mm_moe, hbm_bandwidth
from dg_moe.bench.peer_deepgemm import DEEPGEMM_MASKED_ROWS_ALIGNMENT, DeepGemmStatus, layer_gemms, load_deep_gemm
from dg_moe.bench.roofline import COMPUTE_FLOOR_SOURCE, FP8_SOURCE, compute_floor_rate, fp8_peak
from dg_moe.bench.timing import eager_times_us
from dg_moe.layout import align
from dg_moe.moe import fused_moe, reference_moe
from dg_moe.moe._gemms import DG_MOE_GEMMS, GroupedGemms
from dg_moe.moe.fused import fused_moe_layer
from dg_moe.moe.shapes import MODEL_SHAPES
from dg_moe.reference import calc_diff

from .bench_results import GPU, MACHINE
from .moe_loops import hidden_states, layer, routing

E, H, INTER, K = 8, 256, 128, 2


class FakeDeepGemm(ModuleType):
    """A ``deep_gemm`` stand-in: the two grouped FP8 GEMMs by dg_moe's CPU reference, after asserting the
    buffers DeepGEMM's SM90 kernels need; every output row no group owns is NaN, as the tiles DeepGEMM
    stores there hold no token's result, so a layer that read one would show it."""

    def __init__(self, alignment: int = 128) -> None:
        super().__init__("deep_gemm")
        self.__file__ = "/opt/deepgemm/deep_gemm/__init__.py"
        self.__version__ = "0.0-fake"
        self.alignment = alignment
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def get_mk_alignment_for_contiguous_layout(self) -> int:
        return self.alignment

    def m_grouped_fp8_gemm_nt_contiguous(self, a, b, d, grouped_layout, use_psum_layout=False,
                                         expected_m_for_psum_layout=None) -> None:
        assert use_psum_layout and isinstance(expected_m_for_psum_layout, int) and expected_m_for_psum_layout > 0
        assert grouped_layout.dtype == torch.int32 and grouped_layout.is_contiguous()
        assert grouped_layout.numel() == b[0].shape[0]
        assert a[0].is_contiguous() and b[0].is_contiguous() and d.is_contiguous() and d.dtype == torch.bfloat16
        assert d.shape == (a[0].shape[0], b[0].shape[1])
        # Group g starts at the previous end rounded up to the alignment and may not run past the buffer.
        prev, start = 0, 0
        for end in grouped_layout.tolist():
            start = align(prev, self.alignment)
            assert start <= end <= d.shape[0]
            prev = end
        self.calls.append(("contiguous", tuple(d.shape)))
        d.fill_(float("nan"))
        ref.m_grouped_fp8_gemm_nt_contiguous(a, b, d, grouped_layout, use_psum_layout=True,
                                             expected_m_for_psum_layout=expected_m_for_psum_layout)

    def m_grouped_fp8_gemm_nt_masked(self, a, b, d, masked_m, expected_m) -> None:
        groups, max_m, _ = a[0].shape
        # Its tiles of 64 or 128 rows are stored at g * max_m of the flattened output: max_m must hold whole tiles.
        assert max_m % 128 == 0, f"max_m {max_m} is not a multiple of DeepGEMM's BLOCK_M (64 or 128)"
        assert isinstance(expected_m, int) and expected_m > 0
        assert masked_m.dtype == torch.int32 and masked_m.is_contiguous() and masked_m.numel() == groups
        assert int(masked_m.max()) <= max_m
        assert a[0].is_contiguous() and b[0].is_contiguous() and d.is_contiguous() and d.dtype == torch.bfloat16
        assert d.shape == (groups, max_m, b[0].shape[1])
        self.calls.append(("masked", tuple(d.shape)))
        d.fill_(float("nan"))
        ref.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m)


def _layer_inputs(tokens: int, seed: int = 5):
    lay = layer(E, H, INTER, seed)
    hidden = hidden_states(tokens, H, seed + 1)
    ids, weights = routing(tokens, K, E, seed + 2, dtype=torch.int32)
    return lay, hidden, ids, weights


# --- the GEMM seam and the DeepGEMM layer peer ------------------------------------------------------------


def test_grouped_mm_peer_matches_the_float64_moe():
    g = torch.Generator().manual_seed(3)
    experts, hidden, inter, tokens, top_k = 6, 256, 128, 40, 2
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=g) / 16).bfloat16()
    w2 = (torch.randn(experts, hidden, inter, generator=g) / 11).bfloat16()
    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    # Expert 5 gets no token: an empty group must be handled.
    ids = torch.rand(tokens, experts - 1, generator=g).topk(top_k, dim=-1).indices.int()
    weights = torch.rand(tokens, top_k, generator=g)
    out = grouped_mm_moe(x, w13, w2, ids, weights)
    assert out.dtype == torch.bfloat16 and out.shape == (tokens, hidden)
    assert calc_diff(out.double(), reference_moe(x, w13, w2, ids.long(), weights)) < 1e-4


@pytest.mark.parametrize("mode", ["masked", "contiguous"])
def test_the_default_seam_is_dg_moes_gemms_on_max_m_rows(mode):
    """fused_moe runs dg_moe's own two GEMMs through the seam, with masked buffers of exactly max_m rows."""
    lay, hidden, ids, weights = _layer_inputs(5)
    seen: list[tuple[str, tuple[int, ...]]] = []

    def spy(kind, gemm):
        def call(a, b, d, layout, expected_m):
            seen.append((kind, tuple(d.shape)))
            gemm(a, b, d, layout, expected_m)
        return call

    recording = GroupedGemms(spy("contiguous", DG_MOE_GEMMS.contiguous), spy("masked", DG_MOE_GEMMS.masked))
    for max_m in (None, 3):
        ours = fused_moe(hidden, *lay.routed, ids, weights, mode=mode, max_m=max_m)
        out, _ = fused_moe_layer(hidden, *lay.routed, ids, weights, mode, max_m, 1.0, None, gemms=recording)
        assert torch.equal(out, ours)
    if mode == "masked":
        assert [shape[:2] for _, shape in seen] == [(E, 5), (E, 5), (E, 3), (E, 3)]
    assert [kind for kind, _ in seen] == [mode] * 4
    assert DG_MOE_GEMMS.masked_rows(5) == 5 and DG_MOE_GEMMS.masked_rows(33) == 33


@pytest.mark.parametrize("mode", ["masked", "contiguous"])
@pytest.mark.parametrize("tokens", [1, 5, 33, 300])
def test_the_deepgemm_layer_peer_equals_fused_moe(mode, tokens):
    lay, hidden, ids, weights = _layer_inputs(tokens, seed=tokens)
    fake = FakeDeepGemm()
    peer = moe.layer_peer_moe(layer_gemms(fake), hidden, *lay.routed, ids, weights, mode)
    ours = fused_moe(hidden, *lay.routed, ids, weights, mode=mode)
    assert torch.equal(peer, ours) and not peer.isnan().any()
    rows = align(tokens, DEEPGEMM_MASKED_ROWS_ALIGNMENT)
    assert [kind for kind, _ in fake.calls] == [mode, mode]
    if mode == "masked":  # max_m = T rounded up for DeepGEMM, both GEMMs
        assert [shape[:2] for _, shape in fake.calls] == [(E, rows), (E, rows)]


def test_the_fake_refuses_what_deepgemm_would_get_wrong():
    """Without the rounding, the stand-in's assertion fires: DeepGEMM's masked GEMM given max_m = T."""
    lay, hidden, ids, weights = _layer_inputs(5)
    fake = FakeDeepGemm()
    unrounded = GroupedGemms(layer_gemms(fake).contiguous, layer_gemms(fake).masked)
    with pytest.raises(AssertionError, match="max_m 5 is not a multiple"):
        moe.layer_peer_moe(unrounded, hidden, *lay.routed, ids, weights, "masked")


def test_another_contiguous_alignment_loses_the_peer_its_column():
    with pytest.raises(RuntimeError, match="get_mk_alignment_for_contiguous_layout\\(\\) is 64"):
        layer_gemms(FakeDeepGemm(alignment=64))
    status = DeepGemmStatus(FakeDeepGemm(alignment=64), version="0.0-fake")
    reason = moe.deepgemm_layer_gemms(status)
    assert isinstance(reason, str) and reason.startswith("n/a (RuntimeError: deep_gemm.get_mk_alignment")


def test_deep_gemm_imported_or_disabled(monkeypatch):
    fake = FakeDeepGemm()
    monkeypatch.setitem(sys.modules, "deep_gemm", fake)
    status = load_deep_gemm()
    assert status.module is fake and status.version == "0.0-fake"
    assert isinstance(moe.deepgemm_layer_gemms(status), GroupedGemms)
    disabled = load_deep_gemm("disabled by --no-deepgemm")
    assert disabled.module is None and moe.deepgemm_layer_gemms(disabled) == "n/a: disabled by --no-deepgemm"


# --- floors, ratios, rows ---------------------------------------------------------------------------------


def test_floor_bandwidth_by_gpu_name():
    assert hbm_bandwidth("NVIDIA H200") == 4.8e12
    assert hbm_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert hbm_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert hbm_bandwidth("NVIDIA A100-SXM4-80GB") is None


def test_compute_floor_rate_names_its_source():
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA H800"):
        assert compute_floor_rate(name, 132) == {"fp8_flops_per_s": 1.5e15, "source": COMPUTE_FLOOR_SOURCE}
    assert "issue 16" in COMPUTE_FLOOR_SOURCE and "not measured" in COMPUTE_FLOOR_SOURCE
    # No goal rate for the PCIe card or an unlisted GPU: the cost model's peak, said so.
    assert compute_floor_rate("NVIDIA H100 PCIe", 114) == {"fp8_flops_per_s": fp8_peak(114), "source": FP8_SOURCE}
    assert compute_floor_rate("NVIDIA A100-SXM4-80GB", None)["fp8_flops_per_s"] is None


def test_rows_price_both_floors_and_the_peers_from_the_recorded_times():
    shape = MODEL_SHAPES["deepseek-v3"]
    expert_bytes, touched, hbm, fp8 = 44_000_000, 256, 3.35e12, 1.5e15
    gpu = {"dg_moe": 5000.0, "deepgemm_layer": 4650.0, "bf16_grouped": 14000.0}
    eager = {"dg_moe": 7800.0, "deepgemm_layer": 7900.0, "bf16_grouped": "n/a (RuntimeError: out of memory)"}
    row = moe.make_row(shape, 4096, "contiguous", touched, expert_bytes, gpu, eager,
                       {"deepgemm_layer": 0.0, "bf16_grouped": 9e-4}, hbm, fp8)
    flops = 6 * 4096 * 8 * 7168 * 2048
    assert row.flops == flops and row.weight_bytes == touched * expert_bytes
    assert row.weight_floor_us == pytest.approx(touched * expert_bytes / hbm * 1e6)  # 3362 us
    assert row.compute_floor_us == pytest.approx(flops / fp8 * 1e6)  # 1924 us
    assert row.time_over_floor == pytest.approx(5000.0 / row.weight_floor_us)  # the larger floor
    assert row.weight_gbps == pytest.approx(touched * expert_bytes / 5000.0 / 1e3)
    assert row.ratio_gpu == {"deepgemm_layer": pytest.approx(0.93), "bf16_grouped": pytest.approx(2.8)}
    assert row.ratio_eager == {"deepgemm_layer": pytest.approx(7900 / 7800), "bf16_grouped": None}
    # Decode: GPU time only; a small batch of a small model is compute-free, a peer missing has no ratio.
    small = moe.make_row(MODEL_SHAPES["mixtral-8x7b"], 1, "masked", 2, 1_000_000,
                         {"dg_moe": 10.0, "deepgemm_layer": "n/a: disabled by --no-deepgemm", "bf16_grouped": 20.0},
                         None, {"deepgemm_layer": "n/a: disabled by --no-deepgemm", "bf16_grouped": 1e-3}, hbm, fp8)
    assert small.eager_us is None and small.ratio_eager is None and small.ratio_gpu["deepgemm_layer"] is None
    assert small.time_over_floor == pytest.approx(10.0 / max(small.weight_floor_us, small.compute_floor_us))
    line = moe.progress_line(3, 24, small, 1.25)
    assert line.startswith("   3/24 mixtral-8x7b") and "n/a" in line and line.endswith("| 1.2")
    assert len(moe.progress_line(24, 24, row, 9.0).split("|")) == len(moe.HEADER.split("|"))
    # No floor known (an unknown GPU): no ratio to the floor either.
    assert moe.make_row(shape, 8, "masked", 60, expert_bytes, gpu, None, {}, None, None).time_over_floor is None


def test_interleaved_eager_times_report_a_failing_peer(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    order: list[str] = []

    def broken() -> None:
        raise RuntimeError("no kernel image")

    times = eager_times_us([lambda: order.append("a"), broken, lambda: order.append("b")], calls=2, rounds=3)
    assert isinstance(times[0], float) and isinstance(times[2], float)
    assert times[1] == "n/a (RuntimeError: no kernel image)"
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-up, then the rounds interleaved


def test_default_models_add_mixtral():
    assert moe.DEFAULT_MODELS == ("deepseek-v3", "qwen3-235b-a22b", "qwen3-30b-a3b", "mixtral-8x7b")


# --- the command: JSON schema, --no-deepgemm ----------------------------------------------------------------


@pytest.fixture
def no_gpu_work(monkeypatch):
    """`dg-moe bench moe` with the GPU stood in for: each case's row made from fixed times; returns what
    bench_shape received as the DeepGEMM layer peer."""
    received = []
    monkeypatch.setattr(moe, "require_gpu", lambda fix: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPU)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(moe, "machine_facts", lambda: MACHINE)

    def bench_shape(shape, batches, hbm, fp8, deepgemm):
        received.append(deepgemm)
        for t in batches:
            dg = deepgemm if isinstance(deepgemm, str) else 330.0
            mode = "masked" if t <= 128 else "contiguous"
            gpu = {"dg_moe": 300.0, "deepgemm_layer": dg, "bf16_grouped": 600.0}
            yield moe.make_row(shape, t, mode, 64, 10_000_000, gpu, None if mode == "masked" else gpu,
                               {"deepgemm_layer": 0.0 if dg == 330.0 else dg, "bf16_grouped": 1e-3}, hbm, fp8)

    monkeypatch.setattr(moe, "bench_shape", bench_shape)
    return received


@pytest.mark.parametrize("flag", [[], ["--no-deepgemm"]])
def test_bench_moe_json_and_progress(flag, no_gpu_work, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "deep_gemm", FakeDeepGemm())
    path = tmp_path / "moe.json"
    assert cli.main(["bench", "moe", "--models", "qwen3-30b-a3b,mixtral-8x7b", "--batches", "8,512",
                     "--json", str(path), *flag]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"GPU: {GPU}; weight floor at 3.35 TB/s (datasheet HBM), compute floor at 1500 TFLOPS")
    progress = [line for line in out if line.lstrip().split(" ")[0] in ("1/4", "2/4", "3/4", "4/4")]
    assert len(progress) == 4 and "mixtral-8x7b" in progress[-1]
    doc = json.loads(path.read_text())
    assert doc["schema"] == moe.SCHEMA == "dg_moe.bench.moe/2"
    assert {"models", "batches", "peers", "deepgemm", "weight_floor", "compute_floor", "timing",
            "roofline"} <= set(doc["meta"])
    assert doc["meta"]["compute_floor"] == {"fp8_flops_per_s": 1.5e15, "source": COMPUTE_FLOOR_SOURCE}
    assert doc["meta"]["models"] == ["qwen3-30b-a3b", "mixtral-8x7b"]
    assert set(doc["results"][0]) == {
        "model", "tokens", "mode", "experts_touched", "weight_bytes", "flops", "gpu_us", "eager_us",
        "weight_floor_us", "compute_floor_us", "time_over_floor", "weight_gbps", "ratio_gpu", "ratio_eager",
        "similarity"}
    assert list(doc["results"][0]["gpu_us"]) == list(moe.LIBRARIES)
    assert doc["results"][0]["eager_us"] is None and doc["results"][1]["eager_us"]["dg_moe"] == 300.0
    peer = doc["results"][0]["gpu_us"]["deepgemm_layer"]
    if flag:
        assert no_gpu_work == ["n/a: disabled by --no-deepgemm"] * 2
        assert doc["meta"]["deepgemm"]["reason"] == "disabled by --no-deepgemm"
        assert peer == "n/a: disabled by --no-deepgemm" and doc["results"][0]["ratio_gpu"]["deepgemm_layer"] is None
        assert out[1].startswith("DeepGEMM layer peer: n/a: disabled by --no-deepgemm")
    else:
        assert all(isinstance(g, GroupedGemms) for g in no_gpu_work) and len(no_gpu_work) == 2
        assert doc["meta"]["deepgemm"]["available"] and doc["meta"]["deepgemm"]["version"] == "0.0-fake"
        assert peer == 330.0 and doc["results"][0]["ratio_gpu"]["deepgemm_layer"] == pytest.approx(1.1)


def test_bench_moe_help_offers_no_deepgemm(cuda_untouchable, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "moe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-deepgemm" in text and "default: deepseek-v3,qwen3-235b-a22b,qwen3-30b-a3b,mixtral-8x7b" in text
