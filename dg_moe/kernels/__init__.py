"""Host side of the compiled kernel families, one subpackage each (launcher, heuristic, variants)."""

from . import sm90_fp8_gemm, sm90_fp8_wgrad


def register_all() -> None:
    """Route the public ops' CUDA calls to every kernel family that covers them."""
    sm90_fp8_gemm.register()
    # After the (1, 128, 128) family: it takes over fp8_gemm_nt and routes by recipe, back to that family
    # for (1, 128, 128).
    sm90_fp8_wgrad.register()
