"""Host side of the compiled kernel families, one subpackage each (launcher, heuristic, variants)."""

from . import sm90_bf16_gemm, sm90_fp8_gemm, sm90_fp8_wgrad


def register_all() -> None:
    """Route the public ops' CUDA calls to every kernel family that covers them."""
    # In any order: each family registers only the ops and recipes it serves (dg_moe.ops.dispatch).
    sm90_fp8_gemm.register()
    sm90_bf16_gemm.register()
    sm90_fp8_wgrad.register()
