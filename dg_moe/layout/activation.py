"""The activation between the two expert GEMMs: ``SiLU(gate) * up``, then 1x128 FP8 quantisation (or,
for the BF16 layer, one rounding to BF16).

The first GEMM's output rows are ``[gate | up]`` (gate in the first half of the columns, as in
vLLM's w13). Both halves are widened to FP32, ``F.silu(gate) * up`` is computed in FP32 and the
result is quantised exactly as ``per_token_cast_to_fp8`` does; scales come back MN-major and
TMA-aligned, ready for the second GEMM. Rows that hold no token (padding rows of the contiguous
layout, rows at or past ``masked_m`` of the masked layout) come out as zeros with scale 1.0,
whatever the input holds there; both ops can instead leave them unwritten (``zero_padding=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.compiler import is_compiling

from .. import checks as chk
from . import _kernels
from ._permute import mn_major
from .grouped import psum_bounds
from .quant import per_token_cast_to_fp8_unchecked


def _silu_mul_quant(x: torch.Tensor, valid: torch.Tensor, groups: int, use_ue8m0: bool,
                    zero_padding: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # x: [G * R, 2I]; valid: bool [G * R]. Returns (e4m3 [G, R, I], float32 [G, R, I/128] MN-major).
    # Invalid rows come out zero with scale 1.0; the kernel leaves them unwritten without zero_padding.
    if _kernels.enabled(x.device):
        return _kernels.silu_mul_to_fp8(x, valid, groups, use_ue8m0, zero_padding)
    inter = x.shape[1] // 2
    act = F.silu(x[:, :inter].float()) * x[:, inter:].float()
    q, sf = per_token_cast_to_fp8_unchecked(act, use_ue8m0)
    keep = valid.unsqueeze(1)
    # Bytes again: 0x00 is +0.0 in e4m3, and where() on uint8 needs no float8 kernel.
    q = torch.where(keep, q.view(torch.uint8), 0).view(chk.FP8)
    sf = torch.where(keep, sf, 1.0)
    per_group = x.shape[0] // groups
    return q.view(groups, per_group, inter), mn_major(sf.view(groups, per_group, sf.shape[1]))


def _check_gate_up(fn: str, x: object, ndim: int, layout: str) -> torch.Tensor:
    x = chk.tensor(fn, "x", x, chk.FLOAT_DTYPES, ndim, layout)
    chk.gate_up(fn, "x", x.shape[-1], layout)
    return x


def _psum_rows(grouped_layout: torch.Tensor, num_rows: int) -> torch.Tensor:
    # Row r is valid when start[g] <= r < end[g] for its group g, the last one starting at or below r.
    _, starts, ends = psum_bounds(grouped_layout)
    rows = torch.arange(num_rows, device=ends.device)
    group = (torch.searchsorted(starts, rows, right=True) - 1).clamp(min=0)
    return rows < ends[group]


def silu_and_mul_to_fp8_contiguous(
    x: torch.Tensor, grouped_layout: torch.Tensor, *, use_psum_layout: bool = False, use_ue8m0: bool = False,
    zero_padding: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``SiLU(gate) * up`` over the contiguous layout, quantised for the second GEMM.

    x: bf16 (or fp16/fp32) [M_cap, 2I], ``[gate | up]`` per row; I a multiple of 128.
    grouped_layout: int32, either per-row [M_cap] (expert of each row, -1 on padding) or, with
        ``use_psum_layout=True``, the prefix-sum ends [E] (as ``ContiguousLayout`` gives both).
    use_ue8m0: round scales up to powers of two.
    zero_padding: True, rows that belong to no expert come out zero with scale 1.0 (as do the scale
        storage's alignment columns). False, the Triton path leaves them, their scales and the alignment
        columns unwritten (uninitialised memory), for consumers such as the contiguous GEMM with the
        prefix-sum layout that read no result from them; the PyTorch path (CPU, or
        ``DG_MOE_LAYOUT_KERNELS=torch``) may still write them. Rows of an expert are the same either way,
        and are the only rows read.
    Returns (e4m3 [M_cap, I] contiguous, float32 [M_cap, I/128] with strides
    ``(1, align(M_cap, 4))``).
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.silu_and_mul_to_fp8_contiguous(x, grouped_layout, use_psum_layout, use_ue8m0,
                                                                zero_padding)
    return silu_contiguous(x, grouped_layout, use_psum_layout, use_ue8m0, zero_padding)


def silu_contiguous(x: object, grouped_layout: object, use_psum_layout: object, use_ue8m0: object,
                    zero_padding: object) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`silu_and_mul_to_fp8_contiguous` itself, checks included, without the torch.compile branch."""
    fn = "silu_and_mul_to_fp8_contiguous"
    chk.flag(fn, "use_psum_layout", use_psum_layout)
    chk.flag(fn, "use_ue8m0", use_ue8m0)
    chk.flag(fn, "zero_padding", zero_padding)
    x = _check_gate_up(fn, x, 2, "[M_cap, 2I]")
    num_rows = x.shape[0]
    what = "[E] (prefix-sum ends)" if use_psum_layout else "[M_cap] (expert of each row)"
    grouped_layout = chk.tensor(fn, "grouped_layout", grouped_layout, (torch.int32,), 1, what,
                                "convert it with .to(torch.int32)")
    chk.same_device(fn, "x", x, {"grouped_layout": grouped_layout})
    if not use_psum_layout:
        chk.shape(fn, "grouped_layout", grouped_layout, (num_rows,), f"x of {num_rows} rows (per-row layout)")
        chk.group_ids(fn, "grouped_layout", grouped_layout, None)
        return silu_and_mul_to_fp8_contiguous_unchecked(x, grouped_layout, use_ue8m0=use_ue8m0,
                                                        zero_padding=zero_padding)
    chk.psum_ends(fn, "grouped_layout", grouped_layout, num_rows, f"the {num_rows} rows of x")
    q, sf = _silu_mul_quant(x, _psum_rows(grouped_layout, num_rows), 1, use_ue8m0, zero_padding)
    return q[0], sf[0]


def silu_and_mul_to_fp8_contiguous_unchecked(
    x: torch.Tensor, grouped_layout: torch.Tensor, *, use_ue8m0: bool = False, zero_padding: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`silu_and_mul_to_fp8_contiguous` over a per-row ``grouped_layout``, on arguments the caller has
    already validated to its rules (``fused_moe`` does): no check runs."""
    if _kernels.enabled(x.device):
        # The kernel reads the per-row layout itself: no mask to build first.
        q, sf = _kernels.silu_mul_to_fp8_per_row(x, grouped_layout, use_ue8m0, zero_padding)
    else:
        q, sf = _silu_mul_quant(x, grouped_layout >= 0, 1, use_ue8m0, zero_padding)
    return q[0], sf[0]


def silu_and_mul_to_fp8_masked(
    x: torch.Tensor, masked_m: torch.Tensor, *, use_ue8m0: bool = False, zero_padding: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``SiLU(gate) * up`` over the masked layout, quantised for the second GEMM.

    x: bf16 (or fp16/fp32) [E, max_m, 2I], ``[gate | up]`` per row; I a multiple of 128.
    masked_m: int32 [E] on x's device; as in the masked GEMM, a count above ``max_m`` means
        ``max_m`` and a negative one 0. Rows at or past it are not computed (no NaN from whatever x
        holds there).
    use_ue8m0: round scales up to powers of two.
    zero_padding: True, rows at or past ``masked_m`` come out zero with scale 1.0 (as do the scale
        storage's alignment columns). False, the Triton path leaves them, their scales and the alignment
        columns unwritten (uninitialised memory), for consumers such as the masked GEMM that never read
        them; the PyTorch path (CPU, or ``DG_MOE_LAYOUT_KERNELS=torch``) may still write them. Rows
        below ``masked_m`` are the same either way.
    Returns (e4m3 [E, max_m, I] contiguous, float32 [E, max_m, I/128] with strides
    ``(I/128 * A, 1, A)``, ``A = align(max_m, 4)``).
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.silu_and_mul_to_fp8_masked(x, masked_m, use_ue8m0, zero_padding)
    return silu_masked(x, masked_m, use_ue8m0, zero_padding)


def silu_masked(x: object, masked_m: object, use_ue8m0: object, zero_padding: object
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`silu_and_mul_to_fp8_masked` itself, checks included, without the torch.compile branch."""
    fn = "silu_and_mul_to_fp8_masked"
    chk.flag(fn, "use_ue8m0", use_ue8m0)
    chk.flag(fn, "zero_padding", zero_padding)
    x = _check_gate_up(fn, x, 3, "[E, max_m, 2I]")
    num_experts = x.shape[0]
    masked_m = chk.tensor(fn, "masked_m", masked_m, (torch.int32,), 1, "[E]", "convert it with .to(torch.int32)")
    chk.shape(fn, "masked_m", masked_m, (num_experts,), f"x [E, max_m, 2I] with E={num_experts}")
    chk.same_device(fn, "x", x, {"masked_m": masked_m})
    return silu_and_mul_to_fp8_masked_unchecked(x, masked_m, use_ue8m0=use_ue8m0, zero_padding=zero_padding)


def silu_and_mul_to_fp8_masked_unchecked(
    x: torch.Tensor, masked_m: torch.Tensor, *, use_ue8m0: bool = False, zero_padding: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`silu_and_mul_to_fp8_masked` on arguments the caller has already validated to its rules
    (``fused_moe`` does): no check runs."""
    if _kernels.enabled(x.device):
        # The kernel reads masked_m itself: no per-row mask to build first.
        return _kernels.silu_mul_to_fp8_masked(x, masked_m, use_ue8m0, zero_padding)
    num_experts, max_m, two_i = x.shape
    return _silu_mul_quant(x.reshape(num_experts * max_m, two_i), _masked_rows_valid(masked_m, max_m), num_experts,
                           use_ue8m0, zero_padding)


def _masked_rows_valid(masked_m: torch.Tensor, max_m: int) -> torch.Tensor:
    """bool [E * max_m]: whether row r of expert e lies below masked_m[e]. A negative count selects no
    row and one above max_m every row, as the masked GEMM reads them."""
    rows = torch.arange(max_m, device=masked_m.device)
    return (rows.unsqueeze(0) < masked_m.long().unsqueeze(1)).reshape(-1)


def _silu_mul_bf16(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # x: [rows, 2I]; valid: bool [rows]. The PyTorch formulation: every row computed, invalid ones zeroed
    # (whatever x holds there, NaN included), so the result never depends on them.
    inter = x.shape[1] // 2
    act = F.silu(x[:, :inter].float()) * x[:, inter:].float()
    return torch.where(valid.unsqueeze(1), act, 0.0).to(torch.bfloat16)


def silu_and_mul_to_bf16_contiguous_unchecked(x: torch.Tensor, grouped_layout: torch.Tensor) -> torch.Tensor:
    """``SiLU(gate) * up`` over the contiguous layout for the BF16 layer: computed in FP32 from x bf16
    [M_cap, 2I] (``[gate | up]`` per row), rounded once to bfloat16 [M_cap, I] contiguous.

    grouped_layout: int32 [M_cap], the expert of each row, -1 on padding. Rows of no expert are left
    unwritten by the Triton kernel (zero in the PyTorch formulation): their contents are unspecified,
    as for ``zero_padding=False``. Arguments as ``fused_moe_bf16`` validated them: no check runs.
    """
    if _kernels.enabled(x.device):
        return _kernels.silu_mul_to_bf16_per_row(x, grouped_layout)
    return _silu_mul_bf16(x, grouped_layout >= 0)


def silu_and_mul_to_bf16_masked_unchecked(x: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
    """``SiLU(gate) * up`` over the masked layout for the BF16 layer: computed in FP32 from x bf16
    [E, max_m, 2I], rounded once to bfloat16 [E, max_m, I] contiguous.

    masked_m: int32 [E] on x's device, read as the masked GEMM reads it (above ``max_m`` means ``max_m``,
    negative 0). Rows at or past it are left unwritten by the Triton kernel (zero in the PyTorch
    formulation): their contents are unspecified. No host synchronisation and shapes from x alone, so it
    can be captured in a CUDA graph. Arguments as ``fused_moe_bf16`` validated them: no check runs.
    """
    if _kernels.enabled(x.device):
        return _kernels.silu_mul_to_bf16_masked(x, masked_m)
    num_experts, max_m, two_i = x.shape
    return _silu_mul_bf16(x.reshape(num_experts * max_m, two_i), _masked_rows_valid(masked_m, max_m)).view(
        num_experts, max_m, -1)
