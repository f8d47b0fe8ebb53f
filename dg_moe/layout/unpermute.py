"""Unpermute plus top-k weighted reduce: the expert outputs back to one row per token.

``out[t] = sum over slots s with inverse[t, s] >= 0 of topk_weights[t, s] * y[inverse[t, s]]``,
accumulated in FP32 in increasing slot order (acc = 0; acc = acc + w * y, one rounding for the
product and one for the sum, no FMA), then rounded once to BF16. The fixed order makes the result
bitwise reproducible; a token with no valid slot gets zeros.
"""

from __future__ import annotations

import torch
from torch.compiler import is_compiling

from .. import checks as chk
from . import _kernels


def _check_common(fn: str, y: torch.Tensor, inverse: object, topk_weights: object, weights_name: str,
                  num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    inverse = chk.tensor(fn, "inverse", inverse, (torch.int32,), 2, "[T, k]",
                         "pass the inverse map the routing op returned")
    topk_weights = chk.tensor(fn, weights_name, topk_weights, chk.FLOAT_DTYPES, 2, "[T, k]")
    chk.shape(fn, weights_name, topk_weights, tuple(inverse.shape), "inverse [T, k]")
    chk.same_device(fn, "y", y, {"inverse": inverse, weights_name: topk_weights})
    chk.row_indices(fn, "inverse", inverse, num_rows)
    return inverse, topk_weights


def unpermute_reduce_contiguous_unchecked(y: torch.Tensor, inverse: torch.Tensor,
                                          topk_weights: torch.Tensor) -> torch.Tensor:
    """:func:`unpermute_reduce_contiguous` (bfloat16 [T, H] from y [rows, H]) on arguments the caller has
    already validated to its rules (``fused_moe`` does): no check runs."""
    if _kernels.enabled(y.device):
        return _kernels.weighted_reduce(y, inverse, topk_weights)
    num_tokens, top_k = inverse.shape
    acc = torch.zeros((num_tokens, y.shape[1]), dtype=torch.float32, device=y.device)
    if y.shape[0] == 0:
        # No rows to read: every inverse entry is -1 (checked on CPU).
        return acc.to(torch.bfloat16)
    weights = topk_weights.float()
    for s in range(top_k):
        rows = inverse[:, s].long()
        valid = (rows >= 0).unsqueeze(1)
        contribution = weights[:, s:s + 1] * y[rows.clamp(min=0)].float()
        # where, not a zero weight: a slot that is not routed must not turn inf or NaN rows into NaN.
        acc = torch.where(valid, acc + contribution, acc)
    return acc.to(torch.bfloat16)


def unpermute_reduce_contiguous(y: torch.Tensor, inverse: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each token's expert rows from the contiguous layout (module docstring).

    y: bf16 (or fp16/fp32) [M_cap, H], the second GEMM's output; padding rows are never read.
    inverse: int32 [T, k] from :func:`route_to_contiguous` (row of y, or -1).
    topk_weights: bf16/fp16/fp32 [T, k]. Returns bfloat16 [T, H] contiguous.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.unpermute_reduce_contiguous(y, inverse, topk_weights)
    return reduce_contiguous("unpermute_reduce_contiguous", y, inverse, topk_weights, "topk_weights")


def reduce_contiguous(fn: str, y: object, inverse: object, topk_weights: object, weights_name: str) -> torch.Tensor:
    """:func:`unpermute_reduce_contiguous` with the caller's names in error messages (DeepEP's, for its adapter)."""
    y = chk.tensor(fn, "y", y, chk.FLOAT_DTYPES, 2, "[M_cap, H]")
    inverse, topk_weights = _check_common(fn, y, inverse, topk_weights, weights_name, y.shape[0])
    return unpermute_reduce_contiguous_unchecked(y, inverse, topk_weights)


def unpermute_reduce_masked(y: torch.Tensor, inverse: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each token's expert rows from the masked layout (module docstring).

    y: bf16 (or fp16/fp32) [E, max_m, H], the second GEMM's output; rows past ``masked_m`` are never
        read, as no inverse entry points there.
    inverse: int32 [T, k] from :func:`route_to_masked` (``e * max_m + r``, or -1 for slots not
        local or dropped on overflow).
    topk_weights: bf16/fp16/fp32 [T, k]. Returns bfloat16 [T, H] contiguous.
    """
    if is_compiling():  # torch.compile sees the registered op (dg_moe.custom_ops)
        return torch.ops.dg_moe.unpermute_reduce_masked(y, inverse, topk_weights)
    return reduce_masked(y, inverse, topk_weights)


def reduce_masked(y: object, inverse: object, topk_weights: object) -> torch.Tensor:
    """:func:`unpermute_reduce_masked` itself, checks included, without the torch.compile branch."""
    fn = "unpermute_reduce_masked"
    y = chk.tensor(fn, "y", y, chk.FLOAT_DTYPES, 3, "[E, max_m, H]")
    num_experts, max_m, _ = y.shape
    inverse, topk_weights = _check_common(fn, y, inverse, topk_weights, "topk_weights", num_experts * max_m)
    return unpermute_reduce_masked_unchecked(y, inverse, topk_weights)


def unpermute_reduce_masked_unchecked(y: torch.Tensor, inverse: torch.Tensor, topk_weights: torch.Tensor
                                      ) -> torch.Tensor:
    """:func:`unpermute_reduce_masked` on arguments the caller has already validated to its rules
    (``fused_moe`` does): no check runs."""
    num_experts, max_m, hidden = y.shape
    return unpermute_reduce_contiguous_unchecked(y.reshape(num_experts * max_m, hidden), inverse, topk_weights)
