"""Plain block quantiser for building test inputs; the production casts live in ``dg_moe.layout``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout.math import align, ceil_div, ceil_to_ue8m0, pack_ue8m0_to_int

FP8_MAX = 448.0


def quantize_blockwise(
    x: torch.Tensor, gran_mn: int, gran_k: int, ue8m0: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``x`` to float8_e4m3fn with one FP32 scale per ``gran_mn x gran_k`` block.

    x: float ``[..., MN, K]`` (any float dtype). Returns ``(q, sf)``: q float8_e4m3fn
    ``[..., MN, K]`` contiguous, sf float32 ``[..., ceil(MN / gran_mn), ceil(K / gran_k)]``
    row-major, with ``x ≈ q * sf`` per block. ``ue8m0=True`` rounds each scale up to a power of two.
    """
    mn, k = x.shape[-2], x.shape[-1]
    mnb, kb = ceil_div(mn, gran_mn), ceil_div(k, gran_k)
    padded = F.pad(x.float(), (0, align(k, gran_k) - k, 0, align(mn, gran_mn) - mn))
    blocks = padded.unflatten(-1, (kb, gran_k)).unflatten(-3, (mnb, gran_mn))
    amax = blocks.abs().amax(dim=(-3, -1), keepdim=True).clamp(min=1e-4)
    sf = amax / FP8_MAX
    if ue8m0:
        sf = ceil_to_ue8m0(sf)
    q = (blocks / sf).to(torch.float8_e4m3fn).flatten(-2).flatten(-3, -2)[..., :mn, :k]
    return q.contiguous(), sf.squeeze(-1).squeeze(-2).contiguous()


def pack_sf_ue8m0(sf: torch.Tensor) -> torch.Tensor:
    """Pack power-of-two FP32 scales ``[..., kb]`` into int32 ``[..., ceil(kb / 4)]`` (pads with 1.0)."""
    kb = sf.shape[-1]
    return pack_ue8m0_to_int(F.pad(sf, (0, align(kb, 4) - kb), value=1.0))
