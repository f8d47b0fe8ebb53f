"""Scale-factor expansion and FP8 dequantisation to float64 (FP32 and packed-UE8M0 scales, any strides)."""

from __future__ import annotations

import torch

from ..layout.math import ceil_div, unpack_ue8m0_from_int


def unpack_sf(sf: torch.Tensor, k: int, gran_k: int) -> torch.Tensor:
    """Scale factors as float64 blocks ``[..., MN_blocks, ceil(k / gran_k)]``.

    sf: float32 ``[..., MN_blocks, ceil(k / gran_k)]``, or int32 packed UE8M0
    ``[..., MN_blocks, ceil(ceil(k / gran_k) / 4)]`` (four exponent bytes per int along K, byte i
    of int j is block 4j+i); any strides (row-major or MN-major).
    """
    kb = ceil_div(k, gran_k)
    if sf.dtype == torch.int32:
        sf = unpack_ue8m0_from_int(sf)[..., :kb]
    return sf.to(torch.float64)


def expand_sf(sf: torch.Tensor, mn: int, k: int, gran_mn: int, gran_k: int) -> torch.Tensor:
    """Broadcast per-block scales to one float64 scale per element: ``[..., mn, k]``.

    sf: as for :func:`unpack_sf`, with ``MN_blocks == ceil(mn / gran_mn)``.
    """
    blocks = unpack_sf(sf, k, gran_k)
    return blocks.repeat_interleave(gran_mn, dim=-2)[..., :mn, :].repeat_interleave(gran_k, dim=-1)[..., :k]


def dequantize(x: torch.Tensor, sf: torch.Tensor, gran_mn: int, gran_k: int) -> torch.Tensor:
    """FP8 values times their block scales, exactly, as float64 ``[..., MN, K]``.

    x: float8_e4m3fn ``[..., MN, K]`` (K last: pass ``.mT`` views for MN-last operands), any strides.
    sf: float32 ``[..., ceil(MN / gran_mn), ceil(K / gran_k)]`` or packed UE8M0 int32
    ``[..., ceil(MN / gran_mn), ceil(ceil(K / gran_k) / 4)]``, any strides.
    """
    mn, k = x.shape[-2], x.shape[-1]
    rows = unpack_sf(sf, k, gran_k).repeat_interleave(gran_mn, dim=-2)[..., :mn, :]
    if k % gran_k == 0:
        # One scale per (row, K block) broadcast over the block: no element-sized scale tensor.
        blocked = x.to(torch.float64).unflatten(-1, (k // gran_k, gran_k)) * rows.unsqueeze(-1)
        return blocked.flatten(-2)
    return x.to(torch.float64) * rows.repeat_interleave(gran_k, dim=-1)[..., :k]
