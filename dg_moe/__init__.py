"""FP8 GEMM kernels for Hopper MoE serving, with DeepGEMM's API: ``import dg_moe as deep_gemm`` works."""

from .custom_ops import register as _register_custom_ops
from .device import get_num_sms, get_tc_util, set_num_sms, set_tc_util
from .errors import (
    CompileError,
    CudaError,
    DgMoeError,
    KernelNotAvailableError,
    ToolchainNotFoundError,
    UnsupportedArchitectureError,
)
from .kernels import register_all as _register_kernels
from .layout import (
    ceil_to_ue8m0,
    get_mk_alignment_for_contiguous_layout,
    get_mn_major_tma_aligned_packed_ue8m0_tensor,
    get_mn_major_tma_aligned_tensor,
    get_tma_aligned_size,
    pack_ue8m0_to_int,
    per_block_cast_to_fp8,
    per_channel_cast_to_fp8,
    per_token_cast_to_fp8,
    transform_sf_into_required_layout,
    unpack_ue8m0_from_int,
)
from .moe import FusedMoE, fused_moe, fused_moe_bf16
from .ops import (
    bf16_gemm_nn,
    bf16_gemm_nt,
    bf16_gemm_tn,
    bf16_gemm_tt,
    fp8_gemm_nn,
    fp8_gemm_nt,
    fp8_gemm_tn,
    fp8_gemm_tt,
    k_grouped_bf16_gemm_tn_contiguous,
    k_grouped_fp8_gemm_tn_contiguous,
    m_grouped_bf16_gemm_nn_contiguous,
    m_grouped_bf16_gemm_nt_contiguous,
    m_grouped_bf16_gemm_nt_masked,
    m_grouped_fp8_gemm_nn_contiguous,
    m_grouped_fp8_gemm_nt_contiguous,
    m_grouped_fp8_gemm_nt_masked,
)

__version__ = "0.1.0"
_register_kernels()
_register_custom_ops()

__all__ = [
    "CompileError",
    "CudaError",
    "DgMoeError",
    "FusedMoE",
    "KernelNotAvailableError",
    "ToolchainNotFoundError",
    "UnsupportedArchitectureError",
    "bf16_gemm_nn",
    "bf16_gemm_nt",
    "bf16_gemm_tn",
    "bf16_gemm_tt",
    "ceil_to_ue8m0",
    "fp8_gemm_nn",
    "fp8_gemm_nt",
    "fp8_gemm_tn",
    "fp8_gemm_tt",
    "fused_moe",
    "fused_moe_bf16",
    "get_mk_alignment_for_contiguous_layout",
    "get_mn_major_tma_aligned_packed_ue8m0_tensor",
    "get_mn_major_tma_aligned_tensor",
    "get_num_sms",
    "get_tc_util",
    "get_tma_aligned_size",
    "k_grouped_bf16_gemm_tn_contiguous",
    "k_grouped_fp8_gemm_tn_contiguous",
    "m_grouped_bf16_gemm_nn_contiguous",
    "m_grouped_bf16_gemm_nt_contiguous",
    "m_grouped_bf16_gemm_nt_masked",
    "m_grouped_fp8_gemm_nn_contiguous",
    "m_grouped_fp8_gemm_nt_contiguous",
    "m_grouped_fp8_gemm_nt_masked",
    "pack_ue8m0_to_int",
    "per_block_cast_to_fp8",
    "per_channel_cast_to_fp8",
    "per_token_cast_to_fp8",
    "set_num_sms",
    "set_tc_util",
    "transform_sf_into_required_layout",
    "unpack_ue8m0_from_int",
]
