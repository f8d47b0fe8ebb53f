"""Block-wise FP8 quantisation of expert weights (recipe 128x128), the layout ``fused_moe`` reads."""

from __future__ import annotations

import torch

from ..layout import per_block_cast_to_fp8


def quantize_expert_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One float32 scale per 128x128 block of each expert, as ``per_block_cast_to_fp8`` computes it.

    w: bf16/fp16/fp32 [E, N, K] (stacked experts) or [N, K] (one expert, e.g. the shared one).
    Returns (float8_e4m3fn [E, N, K], float32 [E, ceil(N/128), ceil(K/128)]) contiguous, or the
    2-D pair for 2-D input.
    """
    if not isinstance(w, torch.Tensor) or w.dim() not in (2, 3):
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"quantize_expert_weights: w must be [E, N, K] or [N, K], got {got}")
    if w.dim() == 2:
        return per_block_cast_to_fp8(w)
    pairs = [per_block_cast_to_fp8(expert) for expert in w]
    if not pairs:
        raise ValueError(f"quantize_expert_weights: w holds no expert (shape {tuple(w.shape)})")
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])
