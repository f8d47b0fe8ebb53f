"""Integer helpers and the UE8M0 (power-of-two, exponent-only) scale encoding."""

from __future__ import annotations

import torch


def ceil_div(x: int, y: int) -> int:
    """Smallest integer >= x / y for non-negative x and positive y."""
    return (x + y - 1) // y


def align(x: int, y: int) -> int:
    """Smallest multiple of y that is >= x."""
    return ceil_div(x, y) * y


def ceil_to_ue8m0(x: torch.Tensor) -> torch.Tensor:
    """Round each |x| up to a power of two representable in UE8M0 (exponent 1..254), as float32."""
    bits = x.abs().float().view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) + (bits & 0x7FFFFF).ne(0).int()
    return (exponent.clamp(1, 254) << 23).view(torch.float32)


def pack_ue8m0_to_int(x: torch.Tensor) -> torch.Tensor:
    """Pack float32 powers of two four per int32 along the last dim (byte i holds element 4j+i).

    x: float32 [..., k] with k % 4 == 0 and every value an exact power of two -> int32 [..., k // 4].
    The powers-of-two check reads the values, so on a GPU it synchronises with the host.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"pack_ue8m0_to_int: x must be float32, got {x.dtype}")
    if x.dim() == 0 or x.size(-1) % 4 != 0:
        raise ValueError(
            f"pack_ue8m0_to_int: the last dim of x must be a multiple of 4, got shape {tuple(x.shape)}; "
            "pad it with ones first"
        )
    bits = x.contiguous().view(torch.int32)
    if bool(((bits & 0x807FFFFF) != 0).any()):
        raise ValueError(
            "pack_ue8m0_to_int: x must hold positive powers of two only; round with ceil_to_ue8m0 first"
        )
    return _pack_exponents(bits)


def pack_ue8m0_to_int_unchecked(x: torch.Tensor) -> torch.Tensor:
    """:func:`pack_ue8m0_to_int` on an ``x`` that holds powers of two by construction (``ceil_to_ue8m0``'s
    output padded with ones, as the quantisers make it): no value is read, so no host synchronisation."""
    return _pack_exponents(x.contiguous().view(torch.int32))


def _pack_exponents(bits: torch.Tensor) -> torch.Tensor:
    # The exponent byte of each float32's bits, four of them per int32.
    return (bits >> 23).to(torch.uint8).view(torch.int32)


def unpack_ue8m0_from_int(packed: torch.Tensor) -> torch.Tensor:
    """Expand int32 [..., k4] of packed UE8M0 bytes to float32 [..., 4 * k4], exactly."""
    if packed.dtype != torch.int32:
        raise TypeError(f"unpack_ue8m0_from_int: packed must be int32, got {packed.dtype}")
    # Shifts, not a uint8 view: a view needs a unit last stride, which MN-major tensors lack. Made on the
    # device (arange), not from a host list: the kernels expand packed scales on every launch, and a host
    # list's copy synchronises the stream, which also breaks CUDA-graph capture of the masked GEMM.
    shifts = torch.arange(0, 32, 8, dtype=torch.int32, device=packed.device)
    exponents = (packed.unsqueeze(-1) >> shifts) & 0xFF
    return (exponents.flatten(-2) << 23).view(torch.float32)
