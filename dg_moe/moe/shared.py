"""The DeepSeek-style shared expert: one FP8 expert every token goes through, unweighted.

It has the routed experts' structure (``[gate | up]`` projection, ``SiLU(gate) * up``, down
projection) and runs as two dense ``fp8_gemm_nt`` calls on all T tokens, reusing the tokens the
routed path quantised. A routed-expert id appended to every token would do the same work, but it
would need the shared weights inside the routed ``[E, ...]`` tensors (a copy of all the weights, or
a layout change for the caller), an extra segment in the contiguous buffer and ``max_m >= T`` rows
reserved in the masked one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..layout.activation import silu_and_mul_to_fp8_contiguous_unchecked
from ..ops.dense import fp8_gemm_nt_unchecked


class SharedExpert(NamedTuple):
    """FP8 weights of one shared expert, per-128x128-block scaled like the routed ones.

    w13: float8_e4m3fn [2Is, H], ``[gate | up]`` along 2Is; w13_scale: float32 [2Is/128, H/128].
    w2: float8_e4m3fn [H, Is]; w2_scale: float32 [H/128, Is/128]. Is (a multiple of 128) may differ
    from the routed experts' I (DeepSeek-V3: ``n_shared_experts * moe_intermediate_size``).
    """

    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor


def shared_expert_forward(tokens: tuple[torch.Tensor, torch.Tensor], expert: SharedExpert) -> torch.Tensor:
    """``(SiLU(x @ gate.T) * (x @ up.T)) @ w2.T`` for every token: bfloat16 [T, H].

    tokens: (e4m3 [T, H], float32 [T, H/128]) as ``per_token_cast_to_fp8`` returns them; validated
    arguments only (``fused_moe`` checks them), so the ops below run unchecked.
    """
    x, sf = tokens
    num_tokens = x.shape[0]
    gate_up = torch.empty(num_tokens, expert.w13.shape[0], dtype=torch.bfloat16, device=x.device)
    fp8_gemm_nt_unchecked((x, sf), (expert.w13, expert.w13_scale), gate_up)
    # One group holding every row: the contiguous activation is then a dense one.
    every_row = torch.zeros(num_tokens, dtype=torch.int32, device=x.device)
    act = silu_and_mul_to_fp8_contiguous_unchecked(gate_up, every_row)
    out = torch.empty(num_tokens, expert.w2.shape[0], dtype=torch.bfloat16, device=x.device)
    fp8_gemm_nt_unchecked(act, (expert.w2, expert.w2_scale), out)
    return out
