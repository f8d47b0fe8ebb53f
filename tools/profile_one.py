"""Run one dg_moe FP8 GEMM a few times so a profiler can capture it (GPU only).

    ncu --clock-control none -k regex:fp8_gemm_kernel -c 1 --section SpeedOfLight \\
        --section WarpStateStats python3 tools/profile_one.py 4096 4096 7168
"""

from __future__ import annotations

import sys

import torch

import dg_moe
from dg_moe import layout


def main(m: int, n: int, k: int) -> None:
    a = layout.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    a = (a[0], layout.get_mn_major_tma_aligned_tensor(a[1]))
    b = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    d = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        dg_moe.fp8_gemm_nt(a, b, d)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:4]))
