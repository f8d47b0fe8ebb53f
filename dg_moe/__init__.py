"""FP8 GEMM kernels for Hopper MoE serving; public API re-exports only."""
