"""Numbers the SM90 BF16 GEMM's host side shares with its kernel, read from the kernel's header
``dg_moe/csrc/kernels/sm90_bf16_gemm_constants.cuh`` so that each is written once. The problem layouts
are the shared scheduler's, :class:`~dg_moe.kernels.sm90_fp8_gemm.constants.GemmType`; what a variant's
epilogue writes is an :class:`Epilogue`."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Epilogue:
    """What a variant's epilogue writes (the kernel's template arguments OutT and kAccumulate): D in
    float32 (``d_float``) or bfloat16, and with ``accumulate`` D = C + A @ B^T, C of D's dtype and shape
    (Normal GEMMs only)."""

    d_float: bool = False
    accumulate: bool = False

    @property
    def d_bytes(self) -> int:
        """Bytes of one D (and C) element."""
        return 4 if self.d_float else 2

    @property
    def d_type(self) -> str:
        """D's C++ element type, the template argument D_TYPE."""
        return "float" if self.d_float else "__nv_bfloat16"


BF16_D = Epilogue()
"""The first epilogue the family had: a bfloat16 D and no C."""


@dataclass(frozen=True)
class Majors:
    """Which operands a variant reads MN-major (template arguments MN_MAJOR_A and MN_MAJOR_B): A stored
    ``[K, M]`` (``bf16_gemm_tn``/``tt``), B stored ``[K, N]`` or ``[G, K, N]`` (``bf16_gemm_nn``/``tn``,
    ``m_grouped_bf16_gemm_nn_contiguous``); the others K-major (``[M, K]``, ``[N, K]``, ``[G, N, K]``).
    wgmma transposes 16-bit operands in hardware, so either major runs the same kernel at the same rate."""

    a_mn: bool = False
    b_mn: bool = False


K_MAJOR = Majors()
"""Both operands K-major: the ``nt`` ops on row-major operands."""

__all__ = [
    "ACCUM_REGISTER_BUDGET", "BF16_D", "BLOCK_K", "K_MAJOR", "SMEM_BYTES_PER_BLOCK", "Epilogue", "GemmType", "Majors",
]
