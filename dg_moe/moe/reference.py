"""A float64 MoE layer computed expert by expert: what ``fused_moe`` is measured against.

The numeric contract compares FP8 ops with float64 computed from their dequantised inputs: pass
``per_token_cast_to_fp8(hidden)`` and the FP8 weight pairs, and the only FP8 error left in
``fused_moe`` is the intermediate activation's quantisation. Pass the unquantised tensors instead
to measure what FP8 costs against the original BF16 model. For ``fused_moe_bf16`` pass the BF16
tensors with ``bf16_intermediates=True``: the reference then rounds where that path writes BF16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference import dequantize

Operand = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _float64(x: Operand, gran_mn: int, index: int | None = None) -> torch.Tensor:
    # An (e4m3, float32 scales) pair is dequantised exactly; a float tensor is widened.
    if isinstance(x, tuple):
        data, sf = x if index is None else (x[0][index], x[1][index])
        return dequantize(data, sf, gran_mn, 128)
    return (x if index is None else x[index]).double()


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).double()


def _expert(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, bf16_intermediates: bool = False) -> torch.Tensor:
    inter = w13.shape[0] // 2
    gate_up = x @ w13.T
    if not bf16_intermediates:
        return (F.silu(gate_up[:, :inter]) * gate_up[:, inter:]) @ w2.T
    gate_up = _bf16(gate_up)
    return _bf16(_bf16(F.silu(gate_up[:, :inter]) * gate_up[:, inter:]) @ w2.T)


def reference_moe(
    hidden: Operand,
    w13: Operand,
    w2: Operand,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    routed_scaling_factor: float = 1.0,
    shared_expert: tuple[Operand, Operand] | None = None,
    bf16_intermediates: bool = False,
) -> torch.Tensor:
    """float64 [T, H]: ``rsf * sum_s w[t, s] * expert_{ids[t, s]}(x[t]) + shared(x[t])``, no rounding.

    hidden: float [T, H] or (e4m3 [T, H], float32 [T, H/128]) (1x128 scales).
    w13: float [E, 2I, H] (``[gate | up]``) or (e4m3, float32 [E, 2I/128, H/128]); w2: float
        [E, H, I] or (e4m3, float32 [E, H/128, I/128]). Experts are widened one at a time, so the
        float64 copy of all experts never exists at once.
    topk_ids: int [T, k], -1 for a slot to skip; topk_weights: float [T, k].
    shared_expert: (w13 [2Is, H], w2 [H, Is]) as float tensors or FP8 pairs, added with weight 1.
    bf16_intermediates: round each routed expert's gate_up, activation and output to BF16, where
        ``fused_moe_bf16`` writes them (its GEMMs' outputs and the activation): the reference of that
        path, whose remaining error is then FP32 accumulation and the output's one rounding.
    Reads the routing on the host: a reference, not a fast path.
    """
    x = _float64(hidden, 1)
    out = torch.zeros_like(x)
    ids = topk_ids.long()
    weights = topk_weights.double() * routed_scaling_factor
    num_experts = (w13[0] if isinstance(w13, tuple) else w13).shape[0]
    for e in range(num_experts):
        token, slot = (ids == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        y = _expert(x[token], _float64(w13, 128, e), _float64(w2, 128, e), bf16_intermediates)
        out.index_add_(0, token, weights[token, slot].unsqueeze(1) * y)
    if shared_expert is not None:
        out += _expert(x, _float64(shared_expert[0], 128), _float64(shared_expert[1], 128))
    return out
