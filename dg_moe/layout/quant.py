"""FP8 (e4m3) quantisation in DeepGEMM's three recipes, on any device.

Scales are ``amax / 448`` per block (448 is e4m3's largest finite value), with amax clamped to
1e-4 so an all-zero block gets a finite scale; ``use_ue8m0`` rounds each scale up to a power
of two (DeepSeek-V3.1 checkpoints, DeepEP ``use_ue8m0``), which makes dequantisation exact.
"""

from __future__ import annotations

import torch

from .math import align, ceil_to_ue8m0, pack_ue8m0_to_int_unchecked
from .scale_factors import empty_mn_major

FP8_E4M3_MAX = 448.0
_AMAX_FLOOR = 1e-4


def _check_2d_float(x: torch.Tensor, fn: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{fn}: x must be a 2-D tensor, got {shape}")
    if not x.is_floating_point() or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise TypeError(f"{fn}: x must be bf16, fp16 or fp32, got {x.dtype}")


def _check_gran_k(gran_k: object, fn: str) -> None:
    # gran_k divides and aligns K below: 0 or a negative value would fail there with a bare
    # ZeroDivisionError or a shape error that does not name it.
    if not isinstance(gran_k, int) or isinstance(gran_k, bool):
        raise TypeError(f"{fn}: gran_k must be a positive int (128 for SM90's recipes), got {gran_k!r}")
    if gran_k <= 0:
        raise ValueError(f"{fn}: gran_k must be > 0 (128 for SM90's recipes), got {gran_k}")


def _scale_from_amax(amax: torch.Tensor, use_ue8m0: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    # Divided by a tensor, not by the Python number: on CUDA, torch turns division by a CPU scalar into a
    # multiplication by its float32 reciprocal (aten's div_true_kernel_cuda), which differs from the IEEE
    # quotient in the last bit for about half of all amax values; the CPU divides. A device tensor divisor
    # takes the true division everywhere, so the scales (and the codes) are the same bits on any device,
    # and the same as the Triton kernels' div_rn (dg_moe/layout/_triton_kernels.py).
    # ``out``: where the scales go (any strides), e.g. the MN-major layout the GEMMs read.
    amax = amax.clamp(min=_AMAX_FLOOR)
    divisor = amax.new_full((), FP8_E4M3_MAX)
    if use_ue8m0:
        sf = ceil_to_ue8m0(amax / divisor)
        return sf if out is None else out.copy_(sf)
    return torch.div(amax, divisor, out=out)  # the same division, written where out points


def per_token_cast_to_fp8(
    x: torch.Tensor, use_ue8m0: bool = False, gran_k: int = 128, use_packed_ue8m0: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise activations with one scale per row per ``gran_k`` columns (recipe 1x128).

    x: [M, K] bf16/fp16/fp32 -> (e4m3 [M, K] contiguous, sf float32 [M, ceil(K/gran_k)] row-major),
    or with ``use_packed_ue8m0`` sf as int32 [M, ceil(ceil(K/gran_k)/4)] (four UE8M0 bytes per int).
    """
    _check_2d_float(x, "per_token_cast_to_fp8")
    _check_gran_k(gran_k, "per_token_cast_to_fp8")
    if use_packed_ue8m0 and not use_ue8m0:
        raise ValueError("per_token_cast_to_fp8: use_packed_ue8m0=True needs use_ue8m0=True")
    x_fp8, sf = per_token_cast_to_fp8_unchecked(x, use_ue8m0, gran_k)
    if not use_packed_ue8m0:
        return x_fp8, sf
    m = x.shape[0]
    num_blocks = sf.size(1)
    sf_padded = sf.new_ones((m, align(num_blocks, 4)))
    sf_padded[:, :num_blocks] = sf
    # Powers of two by construction (ceil_to_ue8m0, padded with ones): the packer's value check would only
    # synchronise a GPU caller on every quantisation.
    return x_fp8, pack_ue8m0_to_int_unchecked(sf_padded)


def per_token_cast_to_fp8_unchecked(x: torch.Tensor, use_ue8m0: bool = False, gran_k: int = 128, *,
                                    mn_major_scales: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_token_cast_to_fp8` (float32 scales) on an ``x`` the caller has already validated as a
    2-D bf16/fp16/fp32 tensor (``fused_moe`` and the layout ops do): no check runs.

    ``mn_major_scales``: the scales come in the MN-major, TMA-aligned layout the SM90 GEMMs read (strides
    ``(1, align(M, 4))``, as ``get_mn_major_tma_aligned_tensor``), same values: a GEMM on them then copies
    nothing (fused_moe's shared expert: the conversion was a layout check, an allocation and a copy kernel a call)."""
    m, k = x.shape
    padded_k = align(k, gran_k)
    if padded_k == k and x.is_contiguous():
        # Already whole blocks (every SM90 caller: H and I are multiples of 128): the zero-filled copy would
        # cost an allocation and two device kernels a call for the same values, bit for bit.
        padded = x
    else:
        padded = x.new_zeros((m, padded_k))
        padded[:, :k] = x
    blocks = padded.view(m, padded_k // gran_k, gran_k)
    out = empty_mn_major(1, m, padded_k // gran_k, x, torch.float32)[0] if mn_major_scales else None
    sf = _scale_from_amax(blocks.abs().float().amax(dim=2), use_ue8m0, out)
    x_fp8 = (blocks * (1.0 / sf.unsqueeze(2))).to(torch.float8_e4m3fn)
    return x_fp8.view(m, padded_k)[:, :k].contiguous(), sf


def per_block_cast_to_fp8(
    x: torch.Tensor, use_ue8m0: bool = False, gran_k: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise weights with one scale per ``gran_k x gran_k`` block (recipe 128x128).

    x: [N, K] -> (e4m3 [N, K] contiguous, sf float32 [ceil(N/gran_k), ceil(K/gran_k)] row-major).
    """
    _check_2d_float(x, "per_block_cast_to_fp8")
    _check_gran_k(gran_k, "per_block_cast_to_fp8")
    n, k = x.shape
    padded = x.new_zeros((align(n, gran_k), align(k, gran_k)))
    padded[:n, :k] = x
    blocks = padded.view(padded.size(0) // gran_k, gran_k, padded.size(1) // gran_k, gran_k)
    sf = _scale_from_amax(blocks.abs().float().amax(dim=(1, 3), keepdim=True), use_ue8m0)
    x_fp8 = (blocks * (1.0 / sf)).to(torch.float8_e4m3fn).view_as(padded)[:n, :k].contiguous()
    return x_fp8, sf.view(blocks.size(0), blocks.size(2))


def per_channel_cast_to_fp8(
    x: torch.Tensor, use_ue8m0: bool = False, gran_k: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise with one scale per column per ``gran_k`` rows (recipe 1x1x128, K along rows).

    x: [K, N] with K % gran_k == 0 -> (e4m3 [K, N] contiguous, sf float32 [K/gran_k, N] row-major).
    Used for the weight-gradient GEMMs, whose operands are MN-major (K is the leading dim).
    """
    _check_2d_float(x, "per_channel_cast_to_fp8")
    _check_gran_k(gran_k, "per_channel_cast_to_fp8")
    k, n = x.shape
    if k % gran_k != 0:
        raise ValueError(
            f"per_channel_cast_to_fp8: x.shape[0]={k} must be a multiple of gran_k={gran_k}; "
            "pad the K dimension with zero rows first"
        )
    blocks = x.reshape(k // gran_k, gran_k, n)
    sf = _scale_from_amax(blocks.abs().float().amax(dim=1), use_ue8m0)
    x_fp8 = (blocks * (1.0 / sf.unsqueeze(1))).to(torch.float8_e4m3fn).view(k, n)
    return x_fp8, sf
