"""The numbers the weight-gradient GEMM's host side derives from a variant, in Python for the NVRTC launcher.

The nvcc-built host entry (dg_moe/csrc/launch/sm90_fp8_wgrad.cu) reads them from the kernel's C++; a
cubin launch has no C++ host, so they are computed here. Every compile receives them as template
arguments (:func:`template_args`), which the launch file static_asserts against the C++ under both
backends: a number here that drifts from the kernel fails the compile.
"""

from __future__ import annotations

from .heuristic import WgradConfig, smem_bytes

BLOCK_THREADS = 384
"""kBlockThreads: two math warpgroups and the producer warpgroup."""
PARAMS_BYTES = 48
"""sizeof(Params): two pointers, one uint64 and six uint32 (cubin_entry.Params mirrors it)."""


def template_args(config: WgradConfig) -> dict[str, int]:
    """The host constants of a variant as template arguments, each static_asserted by the launch file."""
    return {
        "SMEM_BYTES": smem_bytes(config.block_m, config.block_n, config.num_stages, config.bf16),
        "BLOCK_THREADS": BLOCK_THREADS,
        "PARAMS_BYTES": PARAMS_BYTES,
    }
