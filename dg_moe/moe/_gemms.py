"""The seam between the fused layer and its two grouped GEMMs (private: not part of the public API).

The routed experts run gate_up and down as grouped GEMMs over the layout their routing built; every
other step (routing with quantisation, SiLU-and-mul with quantisation, the weighted reduce) is the
layer's own. :class:`GroupedGemms` names the two GEMM calls and what the masked one needs of its
buffers, so the benchmark can run this same layer code on another library's GEMMs
(``dg_moe.bench.peer_deepgemm.layer_gemms``: DeepGEMM's) rather than on a copy of the rest that could
drift from ours. :data:`DG_MOE_GEMMS`, dg_moe's own ops, is the default everywhere. The BF16 layer
(``fused_moe_bf16``) runs the same steps without quantisation on :data:`DG_MOE_BF16_GEMMS`, whose
operands are plain bfloat16 tensors instead of FP8 pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..layout import align
from ..ops.contiguous import m_grouped_bf16_gemm_nt_contiguous_unchecked, m_grouped_fp8_gemm_nt_contiguous_unchecked
from ..ops.masked import m_grouped_bf16_gemm_nt_masked_unchecked, m_grouped_fp8_gemm_nt_masked_unchecked

FP8Pair = tuple[torch.Tensor, torch.Tensor]
Operand = FP8Pair | torch.Tensor
"""An FP8 (data, scales) pair, or a bfloat16 tensor for the BF16 GEMMs."""
GroupedGemm = Callable[[Operand, Operand, torch.Tensor, torch.Tensor, int], None]


@dataclass(frozen=True)
class GroupedGemms:
    """The routed experts' two grouped FP8 GEMM calls, recipe (1, 128, 128), and the masked buffers' rows.
    (The BF16 pair, :data:`DG_MOE_BF16_GEMMS`, takes bfloat16 a [M, K] / [G, R, K] and b [G, N, K] in
    place of each pair.)

    contiguous(a, b, d, ends, expected_m): for each group g, ``d[r] = a[r] @ b[g].T`` over its rows
        ``[align(ends[g-1], 128), ends[g])`` (the prefix-sum layout; 0 for g = 0). a: (e4m3 [M, K],
        float32 [M, K/128] MN-major, TMA-aligned); b: (e4m3 [G, N, K], float32 [G, N/128, K/128]);
        d: bf16 [M, N]; ends: int32 [G]; expected_m: the rows-per-group hint (never the result).
    masked(a, b, d, masked_m, expected_m): ``d[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g].T``.
        a: (e4m3 [G, R, K], float32 [G, R, K/128] MN-major, TMA-aligned); b as above; d: bf16 [G, R, N];
        masked_m: int32 [G]; expected_m as above.
    Neither may depend on, or let a result depend on, rows outside the groups' segments: the layer
    leaves them unwritten. Both are called with arguments the layer has validated.
    masked_rows_alignment: the masked buffers hold ``align(max_m, masked_rows_alignment)`` rows per
        expert (R above), for a kernel that assumes it; the routing then keeps up to that many entries
        per expert, which differs from ``max_m`` only where ``max_m`` drops entries.
    """

    contiguous: GroupedGemm
    masked: GroupedGemm
    masked_rows_alignment: int = 1

    def masked_rows(self, max_m: int) -> int:
        """Rows per expert of the masked buffers for a layer called with ``max_m``."""
        return align(max_m, self.masked_rows_alignment)


def _dg_moe_contiguous(a: FP8Pair, b: FP8Pair, d: torch.Tensor, ends: torch.Tensor, expected_m: int) -> None:
    m_grouped_fp8_gemm_nt_contiguous_unchecked(
        a, b, d, ends, use_psum_layout=True, expected_m_for_psum_layout=expected_m
    )


def _dg_moe_masked(a: FP8Pair, b: FP8Pair, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int) -> None:
    m_grouped_fp8_gemm_nt_masked_unchecked(a, b, d, masked_m, expected_m)


# Both through functions that look the ops up when called, so that `dg-moe warmup`'s test can record the
# calls the layer makes by replacing the ops in this module.
DG_MOE_GEMMS = GroupedGemms(_dg_moe_contiguous, _dg_moe_masked)
"""dg_moe's own grouped GEMMs; they take any ``max_m``, so the buffers hold exactly ``max_m`` rows."""


def _dg_moe_bf16_contiguous(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, ends: torch.Tensor,
                            expected_m: int) -> None:
    m_grouped_bf16_gemm_nt_contiguous_unchecked(a, b, d, ends, use_psum_layout=True,
                                                expected_m_for_psum_layout=expected_m)


def _dg_moe_bf16_masked(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, masked_m: torch.Tensor,
                        expected_m: int) -> None:
    m_grouped_bf16_gemm_nt_masked_unchecked(a, b, d, masked_m, expected_m)


DG_MOE_BF16_GEMMS = GroupedGemms(_dg_moe_bf16_contiguous, _dg_moe_bf16_masked)
"""dg_moe's grouped BF16 GEMMs, for ``fused_moe_bf16``; any ``max_m``, as the FP8 ones."""
