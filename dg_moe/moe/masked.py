"""The routed experts over the masked (decode) layout.

route_to_masked -> m_grouped_fp8_gemm_nt_masked (w13) -> silu_and_mul_to_fp8_masked ->
m_grouped_fp8_gemm_nt_masked (w2) -> unpermute_reduce_masked; for BF16 weights (``fused_moe_bf16``) the
same steps without quantisation (BF16 rows, BF16 grouped GEMMs, the activation rounded once to BF16).
Every tensor's shape follows from
(T, k, E, max_m, H, I) and the per-expert counts stay on the device, so the path can be captured in
a CUDA graph for one (T, max_m) and replayed with new routing.

An expert that receives more than ``max_m`` entries keeps the first ``max_m`` in (token, slot)
order and drops the rest (``route_to_masked``'s policy); ``overflow`` counts the dropped entries.

No result depends on a row at or past ``masked_m[e]``: the masked GEMM's tiles may load such rows, but
each output row depends on its own input row alone and rows at or past ``masked_m[e]`` are not stored;
the activation skips them and the reduce follows ``inverse``. So the routing and the activation leave
them unwritten (``zero_padding=False``): at decode sizes zero-filling them costs more than the real rows.
"""

from __future__ import annotations

import torch

from ..layout import TokenRows
from ..layout.activation import silu_and_mul_to_bf16_masked_unchecked, silu_and_mul_to_fp8_masked_unchecked
from ..layout.routing_masked import route_to_masked_unchecked
from ..layout.unpermute import unpermute_reduce_masked_unchecked
from ._gemms import DG_MOE_GEMMS, GroupedGemms, Operand
from .hints import masked_rows_hint


def default_max_m(num_tokens: int) -> int:
    """Rows per expert of the masked buffers when the caller gives none: ``max(T, 1)``.

    A top-k router sends each token to k distinct experts, so no expert receives more than T
    entries and nothing is dropped, whatever the load imbalance. (T = 0 still needs one row.)
    """
    return max(num_tokens, 1)


def routed_experts_masked(tokens: TokenRows, w13: Operand, w2: Operand, topk_ids: torch.Tensor,
                          topk_weights: torch.Tensor, max_m: int, gemms: GroupedGemms = DG_MOE_GEMMS,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of each token's routed experts and the overflow counts.

    FP8 (``fused_moe``): tokens bf16 [T, H] (the routing quantises it 1x128) or (e4m3 [T, H],
    float32 [T, H/128]); w13: (e4m3 [E, 2I, H], float32 [E, 2I/128, H/128]);
    w2: (e4m3 [E, H, I], float32 [E, H/128, I/128]).
    BF16 (``fused_moe_bf16``, w13 a plain tensor): tokens bf16 [T, H], w13 bf16 [E, 2I, H], w2 bf16
    [E, H, I], gemms ``DG_MOE_BF16_GEMMS``.
    topk_ids int [T, k] (-1: not local); topk_weights float [T, k]; max_m rows per expert. Arguments as
    the layer validated them: the ops below run unchecked. gemms: the two grouped GEMMs
    (``dg_moe.moe._gemms``), whose ``masked_rows(max_m)`` sizes the buffers (max_m itself for dg_moe's).
    Returns (bfloat16 [T, H], int32 [E] entries dropped per expert, on the device).
    """
    bf16 = isinstance(w13, torch.Tensor)
    num_experts, two_i, hidden = (w13 if bf16 else w13[0]).shape
    num_tokens, top_k = topk_ids.shape
    rows = gemms.masked_rows(max_m)
    fn = "fused_moe_bf16" if bf16 else "fused_moe"
    # Rows at or past masked_m stay unwritten in every buffer below: only rows below it are ever read.
    routed = route_to_masked_unchecked(fn, tokens, topk_ids, num_experts, rows, zero_padding=False, bf16=bf16)
    hint = masked_rows_hint(num_tokens, top_k, num_experts, rows)
    device = routed.a.device
    gate_up = torch.empty(num_experts, rows, two_i, dtype=torch.bfloat16, device=device)
    gemms.masked(routed.a if bf16 else (routed.a, routed.sfa), w13, gate_up, routed.masked_m, hint)
    if bf16:
        act = silu_and_mul_to_bf16_masked_unchecked(gate_up, routed.masked_m)
    else:
        act = silu_and_mul_to_fp8_masked_unchecked(gate_up, routed.masked_m, zero_padding=False)
    down = torch.empty(num_experts, rows, hidden, dtype=torch.bfloat16, device=device)
    gemms.masked(act, w2, down, routed.masked_m, hint)
    return unpermute_reduce_masked_unchecked(down, routed.inverse, topk_weights), routed.overflow
