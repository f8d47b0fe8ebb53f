"""Where the host time of one eager dg_moe FP8 GEMM call goes (GPU only): wall time per call with
row-major and with MN-major SFA, then a cProfile of the MN-major case.
    python tools/profile_eager.py [M N K]
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import torch

import dg_moe
from dg_moe import layout
from dg_moe.bench.timing import eager_us


def main(m: int = 128, n: int = 2112, k: int = 7168) -> None:
    x, sfa = layout.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    sfa_mn = layout.get_mn_major_tma_aligned_tensor(sfa)
    b = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    d = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    row_major = eager_us(lambda: dg_moe.fp8_gemm_nt((x, sfa), b, d))
    mn_major = eager_us(lambda: dg_moe.fp8_gemm_nt((x, sfa_mn), b, d))
    print(f"eager us/call: row-major SFA {row_major:.1f}, MN-major SFA {mn_major:.1f}")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        dg_moe.fp8_gemm_nt((x, sfa_mn), b, d)
    profile.disable()
    torch.cuda.synchronize()
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:4]))
