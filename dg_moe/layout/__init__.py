"""Scale-factor formats, FP8 quantisation and MoE buffer layouts."""

from ._kernels import BACKEND_ENV
from ._permute import TokenRows
from .activation import silu_and_mul_to_fp8_contiguous, silu_and_mul_to_fp8_masked
from .deepep import (
    MaskedGemmInput,
    deepep_low_latency_to_masked,
    deepep_normal_reduce,
    deepep_normal_to_contiguous,
)
from .grouped import get_mk_alignment_for_contiguous_layout
from .math import align, ceil_div, ceil_to_ue8m0, pack_ue8m0_to_int, unpack_ue8m0_from_int
from .quant import per_block_cast_to_fp8, per_channel_cast_to_fp8, per_token_cast_to_fp8
from .routing_contiguous import ContiguousLayout, get_contiguous_layout_capacity, route_to_contiguous
from .routing_masked import MaskedLayout, route_to_masked
from .scale_factors import (
    get_mn_major_tma_aligned_packed_ue8m0_tensor,
    get_mn_major_tma_aligned_tensor,
    get_tma_aligned_size,
    transform_sf_into_required_layout,
)
from .unpermute import unpermute_reduce_contiguous, unpermute_reduce_masked

__all__ = [
    "BACKEND_ENV",
    "ContiguousLayout",
    "MaskedGemmInput",
    "MaskedLayout",
    "TokenRows",
    "align",
    "ceil_div",
    "ceil_to_ue8m0",
    "deepep_low_latency_to_masked",
    "deepep_normal_reduce",
    "deepep_normal_to_contiguous",
    "get_contiguous_layout_capacity",
    "get_mk_alignment_for_contiguous_layout",
    "get_mn_major_tma_aligned_packed_ue8m0_tensor",
    "get_mn_major_tma_aligned_tensor",
    "get_tma_aligned_size",
    "pack_ue8m0_to_int",
    "per_block_cast_to_fp8",
    "per_channel_cast_to_fp8",
    "per_token_cast_to_fp8",
    "route_to_contiguous",
    "route_to_masked",
    "silu_and_mul_to_fp8_contiguous",
    "silu_and_mul_to_fp8_masked",
    "transform_sf_into_required_layout",
    "unpack_ue8m0_from_int",
    "unpermute_reduce_contiguous",
    "unpermute_reduce_masked",
]
