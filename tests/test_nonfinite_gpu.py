"""Non-finite inputs through the SM90 kernels and the fused MoE on CUDA (``-m gpu``): the README's "NaN, Inf and
overflow" policy, which tests/test_ref_nonfinite.py pins on CPU.

Each test runs one call twice on the same operands, clean and with a NaN (or Inf) planted, and compares the two
outputs bit for bit. The kernels are deterministic, so no tolerance is needed: every element the planted value
may not reach keeps the clean run's bits, and it is NaN exactly where the policy says. Outputs start filled with
a NaN pattern no arithmetic writes, so a row the op must not write is seen to keep it even when its inputs are NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import dg_moe
from dg_moe.moe import fused_moe

from .gpu_inputs import fp8_activations, fp8_weights
from .moe_loops import hidden_states, layer, routing
from .test_ref_nonfinite import fill_empty_with_nan

pytestmark = pytest.mark.gpu

FP8Pair = tuple[torch.Tensor, torch.Tensor]

E4M3_NAN = 0x7F  # e4m3fn has NaN (S.1111.111) and no Inf
# A BF16 NaN with a payload no conversion to BF16 produces (the GPU's canonical NaN is 0x7FFF, PyTorch's 0x7FC0): an
# element that still holds it afterwards was not written, not even with a NaN result.
POISON = 0x7FA5

# Several tiles in every dimension: N = 384 is three 128-wide SFB blocks (two 192-wide tiles), K = 512 four K blocks.
N, K = 384, 512
NAN_COLUMN = 200  # inside SFB block 1, not on a tile edge
NAN_K = 2 * 128 + 17  # inside K block 2
GROUPS = 4
CONTIGUOUS_COUNTS = [90, 0, 150, 40]  # an empty group, partial tiles, a group over two 128-row tiles
CONTIGUOUS_TAIL = 128  # unused rows after the last segment, as fused_moe's worst-case buffer has
MASKED_MAX_M = 160
MASKED_M = [100, 0, 160, 37]  # rows past masked_m in a partial tile, in a whole group, and none in a full group

GEMM_OPS = ("dense", "contiguous", "contiguous_psum", "masked")
GROUPED_OPS = GEMM_OPS[1:]


@pytest.fixture(scope="module", autouse=True)
def _sm90(sm90: None) -> None:
    """Every test here needs an SM90 GPU (conftest's `sm90`)."""


def _output(rows: int, n: int) -> torch.Tensor:
    d = torch.empty(rows, n, dtype=torch.bfloat16, device="cuda")
    d.view(torch.int16).fill_(POISON)
    return d


def _nan_byte(x: torch.Tensor, index: tuple) -> torch.Tensor:
    """A copy of e4m3 ``x`` with e4m3 NaN at ``index`` (a bool row mask included)."""
    out = x.clone()
    out.view(torch.uint8)[index] = E4M3_NAN
    return out


def _nan_scale(sf: torch.Tensor, index: tuple) -> torch.Tensor:
    out = sf.clone()
    out[index] = float("nan")
    return out


@dataclass(frozen=True)
class GemmCase:
    """One op's call on fixed operands, flattened so that every op looks alike: a (e4m3 [R, K], sfa [R, K/128]),
    b (e4m3 [G, N, K], sfb [G, N/128, K/128]) and d [R, N], where R is the output rows (G * max_m when masked)."""

    a: FP8Pair
    b: FP8Pair
    row_group: torch.Tensor  # int64 [R]: the group of b each output row uses, -1 where the op writes nothing
    probe_row: int  # a written row, not the first of any tile: where an A-side NaN goes
    call: Callable[[FP8Pair, FP8Pair, torch.Tensor], None]

    @property
    def written(self) -> torch.Tensor:
        return self.row_group >= 0

    def run(self, a: FP8Pair | None = None, b: FP8Pair | None = None) -> torch.Tensor:
        d = _output(self.row_group.numel(), N)
        self.call(self.a if a is None else a, self.b if b is None else b, d)
        return d


def _dense_case(gen: torch.Generator) -> GemmCase:
    m = 320  # three 128-row tiles, the last partial
    b = fp8_weights(1, N, K, gen)

    def call(a: FP8Pair, b: FP8Pair, d: torch.Tensor) -> None:
        dg_moe.fp8_gemm_nt(a, (b[0][0], b[1][0]), d)

    return GemmCase(fp8_activations(m, K, gen), b, torch.zeros(m, dtype=torch.int64, device="cuda"), 130, call)


def _contiguous_case(gen: torch.Generator, use_psum_layout: bool) -> GemmCase:
    per_row, ends, start = [], [], 0
    for g, count in enumerate(CONTIGUOUS_COUNTS):
        padded = -(-count // 128) * 128
        per_row += [g] * count + [-1] * (padded - count)
        ends.append(start + count)
        start += padded
    per_row += [-1] * CONTIGUOUS_TAIL
    row_group = torch.tensor(per_row, dtype=torch.int64, device="cuda")
    grouped_layout = row_group.int() if not use_psum_layout else torch.tensor(ends, dtype=torch.int32, device="cuda")

    def call(a: FP8Pair, b: FP8Pair, d: torch.Tensor) -> None:
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, grouped_layout, use_psum_layout=use_psum_layout)

    # Row 200: group 2, the second of its two tiles.
    return GemmCase(fp8_activations(len(per_row), K, gen), fp8_weights(GROUPS, N, K, gen), row_group, 200, call)


def _masked_case(gen: torch.Generator) -> GemmCase:
    masked_m = torch.tensor(MASKED_M, dtype=torch.int32, device="cuda")
    rows = torch.arange(MASKED_MAX_M, device="cuda")
    groups = torch.arange(GROUPS, device="cuda").unsqueeze(1)
    row_group = torch.where(rows < masked_m.unsqueeze(1), groups, -1).flatten()
    shape = (GROUPS, MASKED_MAX_M)

    def call(a: FP8Pair, b: FP8Pair, d: torch.Tensor) -> None:
        grouped_a = (a[0].view(*shape, K), a[1].view(*shape, K // 128))
        dg_moe.m_grouped_fp8_gemm_nt_masked(grouped_a, b, d.view(*shape, N), masked_m, expected_m=64)

    # Row 460: group 2, row 140, in its second 128-row tile.
    a = fp8_activations(GROUPS * MASKED_MAX_M, K, gen)
    return GemmCase(a, fp8_weights(GROUPS, N, K, gen), row_group, 2 * MASKED_MAX_M + 140, call)


def _gemm_case(op: str, gen: torch.Generator) -> GemmCase:
    if op == "dense":
        return _dense_case(gen)
    if op == "masked":
        return _masked_case(gen)
    return _contiguous_case(gen, use_psum_layout=op == "contiguous_psum")


def _clean_run(case: GemmCase) -> torch.Tensor:
    """The call on the clean operands; checks it writes every element of the written rows, and nothing else, so
    that a NaN in the planted run can only come from the planted value and a poison only from a skipped row."""
    clean = case.run()
    skipped = clean.view(torch.int16) == POISON
    assert torch.equal(skipped, ~case.written.unsqueeze(1).expand_as(skipped)), "the clean run's rows are wrong"
    assert not torch.isnan(clean[case.written].float()).any(), "the clean run has NaN in a written row"
    return clean


def _rows(mask: torch.Tensor) -> list[int]:
    """The first rows of a [rows, columns] mask that hold a True: what a failure shows."""
    return mask.any(1).nonzero().flatten()[:8].tolist()


def _assert_nan_exactly_at(out: torch.Tensor, clean: torch.Tensor, where: torch.Tensor) -> None:
    """``out`` is NaN on every element of ``where`` and bitwise equal to ``clean`` on every other element."""
    assert bool(where.any()), "the case must expect some NaN"
    assert not torch.isnan(clean.float())[where].any(), "the clean run is NaN where only the planted value may be"
    nan = torch.isnan(out.float())
    missing = where & ~nan
    assert not missing.any(), f"{int(missing.sum())} elements that must be NaN are not, in rows {_rows(missing)}"
    changed = (out.view(torch.int16) != clean.view(torch.int16)) & ~where
    assert not changed.any(), f"{int(changed.sum())} elements the NaN must not reach changed, in rows {_rows(changed)}"


@pytest.mark.parametrize("what", ["a", "sfa", "b", "sfb"])
@pytest.mark.parametrize("op", GEMM_OPS)
def test_nan_input_reaches_exactly_its_outputs(op: str, what: str, cuda_gen: torch.Generator) -> None:
    """An e4m3 NaN in A or a NaN sfa entry: its output row, all of it. An e4m3 NaN in row n of group g's weight:
    column n of group g's rows. A NaN sfb entry: its 128 columns of group g's rows. Nothing else changes."""
    case = _gemm_case(op, cuda_gen)
    clean = _clean_run(case)
    r = case.probe_row
    g = int(case.row_group[r])
    k_block = NAN_K // 128
    columns = torch.arange(N, device="cuda")
    rows_of_g = (case.row_group == g).unsqueeze(1)
    if what == "a":
        out = case.run(a=(_nan_byte(case.a[0], (r, NAN_K)), case.a[1]))
    elif what == "sfa":
        out = case.run(a=(case.a[0], _nan_scale(case.a[1], (r, k_block))))
    elif what == "b":
        out = case.run(b=(_nan_byte(case.b[0], (g, NAN_COLUMN, NAN_K)), case.b[1]))
    else:
        out = case.run(b=(case.b[0], _nan_scale(case.b[1], (g, NAN_COLUMN // 128, k_block))))
    if what in ("a", "sfa"):
        where = (torch.arange(out.shape[0], device="cuda") == r).unsqueeze(1).expand(-1, N)
    elif what == "b":
        where = rows_of_g & (columns == NAN_COLUMN)
    else:
        where = rows_of_g & (columns // 128 == NAN_COLUMN // 128)
    _assert_nan_exactly_at(out, clean, where)


@pytest.mark.parametrize("op", GROUPED_OPS)
def test_nan_in_rows_the_op_skips_changes_nothing(op: str, cuda_gen: torch.Generator) -> None:
    """Every padding row (per-row -1, outside the prefix-sum segments) or row past masked_m is NaN in A and sfa:
    the tiles that load such rows next to real ones must not carry the NaN into a written row, and those output
    rows stay unwritten."""
    case = _gemm_case(op, cuda_gen)
    clean = _clean_run(case)
    skipped = ~case.written
    assert bool(skipped.any())
    out = case.run(a=(_nan_byte(case.a[0], (skipped,)), _nan_scale(case.a[1], (skipped,))))
    changed = out.view(torch.int16) != clean.view(torch.int16)
    assert not changed.any(), f"{int(changed.sum())} elements changed, in rows {_rows(changed)}"


# fused_moe: each of E experts gets about T * TOP_K / E = 50 tokens, so every layout has several partial tiles.
E, H, INTER, TOP_K, T = 8, 512, 256, 2, 200
NAN_TOKEN = 77
NAN_EXPERT = 3


def _moe_inputs(seed: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    weights = [t.cuda() for t in layer(E, H, INTER, seed).routed]
    ids, topk_weights = routing(T, TOP_K, E, seed + 2)
    return weights, hidden_states(T, H, seed + 1).cuda(), ids.cuda(), topk_weights.cuda()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_fused_moe_nonfinite_token_stays_in_its_row(mode: str, value: float, seed: int) -> None:
    """A NaN or Inf in one token's hidden state makes that token's whole output row NaN and changes no other token's
    bits. The routing kernel's tl.max skips NaN, so a NaN leaves its block's scale finite and reaches the GEMM as
    its own e4m3 element (an Inf: infinite scale, NaN element), which every column sums. A finite row here means
    the cast to e4m3 dropped the NaN, as Triton's CPU interpreter does (README, "NaN, Inf and overflow")."""
    weights, hidden, ids, topk_weights = _moe_inputs(seed)
    clean = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    assert not torch.isnan(clean.float()).any()
    planted = hidden.clone()
    planted[NAN_TOKEN, 300] = value
    out = fused_moe(planted, *weights, ids, topk_weights, mode=mode)
    where = (torch.arange(T, device="cuda") == NAN_TOKEN).unsqueeze(1).expand(-1, H)
    _assert_nan_exactly_at(out, clean, where)


@pytest.mark.parametrize("weight", ["w13", "w2"])
@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_fused_moe_nan_expert_weight_reaches_only_its_tokens(mode: str, weight: str, seed: int) -> None:
    """An e4m3 NaN in one expert's w13 makes the whole output row of every token routed to that expert NaN (via
    the activation's NaN, which the w2 GEMM sums into every column); one in its w2 row h, column h of those rows.
    Tokens not routed to it keep their bits."""
    weights, hidden, ids, topk_weights = _moe_inputs(seed)
    clean = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    routed = (ids == NAN_EXPERT).any(1)
    assert bool(routed.any()) and not bool(routed.all())
    planted = list(weights)
    columns = torch.arange(H, device="cuda")
    if weight == "w13":
        planted[0] = _nan_byte(weights[0], (NAN_EXPERT, 300, 100))  # an up row: I = 256
        where = routed.unsqueeze(1).expand(-1, H)
    else:
        planted[2] = _nan_byte(weights[2], (NAN_EXPERT, NAN_COLUMN, 70))
        where = routed.unsqueeze(1) & (columns == NAN_COLUMN)
    out = fused_moe(hidden, *planted, ids, topk_weights, mode=mode)
    _assert_nan_exactly_at(out, clean, where)


@pytest.mark.parametrize("mode", ["contiguous", "masked"])
def test_fused_moe_nan_in_unwritten_buffer_rows_reaches_no_output(
    mode: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer leaves its buffers' padding rows and rows past masked_m unwritten (zero_padding=False): routing
    and activation FP8 rows and scales, GEMM outputs. Holding NaN there changes no output bit."""
    weights, hidden, ids, topk_weights = _moe_inputs(seed)
    clean = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    fill_empty_with_nan(monkeypatch)
    out = fused_moe(hidden, *weights, ids, topk_weights, mode=mode)
    changed = out.view(torch.int16) != clean.view(torch.int16)
    assert not changed.any(), f"{int(changed.sum())} elements changed, in rows {_rows(changed)}"
