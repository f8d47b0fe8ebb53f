"""Argument validation of the public ops: one parametrised test per error class, each checking the
exception type and that the message names the op and the argument (and what it needed)."""

from __future__ import annotations

import math

import pytest
import torch

import dg_moe.ops as ops

FP8, BF16, F32, I32 = torch.float8_e4m3fn, torch.bfloat16, torch.float32, torch.int32
META = torch.device("meta")


def q(*shape, device=None):
    return torch.empty(shape, dtype=FP8, device=device)


def sf(*shape, dtype=F32, device=None):
    return torch.ones(shape, dtype=dtype, device=device)


def call(op, *args, **kwargs):
    return lambda: getattr(ops, op)(*args, **kwargs)


# ---- valid baselines, with overrides --------------------------------------------------------------


def dense(op="fp8_gemm_nt", m=4, n=130, k=256, **over):
    """Valid fp8_gemm_nt args (recipe (1, 128, 128)) unless overridden."""
    args = {"a": (q(m, k), sf(m, math.ceil(k / 128))), "b": (q(n, k), sf(math.ceil(n / 128), math.ceil(k / 128))),
            "d": torch.empty(m, n, dtype=BF16)}
    args.update(over)
    return call(op, **args)


def bf16_dense(op="bf16_gemm_nt", m=4, n=130, k=64, **over):
    args = {"a": torch.empty(m, k, dtype=BF16), "b": torch.empty(n, k, dtype=BF16), "d": torch.empty(m, n, dtype=BF16)}
    args.update(over)
    return call(op, **args)


def contiguous(op="m_grouped_fp8_gemm_nt_contiguous", g=2, m=256, n=130, k=256, psum=False, **over):
    layout = torch.tensor([128, 200], dtype=I32) if psum else torch.cat(
        [torch.zeros(128, dtype=I32), torch.ones(72, dtype=I32), torch.full((56,), -1, dtype=I32)])
    args = {"a": (q(m, k), sf(m, k // 128)), "b": (q(g, n, k), sf(g, math.ceil(n / 128), k // 128)),
            "d": torch.empty(m, n, dtype=BF16), "grouped_layout": layout, "use_psum_layout": psum}
    args.update(over)
    return call(op, **args)


def masked(op="m_grouped_fp8_gemm_nt_masked", g=3, max_m=8, n=130, k=256, **over):
    args = {"a": (q(g, max_m, k), sf(g, max_m, k // 128)), "b": (q(g, n, k), sf(g, math.ceil(n / 128), k // 128)),
            "d": torch.empty(g, max_m, n, dtype=BF16), "masked_m": torch.ones(g, dtype=I32), "expected_m": 4}
    args.update(over)
    return call(op, **args)


def k_grouped(op="k_grouped_fp8_gemm_tn_contiguous", ks=(128, 0, 256), m=5, n=7, **over):
    ks = list(ks)
    sum_k = sum(ks)
    args = {"a": (q(sum_k, m), sf(sum_k // 128, m)), "b": (q(sum_k, n), sf(sum_k // 128, n)),
            "d": torch.empty(len(ks), m, n, dtype=F32), "ks_cpu": ks,
            "grouped_layout": torch.tensor(ks, dtype=I32)}
    args.update(over)
    return call(op, **args)


def case(id_, fn, exc, *needles):
    return pytest.param(fn, exc, needles, id=id_)


def check(fn, exc, needles):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


# ---- error classes ------------------------------------------------------------------------------

WRONG_DTYPE = [
    case("a_not_fp8", dense(a=(torch.empty(4, 256), sf(4, 2))), TypeError, "fp8_gemm_nt:", "a[0]", "float8_e4m3fn"),
    case("a_not_tuple", dense(a=q(4, 256)), TypeError, "fp8_gemm_nt:", "a must be a (tensor, scale_factors)"),
    case("sfb_half", dense(b=(q(130, 256), sf(2, 2, dtype=torch.float16))), TypeError, "b[1]", "float32 or int32"),
    case("d_half", dense(d=torch.empty(4, 130, dtype=torch.float16)), TypeError, "fp8_gemm_nt:", "d must"),
    case("c_dtype", dense(c=torch.empty(4, 130)), TypeError, "c must", "bfloat16"),
    case("recipe_vs_d", dense(d=torch.empty(4, 130), recipe=(1, 128, 128)), TypeError, "recipe (1, 128, 128)",
         "bfloat16 d"),
    case("bf16_a_float", bf16_dense(a=torch.empty(4, 64)), TypeError, "bf16_gemm_nt:", "a must", "bfloat16"),
    case("layout_int64", contiguous(grouped_layout=torch.zeros(256, dtype=torch.int64)), TypeError,
         "m_grouped_fp8_gemm_nt_contiguous:", "grouped_layout", "int32"),
    case("masked_m_int64", masked(masked_m=torch.ones(3, dtype=torch.int64)), TypeError, "masked_m", "int32"),
    case("masked_d_f32", masked(d=torch.empty(3, 8, 130)), TypeError, "m_grouped_fp8_gemm_nt_masked:", "d must"),
    case("k_grouped_packed_sf", k_grouped(a=(q(384, 5), sf(3, 5, dtype=I32))), TypeError, "sfa (a[1])", "float32"),
    case("k_grouped_d_bf16", k_grouped(d=torch.empty(3, 5, 7, dtype=BF16)), TypeError, "d must", "float32"),
    case("contiguous_d_f32", contiguous(d=torch.empty(256, 130)), TypeError, "d must", "bfloat16"),
]

WRONG_SHAPE = [
    case("sfa_example", dense(k=1024, a=(q(4, 1024), sf(4, 7)), b=(q(130, 1024), sf(2, 8))), ValueError,
         "fp8_gemm_nt: sfa (a[1]) has shape (4, 7) but recipe (1, 128, 128) with M=4, K=1024 needs (4, 8)"),
    case("sfb_1d1d", dense(d=torch.empty(4, 130), b=(q(130, 256), sf(2, 2))), ValueError, "sfb (b[1])",
         "(1, 1, 128)", "needs (130, 2)", "inferred from d's dtype"),
    case("sfa_packed", dense(a=(q(4, 256), sf(4, 2, dtype=I32))), ValueError, "sfa (a[1])", "needs (4, 1)",
         "packed UE8M0"),
    case("sfb_nn_not_transposed", dense(op="fp8_gemm_nn", n=300, b=(q(256, 300), sf(3, 2))), ValueError,
         "fp8_gemm_nn:", "sfb (b[1])", "needs (2, 3)", "transposed"),
    case("d_shape", dense(d=torch.empty(4, 129, dtype=BF16)), ValueError, "d has shape (4, 129)", "(4, 130)"),
    case("k_mismatch", dense(b=(q(130, 384), sf(2, 3))), ValueError, "disagree on K", "K=256", "K=384"),
    case("c_shape", dense(c=torch.empty(4, 1, dtype=BF16)), ValueError, "c has shape (4, 1)"),
    case("a_3d", dense(a=(q(1, 4, 256), sf(1, 4, 2))), ValueError, "a[0] must be 2-D"),
    case("m0_still_validated", dense(m=0, b=(q(130, 256), sf(2, 3))), ValueError, "sfb (b[1])", "needs (2, 2)"),
    case("bf16_d_shape", bf16_dense(op="bf16_gemm_tn", a=torch.empty(64, 4, dtype=BF16),
                                     b=torch.empty(64, 130, dtype=BF16), d=torch.empty(130, 4, dtype=BF16)),
         ValueError, "bf16_gemm_tn:", "d has shape (130, 4)", "(4, 130)"),
    case("contiguous_no_group", contiguous(b=(q(0, 130, 256), sf(0, 2, 2))), ValueError, "b holds no group"),
    case("contiguous_sfb", contiguous(b=(q(2, 130, 256), sf(2, 1, 2))), ValueError, "sfb (b[1])", "(2, 2, 2)"),
    case("masked_groups", masked(b=(q(2, 130, 256), sf(2, 2, 2))), ValueError, "a has 3 groups", "b has 2"),
    case("masked_d", masked(d=torch.empty(3, 9, 130, dtype=BF16)), ValueError, "d has shape (3, 9, 130)"),
    case("k_grouped_m", k_grouped(d=torch.empty(3, 6, 7)), ValueError, "k_grouped_fp8_gemm_tn_contiguous:",
         "d has shape (3, 6, 7)"),
    case("k_grouped_sfb", k_grouped(b=(q(384, 7), sf(2, 7))), ValueError, "sfb (b[1])", "needs (3, 7)"),
]

def dense_tn(**over):
    """Valid fp8_gemm_tn args: a [K, M], b [K, N], scales transposed likewise."""
    return dense(op="fp8_gemm_tn", **({"a": (q(256, 4), sf(2, 4)), "b": (q(256, 130), sf(2, 2))} | over))


_strided_buf = torch.empty(2 * 4 * 130, dtype=BF16)
WRONG_STRIDE = [
    case("d_transposed", dense_tn(d=torch.empty(130, 4, dtype=BF16).T), ValueError, "fp8_gemm_tn:", "d must",
         "stride 1"),
    case("c_transposed", dense(c=torch.empty(130, 4, dtype=BF16).T), ValueError, "c must", "stride 1"),
    case("c_aliases_d_other_strides", dense(d=_strided_buf[:520].view(4, 130),
                                            c=_strided_buf.as_strided((4, 130), (260, 1))),
         ValueError, "c aliases d"),
    case("a_no_unit_stride", dense_tn(a=(q(256, 8)[:, ::2], sf(2, 4))), ValueError, "a[0] must have stride 1"),
    case("bf16_masked_d", masked(op="m_grouped_bf16_gemm_nt_masked", a=torch.empty(3, 8, 64, dtype=BF16),
                                 b=torch.empty(3, 130, 64, dtype=BF16),
                                 d=torch.empty(3, 130, 8, dtype=BF16).transpose(1, 2)),
         ValueError, "m_grouped_bf16_gemm_nt_masked:", "d must", "stride 1"),
    case("k_grouped_d", k_grouped(d=torch.empty(3, 7, 5).transpose(1, 2)), ValueError, "d must", "stride 1"),
    case("bf16_d", bf16_dense(d=torch.empty(130, 4, dtype=BF16).T), ValueError, "bf16_gemm_nt:", "d must"),
]

# The ops the SM90 kernel runs take contiguous a[0], b[0] and d (its TMA addresses dense rows), on CPU too.
NOT_CONTIGUOUS = [
    case("dense_a_column_slice", dense(a=(q(4, 512)[:, :256], sf(4, 2))), ValueError,
         "fp8_gemm_nt: a[0] must be contiguous", "strides (512, 1)", "(256, 1)", "a[0].contiguous()"),
    case("dense_a_mn_major", dense(a=(q(256, 4).T, sf(4, 2))), ValueError, "fp8_gemm_nt: a[0] must be contiguous",
         "strides (1, 4)"),
    case("dense_b_column_slice", dense(b=(q(130, 512)[:, :256], sf(2, 2))), ValueError,
         "fp8_gemm_nt: b[0] must be contiguous", "strides (512, 1)", "b[0].contiguous()"),
    case("dense_d_row_slice", dense(d=torch.empty(4, 200, dtype=BF16)[:, :130]), ValueError,
         "fp8_gemm_nt: d must be contiguous", "strides (200, 1)", "(130, 1)", "d.contiguous()"),
    case("dense_d_transposed", dense(d=torch.empty(130, 4, dtype=BF16).T), ValueError,
         "fp8_gemm_nt: d must be contiguous", "strides (1, 4)"),
    case("contiguous_a", contiguous(a=(q(256, 512)[:, 256:], sf(256, 2))), ValueError,
         "m_grouped_fp8_gemm_nt_contiguous: a[0] must be contiguous", "strides (512, 1)"),
    case("contiguous_b", contiguous(b=(q(2, 130, 512)[..., :256], sf(2, 2, 2))), ValueError,
         "m_grouped_fp8_gemm_nt_contiguous: b[0] must be contiguous", "strides (66560, 512, 1)"),
    case("contiguous_d_row_slice", contiguous(d=torch.empty(256, 256, dtype=BF16)[:, :130]), ValueError,
         "m_grouped_fp8_gemm_nt_contiguous: d must be contiguous", "strides (256, 1)", "d.contiguous()"),
    case("masked_a_padded_experts", masked(a=(q(3, 16, 256)[:, :8], sf(3, 8, 2))), ValueError,
         "m_grouped_fp8_gemm_nt_masked: a[0] must be contiguous", "strides (4096, 256, 1)"),
    case("masked_b", masked(b=(q(3, 130, 512)[..., :256], sf(3, 2, 2))), ValueError,
         "m_grouped_fp8_gemm_nt_masked: b[0] must be contiguous"),
    case("masked_d_transposed", masked(d=torch.empty(3, 130, 8, dtype=BF16).transpose(1, 2)), ValueError,
         "m_grouped_fp8_gemm_nt_masked: d must be contiguous", "strides (1040, 1, 8)"),
]

MISMATCHED_DEVICE = [
    case("b_meta", dense(b=(q(130, 256, device=META), sf(2, 2, device=META))), ValueError, "fp8_gemm_nt:",
         "b[0] is on meta", "d is on cpu"),
    case("sfa_meta", dense(a=(q(4, 256), sf(4, 2, device=META))), ValueError, "a[1] (sfa) is on meta"),
    case("c_meta", dense(c=torch.empty(4, 130, dtype=BF16, device=META)), ValueError, "c is on meta"),
    case("layout_meta", contiguous(grouped_layout=torch.zeros(256, dtype=I32, device=META)), ValueError,
         "grouped_layout is on meta"),
    case("masked_m_meta", masked(masked_m=torch.ones(3, dtype=I32, device=META)), ValueError, "masked_m is on meta"),
    case("bf16_a_meta", bf16_dense(a=torch.empty(4, 64, dtype=BF16, device=META)), ValueError, "a is on meta"),
    case("k_grouped_b_meta", k_grouped(b=(q(384, 7, device=META), sf(3, 7, device=META))), ValueError,
         "b[0] is on meta"),
]

K_NOT_ALIGNED = [
    case("dense", dense(k=200), ValueError, "fp8_gemm_nt: K = 200, not a multiple of 128", "pad a and b along K"),
    case("dense_tn", dense_tn(a=(q(200, 4), sf(2, 4)), b=(q(200, 130), sf(2, 2))), ValueError,
         "fp8_gemm_tn: K = 200"),
    case("contiguous", contiguous(k=64), ValueError, "m_grouped_fp8_gemm_nt_contiguous: K = 64"),
    case("masked", masked(k=320), ValueError, "m_grouped_fp8_gemm_nt_masked: K = 320", "multiple of 128"),
]

BAD_GROUPED_LAYOUT = [
    case("per_row_length", contiguous(grouped_layout=torch.zeros(255, dtype=I32)), ValueError,
         "grouped_layout has 255 elements", "M_sum"),
    case("psum_length", contiguous(psum=True, grouped_layout=torch.tensor([1, 2, 3], dtype=I32)), ValueError,
         "grouped_layout has 3 elements", "G"),
    case("not_contiguous", contiguous(grouped_layout=torch.zeros(512, dtype=I32)[::2]), ValueError,
         "grouped_layout must be contiguous"),
    case("id_too_large", contiguous(grouped_layout=torch.tensor([0, 0, 0, 5] + [-1] * 252, dtype=I32)), ValueError,
         "grouped_layout[3] = 5", "[0, 2)"),
    case("id_below_minus_one", contiguous(grouped_layout=torch.tensor([-2] + [-1] * 255, dtype=I32)), ValueError,
         "grouped_layout[0] = -2"),
    case("mixed_tile", contiguous(grouped_layout=torch.tensor([0] * 100 + [1] * 156, dtype=I32)), ValueError,
         "rows 0..127", "one group"),
    case("row_after_padding", contiguous(grouped_layout=torch.tensor([-1] * 10 + [0] * 246, dtype=I32)),
         ValueError, "rows 0..127", "padding (-1) after"),
    case("psum_decreasing", contiguous(psum=True, grouped_layout=torch.tensor([130, 100], dtype=I32)), ValueError,
         "grouped_layout[1] = 100 is below the previous end 130"),
    case("psum_gap", contiguous(psum=True, grouped_layout=torch.tensor([100, 120], dtype=I32)), ValueError,
         "grouped_layout[1] = 120 falls in the alignment gap 100..127"),
    case("psum_past_end", contiguous(psum=True, grouped_layout=torch.tensor([128, 300], dtype=I32)), ValueError,
         "grouped_layout[1] = 300 exceeds M_sum = 256"),
    case("expected_m_without_psum", contiguous(expected_m_for_psum_layout=64), ValueError,
         "expected_m_for_psum_layout is only used with use_psum_layout=True"),
    case("expected_m_psum_zero", contiguous(psum=True, expected_m_for_psum_layout=0), ValueError,
         "expected_m_for_psum_layout must be > 0"),
    case("psum_flag_not_bool", contiguous(use_psum_layout=1), TypeError, "use_psum_layout must be a bool"),
    case("bf16_layout_length", contiguous(op="m_grouped_bf16_gemm_nn_contiguous", a=torch.empty(256, 64, dtype=BF16),
                                          b=torch.empty(2, 64, 130, dtype=BF16),
                                          grouped_layout=torch.zeros(3, dtype=I32)),
         ValueError, "m_grouped_bf16_gemm_nn_contiguous:", "grouped_layout has 3 elements"),
    case("masked_m_length", masked(masked_m=torch.ones(2, dtype=I32)), ValueError, "masked_m has 2 elements"),
]

BAD_EXPECTED_M = [
    case("zero", masked(expected_m=0), ValueError, "m_grouped_fp8_gemm_nt_masked: expected_m must be > 0"),
    case("negative", masked(expected_m=-4), ValueError, "expected_m must be > 0, got -4"),
    case("float", masked(expected_m=1.5), TypeError, "expected_m must be a positive int"),
    case("bool", masked(expected_m=True), TypeError, "expected_m must be a positive int"),
    case("bf16_zero", masked(op="m_grouped_bf16_gemm_nt_masked", a=torch.empty(3, 8, 64, dtype=BF16),
                             b=torch.empty(3, 130, 64, dtype=BF16), expected_m=0), ValueError,
         "m_grouped_bf16_gemm_nt_masked: expected_m"),
]

KS_CPU_MISMATCH = [
    case("sum", k_grouped(ks_cpu=[128, 0, 128], grouped_layout=torch.tensor([128, 0, 128], dtype=I32)), ValueError,
         "ks_cpu sums to 256 but a has sum_K = 384"),
    case("length", k_grouped(ks_cpu=[128, 256]), ValueError, "ks_cpu has 2 entries", "G = 3"),
    case("alignment", k_grouped(ks=(128, 100, 156), ks_cpu=[128, 100, 156]), ValueError,
         "ks_cpu[1] = 100 is not a non-negative multiple of 128"),
    case("tensor", k_grouped(ks_cpu=torch.tensor([128, 0, 256])), TypeError, "ks_cpu must be a list"),
    case("layout_values", k_grouped(grouped_layout=torch.tensor([128, 256, 0], dtype=I32)), ValueError,
         "grouped_layout[1] = 256 but must equal ks_cpu: 0"),
    case("psum_layout_values", k_grouped(use_psum_layout=True), ValueError,
         "grouped_layout[1] = 0 but must equal the running sum of ks_cpu (use_psum_layout=True): 128"),
    case("bf16_sum", k_grouped(op="k_grouped_bf16_gemm_tn_contiguous", a=torch.empty(384, 5, dtype=BF16),
                               b=torch.empty(256, 7, dtype=BF16)), ValueError,
         "k_grouped_bf16_gemm_tn_contiguous:", "b has 256"),
]

BAD_OPTIONS = [
    case("compiled_dims_letters", dense(compiled_dims="xyz"), ValueError, "compiled_dims"),
    case("compiled_dims_repeat", bf16_dense(compiled_dims="nn"), ValueError, "compiled_dims"),
    case("compiled_dims_type", masked(compiled_dims=3), ValueError, "compiled_dims"),
    case("disable_ue8m0_cast", dense(disable_ue8m0_cast="no"), TypeError, "disable_ue8m0_cast must be a bool"),
    case("recipe_unsupported", dense(recipe=(1, 128, 64)), ValueError, "recipe (1, 128, 64) is not supported"),
    case("recipe_type", dense(recipe="1x128"), TypeError, "recipe must be a tuple of three ints"),
    case("contiguous_recipe", contiguous(recipe=(1, 1, 128)), ValueError, "recipe (1, 1, 128) is not supported"),
    case("k_grouped_recipe", k_grouped(recipe=(1, 128, 128)), ValueError, "recipe (1, 128, 128) is not supported"),
]


@pytest.mark.parametrize("fn,exc,needles", WRONG_DTYPE)
def test_wrong_dtype(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", WRONG_SHAPE)
def test_wrong_shape(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", WRONG_STRIDE)
def test_wrong_stride(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", NOT_CONTIGUOUS)
def test_not_contiguous_for_the_kernel(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", MISMATCHED_DEVICE)
def test_mismatched_device(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", K_NOT_ALIGNED)
def test_k_not_multiple_of_128(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", BAD_GROUPED_LAYOUT)
def test_bad_grouped_layout(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", BAD_EXPECTED_M)
def test_bad_expected_m(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", KS_CPU_MISMATCH)
def test_ks_cpu_mismatch(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("fn,exc,needles", BAD_OPTIONS)
def test_bad_options(fn, exc, needles):
    check(fn, exc, needles)


@pytest.mark.parametrize("build", [dense, bf16_dense, contiguous, masked, k_grouped])
def test_baselines_are_valid(build):
    build()()  # the unmodified baselines pass validation and run on CPU


def test_valid_layout_variants_pass():
    contiguous(psum=True)()
    contiguous(psum=True, expected_m_for_psum_layout=100)()
    contiguous(grouped_layout=torch.full((256,), -1, dtype=I32))()  # all padding: nothing to do
    k_grouped(use_psum_layout=True, grouped_layout=torch.tensor([128, 128, 384], dtype=I32))()
    dense(recipe=[1, 128, 128], compiled_dims="")()


def test_ops_the_kernel_does_not_run_keep_their_stride_rules():
    row_slice = torch.empty(4, 200, dtype=BF16)[:, :130]
    dense_tn(d=row_slice)()
    dense(op="fp8_gemm_nn", b=(q(256, 130), sf(2, 2)), d=row_slice)()
    dense_tn(a=(q(4, 256).T, sf(2, 4)))()  # an M-major a of the tn layout
    bf16_dense(d=row_slice)()
