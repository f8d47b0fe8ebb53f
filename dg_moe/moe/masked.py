"""The routed experts over the masked (decode) layout.

route_to_masked -> m_grouped_fp8_gemm_nt_masked (w13) -> silu_and_mul_to_fp8_masked ->
m_grouped_fp8_gemm_nt_masked (w2) -> unpermute_reduce_masked. Every tensor's shape follows from
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
from ..layout.activation import silu_and_mul_to_fp8_masked_unchecked
from ..layout.routing_masked import route_to_masked_unchecked
from ..layout.unpermute import unpermute_reduce_masked_unchecked
from ._gemms import DG_MOE_GEMMS, GroupedGemms
from .hints import masked_rows_hint

FP8Pair = tuple[torch.Tensor, torch.Tensor]


def default_max_m(num_tokens: int) -> int:
    """Rows per expert of the masked buffers when the caller gives none: ``max(T, 1)``.

    A top-k router sends each token to k distinct experts, so no expert receives more than T
    entries and nothing is dropped, whatever the load imbalance. (T = 0 still needs one row.)
    """
    return max(num_tokens, 1)


def routed_experts_masked(tokens: TokenRows, w13: FP8Pair, w2: FP8Pair, topk_ids: torch.Tensor,
                          topk_weights: torch.Tensor, max_m: int, gemms: GroupedGemms = DG_MOE_GEMMS,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of each token's routed experts and the overflow counts.

    tokens: bf16 [T, H] (the routing quantises it 1x128) or (e4m3 [T, H], float32 [T, H/128]);
    w13: (e4m3 [E, 2I, H], float32 [E, 2I/128, H/128]);
    w2: (e4m3 [E, H, I], float32 [E, H/128, I/128]); topk_ids int [T, k] (-1: not local);
    topk_weights float [T, k]; max_m rows per expert. Arguments as ``fused_moe`` validated them: the ops
    below run unchecked. gemms: the two grouped GEMMs (dg_moe's; ``dg_moe.moe._gemms``), whose
    ``masked_rows(max_m)`` sizes the buffers (max_m itself for dg_moe's).
    Returns (bfloat16 [T, H], int32 [E] entries dropped per expert, on the device).
    """
    num_experts, two_i, hidden = w13[0].shape
    num_tokens, top_k = topk_ids.shape
    rows = gemms.masked_rows(max_m)
    # Rows at or past masked_m stay unwritten in every buffer below: only rows below it are ever read.
    routed = route_to_masked_unchecked("fused_moe", tokens, topk_ids, num_experts, rows, zero_padding=False)
    hint = masked_rows_hint(num_tokens, top_k, num_experts, rows)
    device = routed.a.device
    gate_up = torch.empty(num_experts, rows, two_i, dtype=torch.bfloat16, device=device)
    gemms.masked((routed.a, routed.sfa), w13, gate_up, routed.masked_m, hint)
    act = silu_and_mul_to_fp8_masked_unchecked(gate_up, routed.masked_m, zero_padding=False)
    down = torch.empty(num_experts, rows, hidden, dtype=torch.bfloat16, device=device)
    gemms.masked(act, w2, down, routed.masked_m, hint)
    return unpermute_reduce_masked_unchecked(down, routed.inverse, topk_weights), routed.overflow
