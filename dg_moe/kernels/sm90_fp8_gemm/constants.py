"""Numbers the SM90 FP8 GEMM's host side shares with its kernel, read from the kernel's header
``dg_moe/csrc/kernels/sm90_fp8_gemm_constants.cuh`` so that each is written once."""

from __future__ import annotations

import enum
import re
from pathlib import Path

from ...jit.source import CSRC_DIR

HEADER = CSRC_DIR / "kernels" / "sm90_fp8_gemm_constants.cuh"
_CONSTANT = re.compile(r"^constexpr uint32_t (k[A-Za-z0-9]+) = (\d+);$", re.MULTILINE)


def read_constants(path: Path = HEADER) -> dict[str, int]:
    """Every ``constexpr uint32_t kName = value;`` line of the header, by name."""
    return {name: int(value) for name, value in _CONSTANT.findall(path.read_text())}


def _require(constants: dict[str, int], name: str) -> int:
    if name not in constants:
        raise RuntimeError(f"{HEADER} lost the line `constexpr uint32_t {name} = ...;` that dg_moe reads")
    return constants[name]


_constants = read_constants()
BLOCK_K = _require(_constants, "kBlockK")
ACCUM_REGISTER_BUDGET = _require(_constants, "kAccumRegisterBudget")
SMEM_BYTES_PER_BLOCK = _require(_constants, "kMaxSharedBytes")


class GemmType(enum.Enum):
    """The kernel's problem layouts; each value names its ``dg_moe::sched::GemmType`` enumerator, which
    the compile receives by name (a misspelt one fails to compile)."""

    NORMAL = "Normal"  # one [M, K] x [N, K] problem
    CONTIGUOUS = "MGroupedContiguous"  # per-row group ids, -1 on padding rows
    CONTIGUOUS_PSUM = "MGroupedContiguousPsum"  # per-group row ends (prefix sums)
    MASKED = "MGroupedMasked"  # [G, max_m, K] with per-group valid rows

    @property
    def cpp(self) -> str:
        """The C++ enumerator, fully qualified."""
        return f"dg_moe::sched::GemmType::{self.value}"
