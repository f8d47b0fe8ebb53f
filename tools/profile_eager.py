"""Where the host time of one eager dg_moe FP8 GEMM call goes (GPU only): wall time per call with
row-major and with MN-major SFA, the same call's pieces timed alone, then a cProfile of the
MN-major case.
    python tools/profile_eager.py [M N K]
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections.abc import Callable

import torch

import dg_moe
from dg_moe import device as _device
from dg_moe import layout
from dg_moe.bench.timing import eager_us
from dg_moe.kernels.sm90_fp8_gemm import launcher as sm90
from dg_moe.layout.scale_factors import get_tma_aligned_size, sf_in_kernel_layout
from dg_moe.ops import _memo


def _host_us(fn: Callable[[], object], calls: int = 2000) -> float:
    """Wall time per call on the host (GPU work, if any, only queued)."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) * 1e6 / calls


def main(m: int = 128, n: int = 2112, k: int = 7168) -> None:
    x, sfa = layout.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    sfa_mn = layout.get_mn_major_tma_aligned_tensor(sfa)
    b = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    d = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    row_major = eager_us(lambda: dg_moe.fp8_gemm_nt((x, sfa), b, d))
    mn_major = eager_us(lambda: dg_moe.fp8_gemm_nt((x, sfa_mn), b, d))
    print(f"eager us/call: row-major SFA {row_major:.1f}, MN-major SFA {mn_major:.1f}")

    num_sms = _device.get_num_sms()
    entry = sm90._entry(sm90.GemmType.NORMAL, m, n, k, 1, num_sms)
    stream = torch.cuda.current_stream().cuda_stream
    args = (x.data_ptr(), sfa_mn.data_ptr(), b[0].data_ptr(), b[1].data_ptr(), d.data_ptr(), None,
            m, 1, get_tma_aligned_size(m, 4), num_sms, stream)
    pieces = {
        "signature (_memo.key)": lambda: _memo.key("fp8_gemm_nt", lambda: (x, sfa_mn, b[0], b[1], d, None),
                                                   (False, None, "nk", True, False, False)),
        "sfa + sfb layout": lambda: (sf_in_kernel_layout(sfa_mn, True, k // 128),
                                     sf_in_kernel_layout(b[1], False, k // 128)),
        "current stream handle": lambda: torch.cuda.current_stream(d.device).cuda_stream,
        "SM count": _device.get_num_sms,
    }
    for name, fn in pieces.items():
        print(f"  {name:<28} {_host_us(fn):6.2f} us")
    # Launching pieces: 200 calls queue far fewer kernels than the launch queue holds, so the wall time
    # is the host's, not the GPU's.
    launch = sm90._launch
    launching = {
        "host entry alone (ctypes)": lambda: entry(*args),
        "_launch": lambda: launch(sm90.GemmType.NORMAL, (x, sfa_mn), b, d, None, m),
        "dg_moe.fp8_gemm_nt": lambda: dg_moe.fp8_gemm_nt((x, sfa_mn), b, d),
        "baseline: torch d.zero_()": d.zero_,
    }
    for name, fn in launching.items():
        torch.cuda.synchronize()
        print(f"  {name:<28} {_host_us(fn, calls=200):6.2f} us")
    torch.cuda.synchronize()

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        dg_moe.fp8_gemm_nt((x, sfa_mn), b, d)
    profile.disable()
    torch.cuda.synchronize()
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:4]))
