"""Pure-PyTorch reference of every public GEMM op (any device), exact to the numeric contract.

Two kinds of function per op: the writer (same name and arguments as the public op, writes into
``d``; it is what the op runs on CPU tensors) and ``ref_<op>`` returning the float64 result
computed from dequantised inputs (NaN on rows the op does not write), for comparing kernels.
"""

from .common import MK_ALIGNMENT, RECIPE_1D1D, RECIPE_1D2D, default_recipe, round_to_dtype
from .contiguous import (
    group_rows,
    m_grouped_bf16_gemm_nn_contiguous,
    m_grouped_bf16_gemm_nt_contiguous,
    m_grouped_fp8_gemm_nn_contiguous,
    m_grouped_fp8_gemm_nt_contiguous,
    ref_m_grouped_bf16_gemm_nn_contiguous,
    ref_m_grouped_bf16_gemm_nt_contiguous,
    ref_m_grouped_fp8_gemm_nn_contiguous,
    ref_m_grouped_fp8_gemm_nt_contiguous,
)
from .dense import (
    bf16_gemm_nn,
    bf16_gemm_nt,
    bf16_gemm_tn,
    bf16_gemm_tt,
    fp8_gemm_nn,
    fp8_gemm_nt,
    fp8_gemm_tn,
    fp8_gemm_tt,
    ref_bf16_gemm_nn,
    ref_bf16_gemm_nt,
    ref_bf16_gemm_tn,
    ref_bf16_gemm_tt,
    ref_fp8_gemm_nn,
    ref_fp8_gemm_nt,
    ref_fp8_gemm_tn,
    ref_fp8_gemm_tt,
)
from .dequant import dequantize, expand_sf, unpack_sf
from .k_grouped import (
    k_grouped_bf16_gemm_tn_contiguous,
    k_grouped_fp8_gemm_tn_contiguous,
    ref_k_grouped_bf16_gemm_tn_contiguous,
    ref_k_grouped_fp8_gemm_tn_contiguous,
)
from .masked import (
    m_grouped_bf16_gemm_nt_masked,
    m_grouped_fp8_gemm_nt_masked,
    ref_m_grouped_bf16_gemm_nt_masked,
    ref_m_grouped_fp8_gemm_nt_masked,
    valid_rows,
)
from .metrics import calc_diff
from .quantize import pack_sf_ue8m0, quantize_blockwise

__all__ = [
    "MK_ALIGNMENT",
    "RECIPE_1D1D",
    "RECIPE_1D2D",
    "bf16_gemm_nn",
    "bf16_gemm_nt",
    "bf16_gemm_tn",
    "bf16_gemm_tt",
    "calc_diff",
    "default_recipe",
    "dequantize",
    "expand_sf",
    "fp8_gemm_nn",
    "fp8_gemm_nt",
    "fp8_gemm_tn",
    "fp8_gemm_tt",
    "group_rows",
    "k_grouped_bf16_gemm_tn_contiguous",
    "k_grouped_fp8_gemm_tn_contiguous",
    "m_grouped_bf16_gemm_nn_contiguous",
    "m_grouped_bf16_gemm_nt_contiguous",
    "m_grouped_bf16_gemm_nt_masked",
    "m_grouped_fp8_gemm_nn_contiguous",
    "m_grouped_fp8_gemm_nt_contiguous",
    "m_grouped_fp8_gemm_nt_masked",
    "pack_sf_ue8m0",
    "quantize_blockwise",
    "ref_bf16_gemm_nn",
    "ref_bf16_gemm_nt",
    "ref_bf16_gemm_tn",
    "ref_bf16_gemm_tt",
    "ref_fp8_gemm_nn",
    "ref_fp8_gemm_nt",
    "ref_fp8_gemm_tn",
    "ref_fp8_gemm_tt",
    "ref_k_grouped_bf16_gemm_tn_contiguous",
    "ref_k_grouped_fp8_gemm_tn_contiguous",
    "ref_m_grouped_bf16_gemm_nn_contiguous",
    "ref_m_grouped_bf16_gemm_nt_contiguous",
    "ref_m_grouped_fp8_gemm_nn_contiguous",
    "ref_m_grouped_fp8_gemm_nt_contiguous",
    "ref_m_grouped_bf16_gemm_nt_masked",
    "ref_m_grouped_fp8_gemm_nt_masked",
    "round_to_dtype",
    "unpack_sf",
    "valid_rows",
]
