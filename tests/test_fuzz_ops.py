"""Property tests (hypothesis) of the public GEMM ops on CPU, over shapes, strides, dtypes and layouts.

Two properties per op family:

- every VALID call matches the float64 block oracle of ``tests/test_ref_explicit.py`` (computed from
  the dequantised inputs, sharing no code with ``dg_moe.reference``) within the repository's global
  similarity metric (``gpu_inputs.assert_matches``) and, since the CPU path rounds once, within half
  an ulp per element; the output is poisoned with a NaN of a distinctive bit pattern beforehand, so
  every element that must be written is, and every row that must not be (a contiguous layout's -1
  rows, masked rows past ``masked_m``) keeps the poison bit for bit;
- every INVALID call (one mutation of a valid one) raises the documented error type (TypeError for
  a wrong Python type or dtype, ValueError for anything else, ``dg_moe.checks``) with a message that
  names the op and the bad argument, and writes nothing.

Example counts come from the hypothesis profile (``tests/conftest.py``: "ci" by default, derandomised).
Rerun longer with ``HYPOTHESIS_PROFILE=fuzz pytest tests/test_fuzz_ops.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import dg_moe.ops as ops
from dg_moe import layout

from .gpu_inputs import assert_matches
from .test_ops_validation import check, sf
from .test_ref_explicit import FP8, explicit_fp8_gemm, pack, quant
from .test_ref_grouped import contiguous_case, layouts, mn_major_3d
from .test_reference import as_layout, fp8_case

BF16, F32, I32 = torch.bfloat16, torch.float32, torch.int32
META = torch.device("meta")
SEEDS = st.integers(0, 2**31 - 1)
# NaN payloads no arithmetic produces (torch's own NaN is 0x7FC0 / 0x7FC00000): an element that still
# holds one was never written.
POISON_BITS = {torch.bfloat16: (torch.int16, 0x7FA5), torch.float32: (torch.int32, 0x7FA5A5A5)}


# ---- outputs --------------------------------------------------------------------------------------


def poisoned(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    """A new ``dtype`` tensor holding the poison NaN in every element."""
    int_dtype, bits = POISON_BITS[dtype]
    return torch.full(shape, bits, dtype=int_dtype).view(dtype)


def still_poisoned(d: torch.Tensor) -> torch.Tensor:
    """bool mask of the elements of ``d`` that still hold the poison bits."""
    int_dtype, bits = POISON_BITS[d.dtype]
    return d.view(int_dtype) == bits


def assert_rounded(d: torch.Tensor, expected: torch.Tensor) -> None:
    """Each element of ``d`` within half an ulp of its dtype of the float64 ``expected`` (the CPU path
    computes in float64 and rounds once), plus float64 noise: the oracle and the reference sum in
    other orders, which shows where a result cancels to far below its terms."""
    ulp = 2.0**-8 if d.dtype == BF16 else 2.0**-24
    err = (d.double() - expected).abs()
    bound = expected.abs() * ulp + 1e-12 * float(expected.abs().max())
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item()}"


def assert_written_exactly(d: torch.Tensor, expected: torch.Tensor) -> None:
    """``expected`` (float64, NaN where the op must not write) against ``d`` after the op: the metric
    and the NaN pattern (``assert_matches``), the untouched elements bit for bit, the written ones to
    half an ulp."""
    skip = expected.isnan()
    assert_matches(d, expected)
    assert torch.equal(still_poisoned(d), skip), "an element the op must not write was written, or vice versa"
    if bool((~skip).any()):
        assert_rounded(d[~skip], expected[~skip])


def strided_rows(t: torch.Tensor, extra: int, offset: int) -> torch.Tensor:
    """``t``'s values in a view whose rows sit ``extra`` elements apart beyond their length, ``offset``
    (at most ``extra``) elements into each: a column slice of a wider buffer (last dim contiguous)."""
    *lead, rows, cols = t.shape
    view = torch.zeros(*lead, rows, cols + extra, dtype=t.dtype)[..., offset:offset + cols]
    view.copy_(t)
    return view


# ---- valid calls: dense ---------------------------------------------------------------------------

DENSE_LAYOUTS = ["nt", "nn", "tn", "tt"]
RECIPES = [(1, 128, 128), (1, 1, 128)]


@st.composite
def dense_calls(draw: st.DrawFn) -> dict:
    """Shapes (M and N free, K any multiple of 128 including 0), layout, recipe, scale format, operand
    storage (transposed operands as a copy or as a view), d storage and accumulation."""
    layout_ = draw(st.sampled_from(DENSE_LAYOUTS))
    k_blocks = draw(st.integers(0, 3))
    formats = ["row", "mn"] + (["packed", "packed_mn"] if k_blocks else [])  # packing needs a K block
    return {
        "layout": layout_, "m": draw(st.integers(0, 70)), "n": draw(st.integers(1, 300)), "k": 128 * k_blocks,
        "recipe": draw(st.sampled_from(RECIPES)), "fmt": draw(st.sampled_from(formats)),
        "views": draw(st.booleans()), "d_rows": draw(st.sampled_from(["dense", "strided"])),
        "acc": draw(st.sampled_from(["none", "c", "alias"])), "seed": draw(SEEDS),
    }


def _as_view(x: torch.Tensor, transposed: bool) -> torch.Tensor:
    # The transposed layouts' operand as a view of the nt-frame tensor (unit stride along its first dim).
    return x.T if transposed else x


@given(dense_calls())
@example({"layout": "tn", "m": 3, "n": 5, "k": 128, "recipe": (1, 128, 128), "fmt": "row", "views": True,
          "d_rows": "strided", "acc": "alias", "seed": 0})
# Was rejected: an empty c "aliased" an empty d (both data pointers null) with other strides.
@example({"layout": "nt", "m": 0, "n": 1, "k": 0, "recipe": (1, 128, 128), "fmt": "row", "views": False,
          "d_rows": "dense", "acc": "c", "seed": 0})
def test_valid_dense_fp8_matches_oracle(case: dict) -> None:
    m, n, k, recipe, layout_ = case["m"], case["n"], case["k"], case["recipe"], case["layout"]
    a_q, sfa, b_q, sfb, expected = fp8_case(m, n, k, recipe, case["fmt"], seed=case["seed"])
    if case["views"]:
        a = (_as_view(a_q, layout_[0] == "t"), _as_view(sfa, layout_[0] == "t"))
        b = (_as_view(b_q, layout_[1] == "n"), _as_view(sfb, layout_[1] == "n"))
    else:
        a, b = as_layout(layout_, a_q, sfa, b_q, sfb)
    out_dtype = BF16 if recipe == (1, 128, 128) else F32
    # The kernel's layout (nt) takes a dense d; the others a row slice of a larger buffer too.
    strided = case["d_rows"] == "strided" and layout_ != "nt"
    d = strided_rows(poisoned(m, n, dtype=out_dtype), 7, 3) if strided else poisoned(m, n, dtype=out_dtype)
    c = None
    if case["acc"] != "none":
        torch.manual_seed(case["seed"] + 1)
        c = (torch.randn(m, n) * 4).to(out_dtype)
        expected = expected + c.double()
        if case["acc"] == "alias":
            d.copy_(c)
            c = d
    getattr(ops, f"fp8_gemm_{layout_}")(a, b, d, c=c, recipe=recipe if case["seed"] % 2 else None)
    if case["acc"] == "alias":
        assert_matches(d, expected)  # d held c, not the poison: only the values can be checked
        if d.numel():
            assert_rounded(d, expected)
    else:
        assert_written_exactly(d, expected)


# ---- valid calls: contiguous ----------------------------------------------------------------------


@st.composite
def contiguous_calls(draw: st.DrawFn) -> dict:
    """Group sizes (empty groups, one row, more than one 128-row tile), trailing padding rows, N, K
    (0 included), scale format, the nt or nn variant (b of nn as a copy or a view), per-row or psum
    layout, and the psum layout's optional row hint."""
    k_blocks = draw(st.integers(0, 2))
    psum = draw(st.booleans())
    return {
        "counts": draw(st.lists(st.integers(0, 140), min_size=1, max_size=4)), "tail": draw(st.integers(0, 130)),
        "n": draw(st.integers(1, 200)), "k": 128 * k_blocks,
        "fmt": draw(st.sampled_from(["row", "mn"] + (["packed"] if k_blocks else []))),
        "variant": draw(st.sampled_from(["nt", "nn_copy", "nn_view"])), "psum": psum,
        "expected_m": draw(st.one_of(st.none(), st.integers(1, 300))) if psum else None, "seed": draw(SEEDS),
    }


@given(contiguous_calls())
@example({"counts": [0, 1, 128, 129], "tail": 1, "n": 1, "k": 128, "fmt": "packed", "variant": "nn_view",
          "psum": True, "expected_m": None, "seed": 0})
def test_valid_contiguous_fp8_matches_oracle(case: dict) -> None:
    a, b, per_row, ends, expected = contiguous_case(case["counts"], case["n"], case["k"], sf_fmt=case["fmt"],
                                                    tail=case["tail"], seed=case["seed"])
    variant = case["variant"][:2]
    if case["variant"] == "nn_copy":
        b = (b[0].transpose(1, 2).contiguous(), b[1].transpose(1, 2).contiguous())
    elif case["variant"] == "nn_view":
        b = (b[0].transpose(1, 2), b[1].transpose(1, 2))
    d = poisoned(*expected.shape)
    op = getattr(ops, f"m_grouped_fp8_gemm_{variant}_contiguous")
    # The row hint exists on the nt op only (as in DeepGEMM).
    hinted = case["expected_m"] is not None and variant == "nt"
    extra = {"expected_m_for_psum_layout": case["expected_m"]} if hinted else {}
    op(a, b, d, ends if case["psum"] else per_row, use_psum_layout=case["psum"], **extra)
    assert_written_exactly(d, expected)


# ---- valid calls: masked --------------------------------------------------------------------------


def masked_case(counts: list[int], max_m: int, n: int, k: int, sf_fmt: str, seed: int):
    """Masked-layout operands (``sf_fmt``: row, mn (DeepEP's MN-major sfa) or packed) and the oracle:
    float64 ``[G, max_m, N]``, NaN on rows at or past the clamped count of each group."""
    torch.manual_seed(seed)
    g, packed = len(counts), sf_fmt == "packed"
    a_q, sfa = quant(torch.randn(g, max_m, k) * 2, 1, 128, pow2=packed)
    b_q, sfb = quant(torch.randn(g, n, k), 128, 128, pow2=packed)
    expected = torch.full((g, max_m, n), float("nan"), dtype=torch.float64)
    for grp, count in enumerate(counts):
        rows = min(max(count, 0), max_m)
        if rows:
            expected[grp, :rows] = explicit_fp8_gemm(a_q[grp, :rows], sfa[grp, :rows], b_q[grp], sfb[grp], 128)
    if packed:
        sfa, sfb = pack(sfa), pack(sfb)
    elif sf_fmt == "mn":
        sfa = mn_major_3d(sfa)
    return (a_q, sfa), (b_q, sfb), torch.tensor(counts, dtype=I32), expected


@st.composite
def masked_calls(draw: st.DrawFn) -> dict:
    """G, max_m (0 included), counts from negative (none) to past max_m (clamped), N, K, scale format."""
    max_m = draw(st.integers(0, 40))
    k_blocks = draw(st.integers(0, 2))
    return {
        "counts": draw(st.lists(st.integers(-3, max_m + 3), min_size=1, max_size=4)), "max_m": max_m,
        "n": draw(st.integers(1, 200)), "k": 128 * k_blocks,
        "fmt": draw(st.sampled_from(["row", "mn"] + (["packed"] if k_blocks else []))),
        "expected_m": draw(st.integers(1, 64)), "seed": draw(SEEDS),
    }


@given(masked_calls())
@example({"counts": [-1, 0, 1, 9], "max_m": 6, "n": 129, "k": 256, "fmt": "mn", "expected_m": 1, "seed": 0})
def test_valid_masked_fp8_matches_oracle(case: dict) -> None:
    a, b, masked_m, expected = masked_case(case["counts"], case["max_m"], case["n"], case["k"], case["fmt"],
                                           case["seed"])
    d = poisoned(*expected.shape)
    ops.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m=case["expected_m"])
    assert_written_exactly(d, expected)


# ---- invalid calls --------------------------------------------------------------------------------
# A call is built valid (zero FP8 data, unit scales: values do not matter to the checks), then one
# mutation drawn among those that apply to it breaks it; the call must raise the mutation's error.

OPERAND_DTYPES = [BF16, F32, torch.float16, torch.int8, torch.uint8, torch.float8_e5m2]
SF_BAD_DTYPES = [torch.float16, BF16, torch.float64, torch.int64, torch.int16, torch.uint8]
OUT_BAD_DTYPES = [torch.float16, torch.float64, torch.int32, FP8]


@dataclass
class Call:
    """One call of ``ops.<op>``: keyword arguments, and what the mutations need to know of it."""

    op: str
    kwargs: dict
    frame: str  # "dense", "contiguous" or "masked"
    kernel_rows: bool  # the SM90 kernel's layout: contiguous a[0], b[0] and d
    a_t: bool = False  # a given [K, M] (dense tn/tt)
    b_t: bool = False  # b given with K first (nn, tn)
    build: Callable[..., Call] | None = field(default=None, repr=False)  # the builder, for other-K variants
    params: dict = field(default_factory=dict)

    def run(self) -> None:
        getattr(ops, self.op)(**self.kwargs)

    def rebuilt(self, **changes) -> Call:
        """The same call built with some parameters changed (e.g. another K)."""
        return self.build(**(self.params | changes))


def _given(x: torch.Tensor, transposed: bool) -> torch.Tensor:
    return x.mT.contiguous() if transposed else x


def dense_call(layout_: str, m: int, n: int, k: int, out_dtype: torch.dtype) -> Call:
    """A valid ``fp8_gemm_<layout_>`` call with K any size (scales cover ceil(K/128) blocks)."""
    a_t, b_t = layout_[0] == "t", layout_[1] == "n"
    kb = math.ceil(k / 128)
    gran_n = 128 if out_dtype == BF16 else 1
    a = (_given(torch.zeros(m, k, dtype=FP8), a_t), _given(sf(m, kb), a_t))
    b = (_given(torch.zeros(n, k, dtype=FP8), b_t), _given(sf(math.ceil(n / gran_n), kb), b_t))
    return Call(f"fp8_gemm_{layout_}", {"a": a, "b": b, "d": poisoned(m, n, dtype=out_dtype)}, "dense",
                layout_ == "nt", a_t, b_t, dense_call, {"layout_": layout_, "m": m, "n": n, "k": k,
                                                        "out_dtype": out_dtype})


def contiguous_call(variant: str, counts: list[int], tail: int, n: int, k: int, psum: bool) -> Call:
    """A valid ``m_grouped_fp8_gemm_<variant>_contiguous`` call over groups of ``counts`` rows."""
    per_row, ends = layouts(counts, tail)
    m_sum, g, kb, b_t = per_row.shape[0], len(counts), math.ceil(k / 128), variant == "nn"
    a = (torch.zeros(m_sum, k, dtype=FP8), sf(m_sum, kb))
    b = (_given(torch.zeros(g, n, k, dtype=FP8), b_t), _given(sf(g, math.ceil(n / 128), kb), b_t))
    kwargs = {"a": a, "b": b, "d": poisoned(m_sum, n), "grouped_layout": ends if psum else per_row,
              "use_psum_layout": psum}
    return Call(f"m_grouped_fp8_gemm_{variant}_contiguous", kwargs, "contiguous", variant == "nt", False, b_t,
                contiguous_call, {"variant": variant, "counts": counts, "tail": tail, "n": n, "k": k, "psum": psum})


def masked_call(g: int, max_m: int, n: int, k: int) -> Call:
    """A valid ``m_grouped_fp8_gemm_nt_masked`` call."""
    kb = math.ceil(k / 128)
    a = (torch.zeros(g, max_m, k, dtype=FP8), sf(g, max_m, kb))
    b = (torch.zeros(g, n, k, dtype=FP8), sf(g, math.ceil(n / 128), kb))
    kwargs = {"a": a, "b": b, "d": poisoned(g, max_m, n), "masked_m": torch.full((g,), max_m // 2, dtype=I32),
              "expected_m": max(1, max_m // 2)}
    return Call("m_grouped_fp8_gemm_nt_masked", kwargs, "masked", True, False, False, masked_call,
                {"g": g, "max_m": max_m, "n": n, "k": k})


@st.composite
def valid_calls(draw: st.DrawFn, frame: str) -> Call:
    """A valid call of one of the ``frame``'s FP8 ops; every dim of every operand at least 2, so that a
    strided view of it is never contiguous by accident."""
    n, k = draw(st.integers(2, 300)), 128 * draw(st.integers(1, 3))
    if frame == "dense":
        return dense_call(draw(st.sampled_from(DENSE_LAYOUTS)), draw(st.integers(2, 9)), n, k,
                          draw(st.sampled_from([BF16, F32])))
    if frame == "contiguous":
        counts = draw(st.lists(st.integers(0, 140), min_size=1, max_size=3))
        counts[0] = max(counts[0], 2)  # M_sum >= 2 and at least one row to write
        return contiguous_call(draw(st.sampled_from(["nt", "nn"])), counts, draw(st.integers(0, 5)), n, k,
                               draw(st.booleans()))
    return masked_call(draw(st.integers(1, 4)), draw(st.integers(2, 16)), n, k)


Mutation = Callable[[st.DrawFn, Call], tuple[type[Exception], list[str]]]
"""Breaks one argument of the call in place; returns the error type and the message's needles."""


def _pair(call: Call, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return call.kwargs[name]


def _set(call: Call, name: str, index: int, value: object) -> None:
    pair = list(call.kwargs[name])
    pair[index] = value
    call.kwargs[name] = tuple(pair)


def operand_dtype(draw, call):
    name = draw(st.sampled_from(["a", "b"]))
    x = _pair(call, name)[0]
    _set(call, name, 0, torch.zeros(x.shape, dtype=draw(st.sampled_from(OPERAND_DTYPES))))
    return TypeError, [f"{name}[0] must have dtype float8_e4m3fn"]


def scale_dtype(draw, call):
    name = draw(st.sampled_from(["a", "b"]))
    s = _pair(call, name)[1]
    _set(call, name, 1, torch.zeros(s.shape, dtype=draw(st.sampled_from(SF_BAD_DTYPES))))
    return TypeError, [f"{name}[1] (scale factors) must have dtype float32 or int32"]


def out_dtype(draw, call):
    d = call.kwargs["d"]
    allowed = (BF16, F32) if call.frame == "dense" else (BF16,)
    bad = [t for t in OUT_BAD_DTYPES + [F32] if t not in allowed]
    call.kwargs["d"] = torch.zeros(d.shape, dtype=draw(st.sampled_from(bad)))
    return TypeError, ["d must have dtype"]


def not_a_pair(draw, call):
    name = draw(st.sampled_from(["a", "b"]))
    data, scales = _pair(call, name)
    call.kwargs[name] = draw(st.sampled_from([data, (data,), (data, scales, scales), {"data": data}]))
    return TypeError, [f"{name} must be a (tensor, scale_factors) tuple"]


def wrong_ndim(draw, call):
    name, index = draw(st.sampled_from([("a", 0), ("a", 1), ("b", 0), ("b", 1), ("d", None)]))
    if index is None:
        call.kwargs["d"] = call.kwargs["d"].unsqueeze(0)
        return ValueError, ["d must be"]
    _set(call, name, index, _pair(call, name)[index].unsqueeze(draw(st.integers(0, 1))))
    return ValueError, [f"{name}[{index}]", "must be"]


def k_mismatch(draw, call):
    k = call.params["k"]
    other = draw(st.sampled_from([kk for kk in (128, 256, 384, 512) if kk != k]))
    call.kwargs["b"] = call.rebuilt(k=other).kwargs["b"]
    return ValueError, ["a and b disagree on K", f"K={k}", f"K={other}"]


def k_misaligned(draw, call):
    k = call.params["k"] + draw(st.sampled_from([-64, -1, 1, 8, 64, 127]))
    call.kwargs.update({name: call.rebuilt(k=k).kwargs[name] for name in ("a", "b")})
    return ValueError, [f"K = {k}, not a multiple of 128"]


def out_shape(draw, call):
    d = call.kwargs["d"]
    shape = list(d.shape)
    dim = draw(st.integers(0, len(shape) - 1))
    shape[dim] += draw(st.sampled_from([-1, 1, 2]))
    call.kwargs["d"] = poisoned(*shape, dtype=d.dtype)
    return ValueError, [f"d has shape {tuple(shape)}"]


def scale_shape(draw, call):
    name = draw(st.sampled_from(["a", "b"]))
    s = _pair(call, name)[1]
    shape = list(s.shape)
    shape[draw(st.integers(0, len(shape) - 1))] += draw(st.sampled_from([-1, 1]))
    _set(call, name, 1, torch.ones(shape, dtype=s.dtype))
    return ValueError, [f"sf{name} ({name}[1]) has shape {tuple(shape)}"]


def packed_unpacked_shape(draw, call):
    # int32 scales of the float32 shape: packed UE8M0 holds 4 K blocks per int, so ceil(kb/4) columns.
    name = draw(st.sampled_from(["a", "b"]))
    _set(call, name, 1, _pair(call, name)[1].to(I32))
    return ValueError, [f"sf{name} ({name}[1])", "packed UE8M0"]


def not_contiguous(draw, call):
    # The kernel's layout takes dense rows: a column slice of a wider buffer, or a transposed copy.
    name = draw(st.sampled_from(["a", "b", "d"]))
    x = call.kwargs["d"] if name == "d" else _pair(call, name)[0]
    if draw(st.booleans()):
        bad = strided_rows(x, draw(st.integers(1, 16)), 0)
    else:
        bad = x.mT.contiguous().mT
    label = "d" if name == "d" else f"{name}[0]"
    if name == "d":
        call.kwargs["d"] = bad
    else:
        _set(call, name, 0, bad)
    return ValueError, [f"{label} must be contiguous", str(tuple(bad.stride()))]


def no_unit_stride(draw, call):
    # Outside the kernel's layout an operand needs stride 1 along one of its last two dims.
    name = draw(st.sampled_from(["a", "b"]))
    x = _pair(call, name)[0]
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    _set(call, name, 0, wide[..., ::2])
    return ValueError, [f"{name}[0] must have stride 1 along one of its last two dims"]


def out_last_dim_strided(draw, call):
    d = call.kwargs["d"]
    call.kwargs["d"] = d.mT.contiguous().mT
    return ValueError, ["d must have a contiguous last dim"]


def out_rows_overlap(draw, call):
    # A last-dim-contiguous d whose rows overlap: expanded (stride 0) or rows closer than N elements.
    d = call.kwargs["d"]
    rows, cols = d.shape
    row_stride = draw(st.integers(0, cols - 1))
    buf = poisoned(row_stride * (rows - 1) + cols, dtype=d.dtype)
    call.kwargs["d"] = buf.as_strided((rows, cols), (row_stride, 1))
    return ValueError, ["d has strides", "share memory"]


def on_meta(draw, call):
    name, index = draw(st.sampled_from([("a", 0), ("a", 1), ("b", 0), ("b", 1)]))
    _set(call, name, index, _pair(call, name)[index].to(META))
    return ValueError, [f"{name}[{index}]", "is on meta", "d is on cpu"]


def recipe_unsupported(draw, call):
    allowed = [(1, 128, 128), (1, 1, 128)] if call.frame == "dense" else [(1, 128, 128)]
    call.kwargs["recipe"] = draw(st.sampled_from([r for r in [(1, 128, 64), (128, 128, 128), (1, 1, 128),
                                                              (1, 64, 128)] if r not in allowed]))
    return ValueError, [f"recipe {call.kwargs['recipe']} is not supported"]


def recipe_vs_out(draw, call):
    # Dense: the recipe writes the other dtype than d's.
    call.kwargs["recipe"] = (1, 1, 128) if call.kwargs["d"].dtype == BF16 else (1, 128, 128)
    return TypeError, [f"recipe {call.kwargs['recipe']} writes a"]


def recipe_type(draw, call):
    call.kwargs["recipe"] = draw(st.sampled_from(["1x128x128", (1, 128), (1, 128, 128.0), (True, 128, 128)]))
    return TypeError, ["recipe must be a tuple of three ints"]


def compiled_dims(draw, call):
    call.kwargs["compiled_dims"] = draw(st.sampled_from(["xyz", "nn", "mnkk", 3, None]))
    return ValueError, ["compiled_dims must be a string"]


def ue8m0_flag(draw, call):
    call.kwargs["disable_ue8m0_cast"] = draw(st.sampled_from([0, 1, "no", None]))
    return TypeError, ["disable_ue8m0_cast must be a bool"]


def accumulator(draw, call):
    d = call.kwargs["d"]
    how = draw(st.sampled_from(["dtype", "shape", "strided", "type"]))
    if how == "dtype":
        call.kwargs["c"] = torch.zeros(d.shape, dtype=F32 if d.dtype == BF16 else BF16)
        return TypeError, ["c must have dtype"]
    if how == "shape":
        call.kwargs["c"] = torch.zeros(d.shape[0], d.shape[1] + 1, dtype=d.dtype)
        return ValueError, ["c has shape"]
    if how == "strided":
        call.kwargs["c"] = d.mT.contiguous().mT
        return ValueError, ["c must have a contiguous last dim"]
    call.kwargs["c"] = 1.0
    return TypeError, ["c must be a torch.Tensor"]


def layout_dtype(draw, call):
    gl = call.kwargs["grouped_layout"]
    call.kwargs["grouped_layout"] = gl.to(draw(st.sampled_from([torch.int64, torch.int16, F32, torch.uint8])))
    return TypeError, ["grouped_layout must have dtype int32"]


def layout_form(draw, call):
    gl = call.kwargs["grouped_layout"]
    # A strided view of one element is contiguous: "strided" needs two.
    how = draw(st.sampled_from(["length", "2d", "list"] + (["strided"] if gl.shape[0] > 1 else [])))
    if how == "length":
        delta = draw(st.sampled_from([-1, 1, 128]))
        call.kwargs["grouped_layout"] = torch.cat([gl, gl[-1:].expand(delta)]) if delta > 0 else gl[:delta]
        return ValueError, [f"grouped_layout has {gl.shape[0] + delta} elements"]
    if how == "strided":
        call.kwargs["grouped_layout"] = gl.repeat_interleave(2)[::2]
        return ValueError, ["grouped_layout must be contiguous"]
    if how == "2d":
        call.kwargs["grouped_layout"] = gl.unsqueeze(0)
        return ValueError, ["grouped_layout must be 1-D"]
    call.kwargs["grouped_layout"] = gl.tolist()
    return TypeError, ["grouped_layout must be a torch.Tensor"]


def layout_group_id(draw, call):
    # Per-row layout: an id outside [-1, G).
    gl = call.kwargs["grouped_layout"].clone()
    g = call.kwargs["b"][0].shape[0]
    row = draw(st.integers(0, gl.shape[0] - 1))
    gl[row] = draw(st.sampled_from([g, g + 7, -2, -100, 2**31 - 1]))
    call.kwargs["grouped_layout"] = gl
    return ValueError, [f"grouped_layout[{row}] = {gl[row].item()} is not a group id"]


def layout_tile(draw, call):
    # Per-row layout: a 128-row tile with two groups, or a group row after a padding row.
    gl = call.kwargs["grouped_layout"].clone()
    g = call.kwargs["b"][0].shape[0]
    # A tile of one row (the last, partial one) cannot be broken: pick one of two rows or more.
    tile = draw(st.integers(0, (gl.shape[0] - 2) // 128))
    rows = gl[tile * 128:(tile + 1) * 128]
    # Two groups need two group rows: relabelling a tile's only group row leaves it one group's.
    if int((rows >= 0).sum()) > 1 and g > 1 and draw(st.booleans()):
        group = int(rows[rows >= 0][0])
        rows[draw(st.integers(0, int((rows >= 0).sum()) - 1))] = (group + 1) % g
    else:
        padding = (rows < 0).nonzero().flatten()
        if padding.numel() == 0 or int(padding[0]) == rows.shape[0] - 1:
            rows[0] = -1  # now a padding row comes first, followed by the tile's group rows
            rows[1:] = max(int(rows[1:].max()), 0)
        else:
            rows[draw(st.integers(int(padding[0]) + 1, rows.shape[0] - 1))] = max(int(rows.max()), 0)
    call.kwargs["grouped_layout"] = gl
    return ValueError, [f"grouped_layout rows {tile * 128}..{tile * 128 + 127} hold ids"]


def psum_ends(draw, call):
    ends = call.kwargs["grouped_layout"].clone()
    m_sum = call.kwargs["a"][0].shape[0]
    g = draw(st.integers(0, ends.shape[0] - 1))
    prev = int(ends[g - 1]) if g else 0
    choices = ["past_end"] + (["decreasing"] if prev > 0 or g == 0 else [])
    start = 128 * math.ceil(prev / 128)
    if start - prev > 1:
        choices.append("gap")
    how = draw(st.sampled_from(choices))
    if how == "past_end":
        # At or past the group's aligned start too: an end below it is reported as in the gap.
        ends[g:] = max(m_sum, start) + draw(st.integers(1, 200))
        return_needle = f"grouped_layout[{g}] = {int(ends[g])} exceeds M_sum = {m_sum}"
    elif how == "decreasing":
        ends[g] = prev - draw(st.integers(1, max(prev, 1)))
        return_needle = f"grouped_layout[{g}] = {int(ends[g])} is below the previous end {prev}"
    else:
        ends[g] = draw(st.integers(prev + 1, start - 1))
        return_needle = f"grouped_layout[{g}] = {int(ends[g])} falls in the alignment gap"
    call.kwargs["grouped_layout"] = ends  # the ends before g are unchanged: g is the first broken one
    return ValueError, [return_needle]


def psum_flag(draw, call):
    call.kwargs["use_psum_layout"] = draw(st.sampled_from([0, 1, "yes", None]))
    return TypeError, ["use_psum_layout must be a bool"]


def psum_hint(draw, call):
    if not call.kwargs["use_psum_layout"]:
        call.kwargs["expected_m_for_psum_layout"] = draw(st.integers(1, 1000))
        return ValueError, ["expected_m_for_psum_layout is only used with use_psum_layout=True"]
    value = draw(st.sampled_from([0, -5, 1.5, True, "64"]))
    call.kwargs["expected_m_for_psum_layout"] = value
    bad_type = not isinstance(value, int) or isinstance(value, bool)
    return (TypeError, ["expected_m_for_psum_layout must be a positive int"]) if bad_type else (
        ValueError, ["expected_m_for_psum_layout must be > 0"])


def no_groups(draw, call):
    b, s = call.kwargs["b"]
    call.kwargs["b"] = (b[:0], s[:0])
    if call.frame == "masked":
        return ValueError, ["a has", "groups", "but b has 0"]
    return ValueError, ["b holds no group"]


def masked_groups(draw, call):
    g = call.kwargs["a"][0].shape[0]
    other = call.rebuilt(g=g + draw(st.sampled_from([1, 2]))).kwargs["b"]
    call.kwargs["b"] = other
    return ValueError, [f"a has {g} groups", f"but b has {other[0].shape[0]}"]


def masked_m_form(draw, call):
    mm = call.kwargs["masked_m"]
    how = draw(st.sampled_from(["dtype", "length", "2d", "list", "meta"] + (["strided"] if mm.shape[0] > 1 else [])))
    if how == "dtype":
        call.kwargs["masked_m"] = mm.to(draw(st.sampled_from([torch.int64, torch.int16, F32])))
        return TypeError, ["masked_m must have dtype int32"]
    if how == "length":
        delta = draw(st.sampled_from([-1, 1, 3]))
        call.kwargs["masked_m"] = torch.cat([mm, mm[:1].expand(delta)]) if delta > 0 else mm[:delta]
        return ValueError, [f"masked_m has {mm.shape[0] + delta} elements"]
    if how == "2d":
        call.kwargs["masked_m"] = mm.unsqueeze(1)
        return ValueError, ["masked_m must be 1-D"]
    if how == "strided":
        call.kwargs["masked_m"] = mm.repeat_interleave(2)[::2]
        return ValueError, ["masked_m must be contiguous"]
    if how == "list":
        call.kwargs["masked_m"] = mm.tolist()
        return TypeError, ["masked_m must be a torch.Tensor"]
    call.kwargs["masked_m"] = mm.to(META)
    return ValueError, ["masked_m is on meta"]


def expected_m(draw, call):
    value = draw(st.sampled_from([0, -4, 1.5, True, None, "8"]))
    call.kwargs["expected_m"] = value
    bad_type = not isinstance(value, int) or isinstance(value, bool)
    return (TypeError, ["expected_m must be a positive int"]) if bad_type else (
        ValueError, ["expected_m must be > 0"])


COMMON: list[Mutation] = [operand_dtype, scale_dtype, out_dtype, not_a_pair, wrong_ndim, k_mismatch, k_misaligned,
                          out_shape, scale_shape, on_meta, recipe_unsupported, recipe_type, compiled_dims,
                          ue8m0_flag]


def mutations(call: Call) -> list[Mutation]:
    """The mutations that make ``call`` invalid."""
    found = list(COMMON)
    if call.params["k"] > 128:
        found.append(packed_unpacked_shape)  # kb >= 2: the float32 shape is not the packed one
    found += [not_contiguous] if call.kernel_rows else [no_unit_stride, out_last_dim_strided]
    if not call.kernel_rows and call.kwargs["d"].dim() == 2:
        found.append(out_rows_overlap)
    if call.frame == "dense":
        found += [recipe_vs_out, accumulator]
    if call.frame == "contiguous":
        found += [layout_dtype, layout_form, psum_flag, no_groups]
        if call.op == "m_grouped_fp8_gemm_nt_contiguous":
            found.append(psum_hint)  # the nt op's argument alone (as in DeepGEMM)
        found.append(psum_ends if call.kwargs["use_psum_layout"] else layout_group_id)
        if not call.kwargs["use_psum_layout"]:
            found.append(layout_tile)
    if call.frame == "masked":
        found += [masked_groups, masked_m_form, expected_m, no_groups]
    return found


STRIDES = [not_contiguous, no_unit_stride, out_last_dim_strided, out_rows_overlap]
FRAME_MUTATIONS: dict[str, list[Mutation]] = {
    "dense": [*COMMON, packed_unpacked_shape, *STRIDES, recipe_vs_out, accumulator],
    "contiguous": [*COMMON, packed_unpacked_shape, *STRIDES, layout_dtype, layout_form, psum_flag, psum_hint,
                   no_groups, psum_ends, layout_group_id, layout_tile],
    "masked": [*COMMON, packed_unpacked_shape, not_contiguous, masked_groups, masked_m_form, expected_m, no_groups],
}


# One test per (frame, mutation), so that each mutation is exercised on every run; a mutation that never
# applies to its frame's calls fails the test (hypothesis: Unsatisfiable). A quarter of the profile's
# examples each: there are about 60 of them, each example a few ms.
@pytest.mark.parametrize("frame,mutate", [pytest.param(frame, m, id=f"{frame}-{m.__name__}")
                                          for frame, found in FRAME_MUTATIONS.items() for m in found])
@settings(max_examples=max(5, settings.default.max_examples // 4))
@given(data=st.data())
def test_invalid_calls_raise_the_documented_error(frame: str, mutate: Mutation, data: st.DataObject) -> None:
    call = data.draw(valid_calls(frame), label="valid call")
    assume(mutate in mutations(call))
    call.run()  # the unmutated call is valid: the error below comes from the mutation
    original_d = call.kwargs["d"]
    original_d.copy_(poisoned(*original_d.shape, dtype=original_d.dtype))
    exc, needles = mutate(data.draw, call)
    check(call.run, exc, [f"{call.op}:", *needles])
    if call.kwargs["d"] is original_d:
        assert bool(still_poisoned(original_d).all()), "the rejected call wrote into d"


def test_a_dict_operand_is_a_type_error_not_a_key_error() -> None:
    """Found by the fuzzing: a dict in place of the (tensor, scales) pair crashed the call signature's
    look-up with a bare KeyError: 0."""
    for call in (dense_call("nt", 2, 8, 128, BF16), contiguous_call("nt", [2], 0, 8, 128, True),
                 masked_call(2, 2, 8, 128)):
        data, scales = call.kwargs["a"]
        call.kwargs["a"] = {"data": data, "scales": scales}
        check(call.run, TypeError, [f"{call.op}: a must be a (tensor, scale_factors) tuple", "got dict"])


def test_mutations_cover_every_frame() -> None:
    """What applies to a call is among its frame's mutations, and the frame-specific ones apply."""
    for call in (dense_call("nt", 2, 8, 256, BF16), dense_call("tt", 2, 8, 128, F32),
                 contiguous_call("nn", [2], 0, 8, 128, False), masked_call(1, 2, 8, 384)):
        assert set(mutations(call)) <= set(FRAME_MUTATIONS[call.frame])
    dense = dense_call("tn", 3, 5, 256, BF16)
    assert {recipe_vs_out, accumulator, out_rows_overlap, no_unit_stride} <= set(mutations(dense))
    per_row = contiguous_call("nt", [3, 0], 0, 5, 128, False)
    assert {layout_group_id, layout_tile, not_contiguous} <= set(mutations(per_row))
    assert psum_ends in mutations(contiguous_call("nn", [3], 0, 5, 128, True))
    assert {masked_m_form, expected_m, masked_groups} <= set(mutations(masked_call(2, 4, 5, 128)))


# ---- defects the fuzzing found, kept as explicit examples -----------------------------------------


@pytest.mark.parametrize("op,d", [
    ("fp8_gemm_tn", torch.empty(1, 5, dtype=BF16).expand(3, 5)),  # was a raw torch RuntimeError
    ("fp8_gemm_nn", poisoned(12).as_strided((3, 5), (2, 1))),  # was accepted: rows overwrote each other
])
def test_dense_output_with_overlapping_rows_is_rejected(op: str, d: torch.Tensor) -> None:
    call = dense_call(op[-2:], 3, 5, 128, BF16)
    call.kwargs["d"] = d
    check(call.run, ValueError, [f"{op}: d has strides", "share memory"])


def test_grouped_outputs_with_overlapping_rows_are_rejected() -> None:
    d = torch.empty(1, 4, 5, dtype=BF16).expand(2, 4, 5)  # both groups would write the same rows
    check(lambda: ops.m_grouped_bf16_gemm_nt_masked(torch.zeros(2, 4, 128, dtype=BF16),
                                                    torch.zeros(2, 5, 128, dtype=BF16), d,
                                                    torch.ones(2, dtype=I32), 2),
          ValueError, ["m_grouped_bf16_gemm_nt_masked: d has strides (0, 5, 1)", "share memory"])
    d = torch.empty(5, dtype=F32).expand(2, 3, 5)
    check(lambda: ops.k_grouped_bf16_gemm_tn_contiguous(torch.zeros(128, 3, dtype=BF16),
                                                        torch.zeros(128, 5, dtype=BF16), d, [128, 0],
                                                        torch.tensor([128, 0], dtype=I32)),
          ValueError, ["k_grouped_bf16_gemm_tn_contiguous: d has strides (0, 0, 1)"])


def test_a_row_slice_of_a_larger_buffer_is_still_a_valid_output() -> None:
    """The overlap check keeps the documented strided outputs: rows further apart than N, a last dim
    of one element, a single row of any stride."""
    for d in (strided_rows(poisoned(3, 5), 4, 2), poisoned(3, 9)[:, :1], poisoned(8, 5)[::8]):
        call = dense_call("tn", d.shape[0], d.shape[1], 128, BF16)
        call.kwargs["d"] = d
        call.run()
        assert not bool(still_poisoned(d).any())


# ---- layout ops -----------------------------------------------------------------------------------


@given(groups=st.sampled_from([None, 1, 3]), mn=st.integers(1, 40), k_blocks=st.integers(1, 6),
       source=st.sampled_from(["row", "transposed", "sliced", "aligned"]), dtype=st.sampled_from([F32, I32]))
def test_mn_major_tma_aligned_keeps_values(groups: int | None, mn: int, k_blocks: int, source: str,
                                           dtype: torch.dtype) -> None:
    """Any strides in, the TMA-aligned MN-major layout out (stride 1 along MN, columns 16-byte aligned),
    the same values; an input already so laid out comes back as itself."""
    lead = () if groups is None else (groups,)
    values = torch.arange(math.prod(lead) * mn * k_blocks, dtype=dtype).reshape(*lead, mn, k_blocks)
    if source == "transposed":
        given_sf = values.mT.contiguous().mT
    elif source == "sliced":
        given_sf = strided_rows(values, 3, 1)
    elif source == "aligned":
        given_sf = layout.get_mn_major_tma_aligned_tensor(values)
    else:
        given_sf = values
    out = layout.get_mn_major_tma_aligned_tensor(given_sf)
    assert torch.equal(out, values)
    aligned = 4 * math.ceil(mn / 4)  # 16 bytes of 4-byte scales
    assert out.stride(-2) == 1 and (k_blocks == 1 or out.stride(-1) == aligned)
    assert groups is None or groups == 1 or out.stride(0) == aligned * k_blocks
    assert out.storage_offset() % 4 == 0
    if source == "aligned":
        assert out is given_sf


@given(x_rows=st.integers(1, 9), k=st.integers(1, 300), gran_k=st.one_of(st.integers(-256, 0),
                                                                          st.sampled_from([1.5, None, True])),
       which=st.sampled_from(["per_token_cast_to_fp8", "per_block_cast_to_fp8", "per_channel_cast_to_fp8"]))
@example(x_rows=4, k=256, gran_k=0, which="per_token_cast_to_fp8")  # was a bare ZeroDivisionError
@example(x_rows=4, k=256, gran_k=-128, which="per_token_cast_to_fp8")  # was a shape error naming no argument
def test_quantisers_reject_a_bad_gran_k(x_rows: int, k: int, gran_k: object, which: str) -> None:
    x = torch.randn(x_rows, k)
    exc = ValueError if isinstance(gran_k, int) and not isinstance(gran_k, bool) else TypeError
    check(lambda: getattr(layout, which)(x, gran_k=gran_k), exc, [f"{which}: gran_k must be"])


@given(rows=st.integers(1, 20), k=st.integers(1, 400), ue8m0=st.booleans(), seed=SEEDS)
def test_per_token_cast_round_trips(rows: int, k: int, ue8m0: bool, seed: int) -> None:
    """Dequantised per-token FP8 stays within e4m3's relative step (2**-3 of the row block's amax
    at worst) of the input, for any K (the last block partial)."""
    torch.manual_seed(seed)
    x = torch.randn(rows, k) * torch.exp2(torch.randint(-8, 8, (rows, 1)).float())
    x_q, scales = layout.per_token_cast_to_fp8(x, use_ue8m0=ue8m0)
    assert x_q.shape == (rows, k) and scales.shape == (rows, math.ceil(k / 128))
    deq = x_q.double() * scales.double().repeat_interleave(128, dim=1)[:, :k]
    blocks = torch.nn.functional.pad(x.double().abs(), (0, 128 * math.ceil(k / 128) - k))
    amax = blocks.view(rows, -1, 128).amax(dim=2).repeat_interleave(128, dim=1)[:, :k]
    assert bool(((deq - x.double()).abs() <= amax * 2.0**-3 * (2 if ue8m0 else 1)).all())
