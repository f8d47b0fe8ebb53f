"""Numbers the SM90 BF16 GEMM's host side shares with its kernel, read from the kernel's header
``dg_moe/csrc/kernels/sm90_bf16_gemm_constants.cuh`` so that each is written once. The problem layouts
are the shared scheduler's, :class:`~dg_moe.kernels.sm90_fp8_gemm.constants.GemmType`."""

from __future__ import annotations

from ...jit.source import CSRC_DIR
from ..sm90_fp8_gemm.constants import GemmType, read_constants

HEADER = CSRC_DIR / "kernels" / "sm90_bf16_gemm_constants.cuh"


def _require(constants: dict[str, int], name: str) -> int:
    if name not in constants:
        raise RuntimeError(f"{HEADER} lost the line `constexpr uint32_t {name} = ...;` that dg_moe reads")
    return constants[name]


_constants = read_constants(HEADER)
BLOCK_K = _require(_constants, "kBlockK")
ACCUM_REGISTER_BUDGET = _require(_constants, "kAccumRegisterBudget")
SMEM_BYTES_PER_BLOCK = _require(_constants, "kMaxSharedBytes")

__all__ = ["ACCUM_REGISTER_BUDGET", "BLOCK_K", "SMEM_BYTES_PER_BLOCK", "GemmType"]
