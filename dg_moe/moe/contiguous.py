"""The routed experts over the contiguous (prefill) layout.

route_to_contiguous -> m_grouped_fp8_gemm_nt_contiguous (w13) -> silu_and_mul_to_fp8_contiguous ->
m_grouped_fp8_gemm_nt_contiguous (w2) -> unpermute_reduce_contiguous; for BF16 weights
(``fused_moe_bf16``) the same steps without quantisation: the routing copies BF16 rows, the BF16 grouped
GEMMs run and the activation rounds once to BF16. The GEMMs read the prefix-sum
form of ``grouped_layout``, the activation the per-row form, and the buffer size comes from shapes
alone (``get_contiguous_layout_capacity``), so nothing waits on the host. No entry is ever dropped.

No result depends on a padding or unused row (outside every expert's segment): the GEMMs' tiles may
load such rows, but each output row depends on its own input row alone and rows outside the segments
are not stored; the activation skips them and the reduce follows ``inverse``. So the routing and the
activation leave them unwritten (``zero_padding=False``), which also lets both run as a few Triton
kernels instead of dozens of small PyTorch ops.
"""

from __future__ import annotations

import torch

from ..layout import TokenRows
from ..layout.activation import silu_and_mul_to_bf16_contiguous_unchecked, silu_and_mul_to_fp8_contiguous_unchecked
from ..layout.routing_contiguous import route_to_contiguous_unchecked
from ..layout.unpermute import unpermute_reduce_contiguous_unchecked
from ._gemms import DG_MOE_GEMMS, GroupedGemms, Operand
from .hints import expected_rows_per_expert


def routed_experts_contiguous(tokens: TokenRows, w13: Operand, w2: Operand, topk_ids: torch.Tensor,
                              topk_weights: torch.Tensor, gemms: GroupedGemms = DG_MOE_GEMMS) -> torch.Tensor:
    """Weighted sum of each token's routed experts: bfloat16 [T, H].

    FP8 (``fused_moe``): tokens bf16 [T, H] (the routing quantises it 1x128) or (e4m3 [T, H],
    float32 [T, H/128]); w13: (e4m3 [E, 2I, H], float32 [E, 2I/128, H/128]);
    w2: (e4m3 [E, H, I], float32 [E, H/128, I/128]).
    BF16 (``fused_moe_bf16``, w13 a plain tensor): tokens bf16 [T, H], w13 bf16 [E, 2I, H], w2 bf16
    [E, H, I], gemms ``DG_MOE_BF16_GEMMS``.
    topk_ids int [T, k] (-1: not local); topk_weights float [T, k]. Arguments as the layer validated
    them: the ops below run unchecked. gemms: the two grouped GEMMs (``dg_moe.moe._gemms``).
    """
    bf16 = isinstance(w13, torch.Tensor)
    num_experts, two_i, hidden = (w13 if bf16 else w13[0]).shape
    num_tokens, top_k = topk_ids.shape
    fn = "fused_moe_bf16" if bf16 else "fused_moe"
    # Rows outside the segments stay unwritten in every buffer below: no result is read from them.
    routed = route_to_contiguous_unchecked(fn, tokens, topk_ids, num_experts, zero_padding=False, bf16=bf16)
    ends = routed.grouped_layout_psum
    rows = routed.a.shape[0]
    hint = expected_rows_per_expert(num_tokens, top_k, num_experts)
    device = routed.a.device
    gate_up = torch.empty(rows, two_i, dtype=torch.bfloat16, device=device)
    gemms.contiguous(routed.a if bf16 else (routed.a, routed.sfa), w13, gate_up, ends, hint)
    # The per-row form: the kernel reads each row's expert itself, where the prefix-sum form would need
    # a row mask built from the ends first.
    if bf16:
        act = silu_and_mul_to_bf16_contiguous_unchecked(gate_up, routed.grouped_layout)
    else:
        act = silu_and_mul_to_fp8_contiguous_unchecked(gate_up, routed.grouped_layout, zero_padding=False)
    down = torch.empty(rows, hidden, dtype=torch.bfloat16, device=device)
    gemms.contiguous(act, w2, down, ends, hint)
    return unpermute_reduce_contiguous_unchecked(down, routed.inverse, topk_weights)
