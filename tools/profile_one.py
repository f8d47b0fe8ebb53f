"""Run one dg_moe FP8 GEMM a few times so a profiler can capture it (GPU only).

    ncu --clock-control none -k regex:fp8_gemm_kernel -c 1 --section SpeedOfLight \\
        --section WarpStateStats python3 tools/profile_one.py 4096 4096 7168 [BLOCK_M BLOCK_N MULTICAST]

The optional tile and cluster override the heuristic's choice.
"""

from __future__ import annotations

import sys

import torch

import dg_moe
from dg_moe import layout


def main(m: int, n: int, k: int, *forced: int) -> None:
    if forced:
        import dataclasses

        from dg_moe.kernels.sm90_fp8_gemm import launcher as kernels
        from dg_moe.kernels.sm90_fp8_gemm.heuristic import max_stages

        chosen = kernels.config_for
        block_m, block_n, multicast = forced
        kernels.config_for = lambda *args: dataclasses.replace(
            chosen(*args), block_m=block_m, block_n=block_n, multicast=multicast,
            num_stages=max_stages(block_m, block_n, k))
    a = layout.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    a = (a[0], layout.get_mn_major_tma_aligned_tensor(a[1]))
    b = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    d = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        dg_moe.fp8_gemm_nt(a, b, d)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:]))
