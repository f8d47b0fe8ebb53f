"""Small calls of every GPU op and layout kernel, one named case per process, for compute-sanitizer
(tools/sanitize.sh runs each case under memcheck, racecheck, synccheck and initcheck).

    python3 tools/sanitize_cases.py --list            the case names, one a line (--list -v: with what each covers)
    python3 tools/sanitize_cases.py CASE [CASE...]    run those cases, checking every value against the reference
    python3 tools/sanitize_cases.py --warm            run every case once (no sanitizer): fills the JIT and
                                                      Triton caches, so no compile happens under a sanitizer

Inputs are made and quantised on the CPU and copied over, and references are computed on the CPU, so what
runs on the GPU is the op under test (plus torch's fills and copies). Output buffers are NaN-poisoned: a
row the reference marks unwritten must keep its NaN. Each case prints "ok CASE" last, or raises. The layout
kernels are held to the rules of their GPU tests (tests/test_layout_kernels.py): bit for bit, except the
SiLU-and-mul activation, whose exp may differ from PyTorch's in the last bit (tests/layout_loops.py's
assert_activation_close bounds it).

Outputs of kernels that store through TMA (the GEMMs' full tiles, the JIT self-test) are poisoned even
where the value check would not need it: compute-sanitizer's initcheck does not count a TMA bulk-tensor
store (cp.async.bulk.tensor, global <- shared) as initialising global memory, so a later read of such an
output (a copy to the host, a Triton kernel's load) is reported as uninitialised although every byte was
written. The poison keeps initcheck meaningful, and a byte the kernel failed to write would keep its NaN
and fail the value check.

Unless --caching is given (or the case captures a CUDA graph, which needs torch's caching allocator),
PYTORCH_NO_CUDA_MEMORY_CACHING=1 is set before torch is imported: every tensor is then its own
cudaMalloc, so memcheck sees a read past a tensor's end (inside a cached block it cannot) and initcheck
sees memory no kernel wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

SEED = 19
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = "cuda"  # --device cpu: every op runs its CPU reference, which checks the cases' own code


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable[[], None]
    about: str
    graph: bool = False  # captures a CUDA graph: needs torch's caching allocator


CASES: dict[str, Case] = {}


def case(about: str, graph: bool = False) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        name = fn.__name__.removeprefix("case_")
        CASES[name] = Case(name, fn, about, graph)
        return fn
    return register


# --- inputs and checks (CPU generation, CUDA copies) ---------------------------------------------------------

def _torch():
    import torch
    return torch


def gen(offset: int = 0):
    return _torch().Generator().manual_seed(SEED + offset)


def fp8_rows(rows: int, k: int, g) -> tuple:
    """(e4m3 [rows, k], float32 [rows, k/128]) quantised 1x128 on the CPU."""
    torch = _torch()
    from dg_moe import layout
    x = torch.randn(rows, k, generator=g) * (torch.rand(rows, 1, generator=g) * 4 + 0.25)
    return layout.per_token_cast_to_fp8(x.to(torch.bfloat16))


def fp8_weights(groups: int, n: int, k: int, g) -> tuple:
    """(e4m3 [groups, n, k], float32 [groups, ceil(n/128), k/128]) quantised 128x128 on the CPU."""
    torch = _torch()
    from dg_moe import layout
    pairs = [layout.per_block_cast_to_fp8(torch.randn(n, k, generator=g).to(torch.bfloat16)) for _ in range(groups)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def cuda(pair: tuple) -> tuple:
    return tuple(t.to(DEVICE) for t in pair)




def poisoned(*shape):
    torch = _torch()
    return torch.full(shape, float("nan"), device=DEVICE, dtype=torch.bfloat16)


FP8_LIMIT = 1e-3


def assert_matches(out, ref, what: str) -> None:
    """Rows the reference marks NaN must hold the NaN poison; the rest must match (global similarity)."""
    torch = _torch()
    from dg_moe.reference import calc_diff
    out = out.cpu()
    written = ~torch.isnan(ref)
    if not torch.equal(torch.isnan(out.float()), ~written):
        raise AssertionError(f"{what}: a row that must be written was not, or one that must not was")
    if bool(written.any()):
        diff = calc_diff(out.double()[written], ref[written])
        if not diff < FP8_LIMIT:
            raise AssertionError(f"{what}: similarity error {diff:.2e} >= {FP8_LIMIT}")


def assert_close_moe(out, ref, what: str) -> None:
    from dg_moe.reference import calc_diff
    diff = calc_diff(out.cpu().double(), ref)
    if not diff < FP8_LIMIT:
        raise AssertionError(f"{what}: similarity error {diff:.2e} >= {FP8_LIMIT}")


def assert_activation(got: tuple, want: tuple, what: str) -> None:
    """A SiLU-and-mul result (e4m3, scales) against the CPU formulation, by the GPU tests' rule."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from tests.layout_loops import assert_activation_close
    try:
        assert_activation_close(got, want)
    except AssertionError as exc:
        raise AssertionError(f"{what}: not within the activation's tolerance of the CPU formulation "
                             "(scales 2 ulp, codes one e4m3 step, < 0.1 % of codes differing)") from exc


def assert_equal(got, want, what: str) -> None:
    torch = _torch()
    got, want = got.cpu(), want.cpu()
    if got.shape != want.shape or got.stride() != want.stride():
        raise AssertionError(f"{what}: shape/strides {tuple(got.shape)}/{got.stride()} != "
                             f"{tuple(want.shape)}/{want.stride()}")
    if got.dtype.is_floating_point and got.element_size() in (1, 2, 4):
        view = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[got.element_size()]
        same = torch.equal(got.view(view), want.view(view))
    else:
        same = torch.equal(got, want)
    if not same:
        raise AssertionError(f"{what}: differs from the CPU formulation")


def contiguous_inputs(counts: list[int], k: int, g) -> tuple:
    """(a on CUDA, per-row layout, psum layout) for per-expert row counts, segments padded to 128 rows."""
    torch = _torch()
    from dg_moe import layout
    align = layout.get_mk_alignment_for_contiguous_layout()
    padded = [layout.align(c, align) for c in counts]
    m_sum = max(sum(padded), align)
    per_row = torch.full((m_sum,), -1, dtype=torch.int32)
    ends, row = [], 0
    for e, (c, p) in enumerate(zip(counts, padded, strict=True)):
        per_row[row:row + c] = e
        ends.append(row + c)
        row += p
    return fp8_rows(m_sum, k, g), per_row, torch.tensor(ends, dtype=torch.int32)


def moe_layer(experts: int, hidden: int, inter: int, g, shared_inter: int | None = None):
    """Random FP8 expert weights (CPU) w13 [E, 2I, H], w2 [E, H, I] with block scales, and a shared expert."""
    torch = _torch()
    from dg_moe.moe import SharedExpert
    from dg_moe.moe import quantize_expert_weights as quantise

    mag = torch.rand(experts, 1, 1, generator=g) + 0.5
    w13 = quantise(torch.randn(experts, 2 * inter, hidden, generator=g) * mag / hidden**0.5)
    w2 = quantise(torch.randn(experts, hidden, inter, generator=g) * mag / inter**0.5)
    shared = None
    if shared_inter is not None:
        s13 = quantise(torch.randn(2 * shared_inter, hidden, generator=g) / hidden**0.5)
        s2 = quantise(torch.randn(hidden, shared_inter, generator=g) / shared_inter**0.5)
        shared = SharedExpert(*s13, *s2)
    return w13, w2, shared


def tokens(num_tokens: int, hidden: int, g):
    torch = _torch()
    x = torch.randn(num_tokens, hidden, generator=g) * (torch.rand(num_tokens, 1, generator=g) * 4 + 0.1)
    return x.to(torch.bfloat16)


def routing(num_tokens: int, top_k: int, experts: int, g, drop: float = 0.2, experts_used: int | None = None):
    """(int32 ids [T, k], distinct per token, -1 with probability ``drop``; float32 weights [T, k])."""
    torch = _torch()
    scores = torch.rand(num_tokens, experts, generator=g)
    if experts_used is not None:
        scores[:, experts_used:] = -1.0
    weights, ids = scores.softmax(-1).topk(top_k, dim=-1)
    ids = torch.where(torch.rand(ids.shape, generator=g) < drop, -1, ids)
    return ids.to(torch.int32), weights


def moe_reference(hidden, w13, w2, ids, weights, rsf: float = 1.0, shared=None):
    from dg_moe.layout import per_token_cast_to_fp8
    from dg_moe.moe import reference_moe
    shared_pairs = None if shared is None else ((shared.w13, shared.w13_scale), (shared.w2, shared.w2_scale))
    return reference_moe(per_token_cast_to_fp8(hidden), w13, w2, ids, weights, routed_scaling_factor=rsf,
                         shared_expert=shared_pairs)


def poisoned_like(t):
    torch = _torch()
    return torch.full_like(t, float("nan"))


class poisoned_dense_gemm_outputs:
    """Within: the dense GEMM the shared expert calls (dg_moe.moe.shared.fp8_gemm_nt_unchecked) gets its
    output NaN-poisoned first. Its full tiles are stored through TMA, which initcheck does not see (module
    docstring): without the poison, the activation kernel's and the final sum's reads of the shared expert's
    GEMM outputs are reported as uninitialised. An element the GEMM failed to write would carry the NaN into
    the MoE output and fail the value check. The routed experts' GEMM outputs stay unpoisoned: their padding
    rows are unwritten by design and must not be read, which initcheck checks."""

    def __enter__(self):
        from dg_moe.moe import shared
        self._module, self._gemm = shared, shared.fp8_gemm_nt_unchecked
        gemm = self._gemm

        def poisoning(a, b, d):
            d.fill_(float("nan"))
            return gemm(a, b, d)

        shared.fp8_gemm_nt_unchecked = poisoning
        return self

    def __exit__(self, *exc) -> None:
        self._module.fp8_gemm_nt_unchecked = self._gemm


def sync() -> None:
    if DEVICE == "cuda":
        _torch().cuda.synchronize()


# --- the GEMM ops ------------------------------------------------------------------------------------------

def _dense(m: int, n: int, k: int, offset: int) -> None:
    import dg_moe
    from dg_moe import reference
    g = gen(offset)
    a = fp8_rows(m, k, g)
    w = fp8_weights(1, n, k, g)
    b = (w[0][0], w[1][0])
    d = poisoned(m, n)
    dg_moe.fp8_gemm_nt(cuda(a), cuda(b), d)
    assert_matches(d, reference.ref_fp8_gemm_nt(a, b), f"fp8_gemm_nt M={m} N={n} K={k}")


@case("fp8_gemm_nt M=1 N=576 K=512 (N not a multiple of 128)")
def case_dense_m1() -> None:
    _dense(1, 576, 512, 1)


@case("fp8_gemm_nt M=129 N=200 K=384: unaligned M and N, an odd K-block count")
def case_dense_unaligned() -> None:
    _dense(129, 200, 384, 2)


CONTIGUOUS_COUNTS = [0, 1, 130, 0, 37]  # empty experts (first and in between), one row, a 2-tile segment


def _contiguous(psum: bool) -> None:
    import dg_moe
    from dg_moe import reference
    g = gen(3)
    n, k = 256, 512
    a, per_row, ends = contiguous_inputs(CONTIGUOUS_COUNTS, k, g)
    b = fp8_weights(len(CONTIGUOUS_COUNTS), n, k, g)
    ref = reference.ref_m_grouped_fp8_gemm_nt_contiguous(a, b, per_row)
    d = poisoned(a[0].shape[0], n)
    dg_moe.m_grouped_fp8_gemm_nt_contiguous(cuda(a), cuda(b), d, (ends if psum else per_row).to(DEVICE),
                                           use_psum_layout=psum)
    assert_matches(d, ref, f"contiguous {'psum' if psum else 'per-row'} counts={CONTIGUOUS_COUNTS}")


@case("m_grouped_fp8_gemm_nt_contiguous, per-row layout with -1 padding rows and empty groups")
def case_contiguous_per_row() -> None:
    _contiguous(False)


@case("m_grouped_fp8_gemm_nt_contiguous, prefix-sum layout with empty groups")
def case_contiguous_psum() -> None:
    _contiguous(True)


@case("contiguous per-row and psum forms where every group is empty (one all-padding tile)")
def case_contiguous_all_empty() -> None:
    import dg_moe
    torch = _torch()
    g = gen(4)
    n, k, groups = 256, 512, 3
    a, per_row, ends = contiguous_inputs([0] * groups, k, g)
    b = cuda(fp8_weights(groups, n, k, g))
    for layout_, psum in ((per_row, False), (ends, True)):
        d = poisoned(a[0].shape[0], n)
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(cuda(a), b, d, layout_.to(DEVICE), use_psum_layout=psum)
        if not bool(torch.isnan(d.float()).all()):
            raise AssertionError(f"contiguous {'psum' if psum else 'per-row'}: a padding row was written")


def _masked(masked: list[int], max_m: int, offset: int) -> None:
    import dg_moe
    torch = _torch()
    from dg_moe import reference
    g = gen(offset)
    groups, n, k = len(masked), 256, 512
    x, s = fp8_rows(groups * max_m, k, g)
    a = (x.view(groups, max_m, k), s.view(groups, max_m, k // 128))
    b = fp8_weights(groups, n, k, g)
    masked_m = torch.tensor(masked, dtype=torch.int32)
    d = poisoned(groups, max_m, n)
    dg_moe.m_grouped_fp8_gemm_nt_masked(cuda(a), cuda(b), d, masked_m.to(DEVICE), expected_m=max(1, max_m // 2))
    assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked(a, b, masked_m), f"masked masked_m={masked}")


@case("m_grouped_fp8_gemm_nt_masked, max_m=64, masked_m = 0 / max_m / 10^6 (above max_m) / 17")
def case_masked_edges() -> None:
    _masked([0, 64, 1_000_000, 17], 64, 5)


@case("m_grouped_fp8_gemm_nt_masked, masked_m all 0 (nothing to compute), max_m=48 (not a multiple of 64)")
def case_masked_all_zero() -> None:
    _masked([0, 0, 0], 48, 6)


@case("masked GEMM fed DeepEP low-latency buffers as they come (scales transposed, M a multiple of 4)")
def case_masked_deepep_ll() -> None:
    import dg_moe
    torch = _torch()
    from dg_moe import layout, reference
    g = gen(7)
    experts, m, n, k = 3, 36, 256, 512
    x, s = fp8_rows(experts * m, k, g)
    x, s = x.view(experts, m, k), s.view(experts, m, k // 128)
    sf = torch.empty(experts, k // 128, m).transpose(1, 2)  # DeepEP's allocation
    sf.copy_(s)
    count = torch.tensor([0, m, 5], dtype=torch.int32)
    inp = layout.deepep_low_latency_to_masked((x.to(DEVICE), sf.to(DEVICE)), count.to(DEVICE))
    b = fp8_weights(experts, n, k, g)
    d = poisoned(experts, m, n)
    dg_moe.m_grouped_fp8_gemm_nt_masked((inp.a, inp.sfa), cuda(b), d, inp.masked_m, expected_m=8)
    assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked((x, s), b, count), "masked from DeepEP LL")


# Variants the heuristic rarely picks at small shapes: multicast pairs sharing A or B, 256-row and 192-wide
# tiles (as tests/test_sm90_fp8_gemm_gpu.py::test_forced_variants_every_layout, at sanitizer-sized shapes).
FORCED = {"256x128_mc2": (256, 128, "2"), "128x192_mc2b": (128, 192, "2B"), "64x64_mc2b": (64, 64, "2B"),
          "128x128_mc2": (128, 128, "2")}


def _forced(block_m: int, block_n: int, multicast: str) -> None:
    import dg_moe
    from dg_moe import reference
    from dg_moe.kernels.sm90_fp8_gemm import launcher
    from dg_moe.kernels.sm90_fp8_gemm.heuristic import max_stages
    n, k = 448, 640  # odd n-block counts at 128 and 192 wide; 5 K blocks
    chosen = launcher.config_for

    def forced(*args):
        return dataclasses.replace(chosen(*args), block_m=block_m, block_n=block_n, multicast=int(multicast[0]),
                                   multicast_b=multicast.endswith("B"), num_stages=max_stages(block_m, block_n, k))

    launcher.config_for = forced
    launcher._entries.clear()
    try:
        g = gen(8)
        w1 = fp8_weights(1, n, k, g)
        b1 = (w1[0][0], w1[1][0])
        for m in (200, 333):
            a = fp8_rows(m, k, g)
            d = poisoned(m, n)
            dg_moe.fp8_gemm_nt(cuda(a), cuda(b1), d)
            assert_matches(d, reference.ref_fp8_gemm_nt(a, b1), f"forced {block_m}x{block_n} mc{multicast} dense M={m}")
        b = fp8_weights(5, n, k, g)
        if block_m <= 128:  # contiguous segments start on 128-row boundaries: taller tiles never serve them
            a, per_row, ends = contiguous_inputs([0, 150, 1, 0, 129], k, g)
            ref = reference.ref_m_grouped_fp8_gemm_nt_contiguous(a, b, per_row)
            for layout_, psum in ((per_row, False), (ends, True)):
                d = poisoned(a[0].shape[0], n)
                dg_moe.m_grouped_fp8_gemm_nt_contiguous(cuda(a), cuda(b), d, layout_.to(DEVICE), use_psum_layout=psum)
                assert_matches(d, ref, f"forced {block_m}x{block_n} mc{multicast} contiguous psum={psum}")
        torch = _torch()
        max_m = 192
        x, s = fp8_rows(5 * max_m, k, g)
        a = (x.view(5, max_m, k), s.view(5, max_m, k // 128))
        masked_m = torch.tensor([0, 1, max_m, max_m + 7, 100], dtype=torch.int32)
        d = poisoned(5, max_m, n)
        dg_moe.m_grouped_fp8_gemm_nt_masked(cuda(a), cuda(b), d, masked_m.to(DEVICE), expected_m=96)
        assert_matches(d, reference.ref_m_grouped_fp8_gemm_nt_masked(a, b, masked_m),
                       f"forced {block_m}x{block_n} mc{multicast} masked")
    finally:
        launcher.config_for = chosen
        launcher._entries.clear()


def _forced_case(label: str, spec: tuple[int, int, str]) -> None:
    def fn() -> None:
        _forced(*spec)
    fn.__name__ = f"case_forced_{label}"
    case(f"forced variant BLOCK_M x BLOCK_N = {spec[0]} x {spec[1]}, multicast {spec[2]}: dense, "
         "contiguous (both forms, BLOCK_M <= 128), masked")(fn)


for _label, _spec in FORCED.items():
    _forced_case(_label, _spec)


@case("the JIT self-test kernel (sm90_scale): y = x * alpha, bf16 and fp32, a partial last tile")
def case_scale() -> None:
    torch = _torch()
    from dg_moe.jit.selftest import scale
    g = gen(9)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(77, 200, generator=g).to(dtype)
        # Poisoned, not torch.empty: the kernel stores through TMA, which initcheck does not count as a write
        # (module docstring); a byte it did not write keeps the NaN and fails the comparison.
        x_dev = x.to(DEVICE)
        out = scale(x_dev, 1.75, out=poisoned_like(x_dev))
        assert_equal(out, torch.mul(x, 1.75), f"scale {dtype}")


# --- the layout kernels ------------------------------------------------------------------------------------

E_LAYOUT, H_LAYOUT, K_LAYOUT = 6, 256, 3


@case("per_token_cast_to_fp8 (plain and UE8M0) and per_block_cast_to_fp8 on CUDA against the CPU")
def case_layout_quant() -> None:
    from dg_moe import layout
    g = gen(10)
    x = tokens(37, 384, g)
    for ue8m0 in (False, True):
        got = layout.per_token_cast_to_fp8(x.to(DEVICE), use_ue8m0=ue8m0)
        want = layout.per_token_cast_to_fp8(x, use_ue8m0=ue8m0)
        assert_equal(got[0], want[0], "per_token data")
        assert_equal(got[1], want[1], "per_token scales")
    got, want = layout.per_block_cast_to_fp8(x.to(DEVICE)), layout.per_block_cast_to_fp8(x)
    assert_equal(got[0], want[0], "per_block data")
    assert_equal(got[1], want[1], "per_block scales")


def _routed_inputs(num_tokens: int, offset: int):
    g = gen(offset)
    x = tokens(num_tokens, H_LAYOUT, g)
    ids, weights = routing(num_tokens, K_LAYOUT, E_LAYOUT, g, drop=0.2, experts_used=E_LAYOUT - 2)
    return x, ids, weights


@case("route_to_contiguous (bf16 and FP8 input), silu_and_mul_to_fp8_contiguous (per-row and psum), "
      "unpermute_reduce_contiguous; two empty experts, -1 slots")
def case_layout_contiguous() -> None:
    torch = _torch()
    from dg_moe import layout
    x, ids, weights = _routed_inputs(29, 11)
    for hidden in (x, layout.per_token_cast_to_fp8(x)):
        dev = hidden.to(DEVICE) if isinstance(hidden, torch.Tensor) else cuda(hidden)
        got = layout.route_to_contiguous(dev, ids.to(DEVICE), E_LAYOUT)
        want = layout.route_to_contiguous(hidden, ids, E_LAYOUT)
        for field in want._fields:
            assert_equal(getattr(got, field), getattr(want, field), f"route_to_contiguous.{field}")
    g = gen(12)
    rows = want.a.shape[0]
    gate_up = torch.randn(rows, 2 * 128, generator=g).to(torch.bfloat16)
    for psum in (False, True):
        grouped = want.grouped_layout_psum if psum else want.grouped_layout
        got = layout.silu_and_mul_to_fp8_contiguous(gate_up.to(DEVICE), grouped.to(DEVICE), use_psum_layout=psum)
        ref = layout.silu_and_mul_to_fp8_contiguous(gate_up, grouped, use_psum_layout=psum)
        assert_activation(got, ref, f"silu contiguous psum={psum}")
    y = torch.randn(rows, H_LAYOUT, generator=g).to(torch.bfloat16)
    got = layout.unpermute_reduce_contiguous(y.to(DEVICE), want.inverse.to(DEVICE), weights.to(DEVICE))
    assert_equal(got, layout.unpermute_reduce_contiguous(y, want.inverse, weights), "unpermute_reduce_contiguous")


@case("route_to_masked with an expert over max_m (overflow), silu_and_mul_to_fp8_masked (counts 0 / max_m / "
      "above), unpermute_reduce_masked")
def case_layout_masked() -> None:
    torch = _torch()
    from dg_moe import layout
    x, ids, weights = _routed_inputs(29, 13)
    max_m = 12  # below the busiest expert's count: entries dropped and counted
    got = layout.route_to_masked(x.to(DEVICE), ids.to(DEVICE), E_LAYOUT, max_m)
    want = layout.route_to_masked(x, ids, E_LAYOUT, max_m)
    for field in want._fields:
        assert_equal(getattr(got, field), getattr(want, field), f"route_to_masked.{field}")
    if not bool(want.overflow.any()):
        raise AssertionError("the case meant an expert to overflow max_m")
    g = gen(14)
    gate_up = torch.randn(E_LAYOUT, max_m, 256, generator=g).to(torch.bfloat16)
    masked_m = torch.tensor([0, max_m, 1_000_000, 3, -2, 7][:E_LAYOUT], dtype=torch.int32)
    got = layout.silu_and_mul_to_fp8_masked(gate_up.to(DEVICE), masked_m.to(DEVICE))
    ref = layout.silu_and_mul_to_fp8_masked(gate_up, masked_m)
    assert_activation(got, ref, "silu masked")
    y = torch.randn(E_LAYOUT, max_m, H_LAYOUT, generator=g).to(torch.bfloat16)
    got = layout.unpermute_reduce_masked(y.to(DEVICE), want.inverse.to(DEVICE), weights.to(DEVICE))
    assert_equal(got, layout.unpermute_reduce_masked(y, want.inverse, weights), "unpermute_reduce_masked")


@case("deepep_normal_to_contiguous (FP8 recv_x, int64 recv_topk_idx with -1) and deepep_normal_reduce")
def case_layout_deepep_normal() -> None:
    torch = _torch()
    from dg_moe import layout
    x, ids, weights = _routed_inputs(23, 15)
    recv_x = layout.per_token_cast_to_fp8(x)
    got = layout.deepep_normal_to_contiguous(cuda(recv_x), ids.long().to(DEVICE), E_LAYOUT)
    want = layout.deepep_normal_to_contiguous(recv_x, ids.long(), E_LAYOUT)
    for field in want._fields:
        assert_equal(getattr(got, field), getattr(want, field), f"deepep_normal_to_contiguous.{field}")
    y = torch.randn(want.a.shape[0], H_LAYOUT, generator=gen(16)).to(torch.bfloat16)
    got = layout.deepep_normal_reduce(y.to(DEVICE), want.inverse.to(DEVICE), weights.to(DEVICE))
    assert_equal(got, layout.deepep_normal_reduce(y, want.inverse, weights), "deepep_normal_reduce")


# --- the fused MoE -----------------------------------------------------------------------------------------

E_MOE, H_MOE, I_MOE, K_MOE = 8, 256, 128, 2


def _fused(mode: str, num_tokens: int, max_m: int | None, offset: int, shared_inter: int | None = None,
           rsf: float = 1.0) -> None:
    import dg_moe
    torch = _torch()
    g = gen(offset)
    w13, w2, shared = moe_layer(E_MOE, H_MOE, I_MOE, g, shared_inter)
    x = tokens(num_tokens, H_MOE, g)
    ids, weights = routing(num_tokens, K_MOE, E_MOE, g, drop=0.2, experts_used=E_MOE - 2)
    shared_cuda = None if shared is None else type(shared)(*(t.to(DEVICE) for t in shared))
    with poisoned_dense_gemm_outputs():
        out, overflow = dg_moe.fused_moe(x.to(DEVICE), *cuda(w13), *cuda(w2), ids.to(DEVICE), weights.to(DEVICE),
                                         mode=mode, max_m=max_m, routed_scaling_factor=rsf, shared_expert=shared_cuda,
                                         return_overflow=True)
    kept = ids
    if mode == "masked" and max_m is not None:
        # The routing's policy: per expert, the first max_m entries in (token, slot) order are kept.
        flat = ids.flatten().tolist()
        seen: dict[int, int] = {}
        kept_flat = []
        for e in flat:
            seen[e] = seen.get(e, 0) + 1
            kept_flat.append(e if e < 0 or seen[e] <= max_m else -1)
        kept = torch.tensor(kept_flat, dtype=ids.dtype).view_as(ids)
        dropped = [sum(1 for e in flat if e == x_) - (kept == x_).sum().item() for x_ in range(E_MOE)]
        if overflow.cpu().tolist() != dropped:
            raise AssertionError(f"overflow {overflow.cpu().tolist()} != dropped {dropped}")
    assert_close_moe(out, moe_reference(x, w13, w2, kept, weights, rsf, shared), f"fused_moe {mode} T={num_tokens}")


@case("fused_moe contiguous: T=37, E=8 (two empty), k=2 with -1 slots, shared expert, routed scaling 2.5")
def case_moe_contiguous() -> None:
    _fused("contiguous", 37, None, 17, shared_inter=128, rsf=2.5)


@case("fused_moe masked: T=21, max_m=T (nothing dropped), then max_m=3 (entries dropped, counted)")
def case_moe_masked() -> None:
    _fused("masked", 21, None, 18)
    _fused("masked", 21, 3, 19)


# --- CUDA graphs -------------------------------------------------------------------------------------------

@case("masked GEMM captured in a CUDA graph, replayed with new contents and masked_m (0 / max_m / above)",
      graph=True)
def case_graph_masked_gemm() -> None:
    import dg_moe
    torch = _torch()
    from dg_moe import layout, reference
    groups, max_m, n, k = 4, 64, 256, 512
    g = gen(20)
    b = fp8_weights(groups, n, k, g)
    b_dev = cuda(b)
    a_data = torch.empty(groups, max_m, k, device=DEVICE, dtype=torch.float8_e4m3fn)
    sfa = layout.get_mn_major_tma_aligned_tensor(torch.ones(groups, max_m, k // 128, device=DEVICE))
    masked_m = torch.zeros(groups, dtype=torch.int32, device=DEVICE)
    d = poisoned(groups, max_m, n)

    def refill(counts: list[int]):
        x, s = fp8_rows(groups * max_m, k, g)
        a = (x.view(groups, max_m, k), s.view(groups, max_m, k // 128))
        a_data.copy_(a[0])
        sfa.copy_(a[1])
        masked_m.copy_(torch.tensor(counts, dtype=torch.int32))
        d.fill_(float("nan"))
        return a

    refill([1, 2, 3, 4])
    dg_moe.m_grouped_fp8_gemm_nt_masked((a_data, sfa), b_dev, d, masked_m, expected_m=32)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dg_moe.m_grouped_fp8_gemm_nt_masked((a_data, sfa), b_dev, d, masked_m, expected_m=32)
    for counts in ([0, max_m, 10**6, 17], [0, 0, 0, 0], [max_m + 1, 1, 63, 64]):
        a = refill(counts)
        graph.replay()
        ref = reference.ref_m_grouped_fp8_gemm_nt_masked(a, b, torch.tensor(counts, dtype=torch.int32))
        assert_matches(d, ref, f"graph masked replay {counts}")


@case("fused_moe contiguous (psum GEMMs) captured in a CUDA graph, replayed with new routing", graph=True)
def case_graph_moe_contiguous() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from graph_replay_soak import ContiguousGraph

    soak = ContiguousGraph(num_tokens=24, seed=SEED + 21)
    for step in range(3):
        soak.step(step)


@case("DecodeGraphRunner (masked fused MoE) captured for 1 / 4 / 16 tokens, replayed with new routing",
      graph=True)
def case_graph_decode_runner() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from graph_replay_soak import MaskedGraph

    soak = MaskedGraph(batch_sizes=(1, 4, 16), seed=SEED + 22)
    for step in range(3):
        soak.step(step)


# --- driver ------------------------------------------------------------------------------------------------

def run(names: list[str]) -> None:
    import torch
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("sanitize_cases: no CUDA device (these cases run on an SM90 GPU; --device cpu checks "
                         "the cases themselves against the CPU reference)")
    for name in names:
        CASES[name].fn()
        sync()
        print(f"ok {name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("cases", nargs="*", help="case names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="with --list: what each case covers")
    parser.add_argument("--graph", choices=("yes", "no", "any"), default="any",
                        help="with --list: only cases that capture a CUDA graph (yes) or none (no)")
    parser.add_argument("--warm", action="store_true", help="run every case (fills the kernel caches)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: run the non-graph cases on CPU tensors, where every op is its reference "
                             "(a self-check of the cases' inputs and checks, for machines without a GPU)")
    parser.add_argument("--caching", action="store_true",
                        help="keep torch's caching allocator for every case (default: off except for graph cases)")
    opts = parser.parse_args(argv)
    if opts.list:
        for c in CASES.values():
            if opts.graph == "any" or (opts.graph == "yes") == c.graph:
                print(f"{c.name:26s} {c.about}" if opts.verbose else c.name)
        return 0
    global DEVICE
    DEVICE = opts.device
    names = list(CASES) if opts.warm else opts.cases
    if opts.device == "cpu":
        if opts.warm:
            names = [n for n in names if not CASES[n].graph]
        graphs = [n for n in names if n in CASES and CASES[n].graph]
        if graphs:
            parser.error(f"--device cpu: {graphs} capture CUDA graphs")
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        parser.error(f"unknown case(s) {unknown} (see --list)" if unknown else "name a case, or --list / --warm")
    if not opts.caching and not any(CASES[n].graph for n in names):
        os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
    run(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
