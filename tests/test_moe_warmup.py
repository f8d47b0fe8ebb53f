"""`dg-moe warmup`: it lists exactly the GEMM variants the layer's forward asks for, and compiles them."""

from __future__ import annotations

import json

import pytest

from dg_moe.kernels.sm90_fp8_gemm import GemmType
from dg_moe.kernels.sm90_fp8_gemm.variants import VariantSet
from dg_moe.moe import _gemms, fused_moe, shared
from dg_moe.moe.shapes import MODEL_SHAPES, MoEShape
from dg_moe.moe.warmup import layer_variants
from dg_moe.moe.warmup import main as warmup_main

from .moe_loops import hidden_states, layer, routing

SHAPE = MoEShape("tiny", hidden=256, intermediate=128, experts=8, top_k=2, shared_intermediate=128)


@pytest.fixture
def requested(monkeypatch):
    """The (type, rows hint, N, K, groups) of every GEMM call the MoE forward makes (CPU reference runs them)."""
    calls = []

    def record(module, name, describe):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(describe(*args, **kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    def grouped(gemm_type):
        def describe(a, b, d, layout, hint=None, **kwargs):
            hint = kwargs.get("expected_m_for_psum_layout", hint)
            groups, n, k = b[0].shape
            return gemm_type, hint, n, k, groups
        return describe

    record(_gemms, "m_grouped_fp8_gemm_nt_masked_unchecked", grouped(GemmType.MASKED))
    record(_gemms, "m_grouped_fp8_gemm_nt_contiguous_unchecked", grouped(GemmType.CONTIGUOUS_PSUM))
    record(shared, "fp8_gemm_nt_unchecked",
           lambda a, b, d, *rest, **kw: (GemmType.NORMAL, a[0].shape[0], *b[0].shape, 1))
    return calls


@pytest.mark.parametrize("num_tokens", [1, 3, 40, 129])
def test_warmup_lists_every_variant_the_forward_requests(requested, num_tokens):
    lay = layer(SHAPE.experts, SHAPE.hidden, SHAPE.intermediate, num_tokens, SHAPE.shared_intermediate)
    hidden = hidden_states(num_tokens, SHAPE.hidden, seed=num_tokens + 1)
    ids, weights = routing(num_tokens, SHAPE.top_k, SHAPE.experts, seed=num_tokens + 2)
    for mode in ("masked", "contiguous"):
        fused_moe(hidden, *lay.routed, ids, weights, mode=mode, shared_expert=lay.shared)
    assert {call[0] for call in requested} == {GemmType.MASKED, GemmType.CONTIGUOUS_PSUM, GemmType.NORMAL}
    for num_sms in (132, 78):
        asked = VariantSet(num_sms)
        for call in requested:
            asked.add(*call)
        listed = layer_variants(SHAPE, [num_tokens], num_sms)
        assert sorted(map(sorted, (v.items() for v in asked.variants()))) == \
            sorted(map(sorted, (v.items() for v in listed)))


def test_deepseek_v3_needs_few_variants():
    variants = layer_variants(MODEL_SHAPES["deepseek-v3"], [2**i for i in range(14)], 132)
    assert 4 <= len(variants) <= 24
    assert len({tuple(sorted(v.items())) for v in variants}) == len(variants)


@pytest.mark.nvcc
def test_warmup_command_compiles_into_the_cache_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DG_MOE_CACHE_DIR", str(tmp_path))
    argv = ["--shape", "256,128,8,2", "--batches", "1", "--num-sms", "132", "--jobs", "2", "--json"]
    expected = len(layer_variants(MoEShape("c", 256, 128, 8, 2), [1], 132))
    assert warmup_main(argv) == 0
    libraries = sorted(tmp_path.rglob("kernel.so"))
    assert len(libraries) == expected > 0
    first = json.loads(capsys.readouterr().out)
    assert (first["variants"], first["compiled"], first["cached"], first["failed"]) == (expected, expected, 0, 0)
    stamps = [p.stat().st_mtime_ns for p in libraries]
    assert warmup_main(argv[:-1]) == 0  # all cached: nothing is rebuilt
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("kernel.so"))] == stamps
    captured = capsys.readouterr()
    assert f"{expected} of {expected} variants cached" in captured.out
    assert f"(0 compiled, {expected} already cached, 0 failed)" in captured.out
    assert f"[{expected}/{expected}]" in captured.err


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(family, variant count) of each compile_many call the warmup command makes, in order; compile_each
    stands in for nvcc and reports every variant compiled."""
    from dg_moe.jit import CompileOutcome
    from dg_moe.moe import warmup

    calls = []

    def compile_each(family, variants, jobs):
        calls.append((family, len(variants)))
        for index in range(len(variants)):
            yield CompileOutcome(index, None, True, 0.0)

    monkeypatch.setattr(warmup, "compile_each", compile_each)
    monkeypatch.setattr(warmup, "get_toolchain", lambda: None)
    return calls


def test_wgrad_adds_the_backward_weight_gradient_variants(compiled, capsys):
    """--wgrad compiles, after the forward's variants, the weight-gradient family's: both K-grouped layout
    forms for the two expert GEMMs and the shared expert's dense ones (compile_each stands in for nvcc)."""
    from dg_moe.kernels.sm90_fp8_wgrad import FAMILY as WGRAD_FAMILY
    from dg_moe.moe import warmup

    wgrad = warmup.layer_wgrad_variants(MODEL_SHAPES["deepseek-v3"], [2**i for i in range(14)], 132)
    kinds = {(v["WGRAD_TYPE"].rsplit("::", 1)[1], v["SHAPE_N"]) for v in wgrad}
    assert kinds == {(t, n) for t in ("KGrouped", "KGroupedPsum", "Normal") for n in (7168, 2048)}
    assert warmup.describe_variant(wgrad[0]) == "wgrad KGrouped N=7168 128x144x2B, 6 stages"

    assert warmup_main(["--shape", "256,128,8,2,128", "--batches", "1,4096", "--num-sms", "132", "--wgrad",
                        "--json"]) == 0
    forward = len(layer_variants(MoEShape("c", 256, 128, 8, 2, 128), [1, 4096], 132))
    backward = len(warmup.layer_wgrad_variants(MoEShape("c", 256, 128, 8, 2, 128), [1, 4096], 132))
    assert compiled == [(warmup.FAMILY, forward), (WGRAD_FAMILY, backward)]
    summary = json.loads(capsys.readouterr().out)
    assert (summary["variants"], summary["compiled"], summary["failed"]) == (forward + backward,) * 2 + (0,)


def test_bf16_and_wgrad_together_compile_all_three_families(compiled, capsys):
    """--bf16 --wgrad: the forward's FP8 variants, then the BF16 family's, then the weight-gradient family's,
    progress numbered through all of them and the summary counting every one (compile_each stands in for nvcc)."""
    from dg_moe.kernels import sm90_bf16_gemm
    from dg_moe.kernels.sm90_fp8_wgrad import FAMILY as WGRAD_FAMILY
    from dg_moe.moe import warmup

    shape, batches = MoEShape("c", 256, 128, 8, 2, 128), [1, 4096]
    assert warmup_main(["--shape", "256,128,8,2,128", "--batches", "1,4096", "--num-sms", "132", "--bf16",
                        "--wgrad", "--json"]) == 0
    forward = len(layer_variants(shape, batches, 132))
    bf16 = len(layer_variants(shape, batches, 132, bf16=True))
    # With --bf16, the BF16 experts' K-grouped weight gradients too (no shared expert's: BF16 dense family).
    bf16_wgrad = warmup.layer_wgrad_variants(shape, batches, 132, bf16=True)
    assert {v["OPERANDS"].rsplit("::", 1)[1] for v in bf16_wgrad} == {"Bf16"}
    assert {v["WGRAD_TYPE"].rsplit("::", 1)[1] for v in bf16_wgrad} == {"KGrouped", "KGroupedPsum"}
    assert warmup.describe_variant(bf16_wgrad[0]) == "wgrad BF16 KGrouped N=256 128x128, 7 stages"
    backward = len(warmup.layer_wgrad_variants(shape, batches, 132)) + len(bf16_wgrad)
    assert compiled == [(warmup.FAMILY, forward), (sm90_bf16_gemm.FAMILY, bf16), (WGRAD_FAMILY, backward)]
    captured = capsys.readouterr()
    total = forward + bf16 + backward
    summary = json.loads(captured.out)
    assert (summary["variants"], summary["compiled"], summary["failed"]) == (total, total, 0)
    assert f"[{forward + 1}/{total}] BF16 " in captured.err
    assert f"[{forward + bf16 + 1}/{total}] wgrad " in captured.err
    assert f"[{total}/{total}]" in captured.err
