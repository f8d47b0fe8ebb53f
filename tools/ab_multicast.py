"""A/B of SM90 FP8 GEMM variants in one process (GPU only): the heuristic's tile and a 128x192 tile,
each with and without A multicast. Prints each variant's co-resident clusters and GPU time.
    python tools/ab_multicast.py
"""

from __future__ import annotations

import ctypes
import dataclasses

import torch

from dg_moe import layout
from dg_moe.bench.timing import gpu_time_us
from dg_moe.jit import build
from dg_moe.jit.heuristics import choose_config
from dg_moe.ops.sm90_fp8_gemm import _ARGTYPES, _ENTRY, FAMILY, GemmType, template_args

SHAPES = [(128, 2112, 7168), (128, 7168, 16384), (4096, 4096, 7168), (4096, 7168, 2048)]


def main() -> None:
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{'M':>5} {'N':>6} {'K':>6} {'BM':>4} {'BN':>4} {'mc':>3} {'clusters':>8} {'us':>8} {'TFLOPS':>7}")
    for m, n, k in SHAPES:
        a = layout.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        sfa = layout.get_mn_major_tma_aligned_tensor(a[1])
        b_data, sfb = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
        d = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        base = choose_config(m, n, k, 1, num_sms)
        tiles = {(base.block_m, base.block_n, base.num_stages), (128, 192, 4)}
        for (block_m, block_n, stages), multicast in [(t, mc) for t in sorted(tiles) for mc in (1, 2)]:
            config = dataclasses.replace(base, block_m=block_m, block_n=block_n, num_stages=stages,
                                         multicast=multicast)
            library = build(FAMILY, template_args(GemmType.NORMAL, config, n, k))
            entry = library.function(_ENTRY, _ARGTYPES)
            clusters = ctypes.CDLL(str(library.path)).dg_moe_sm90_fp8_gemm_max_active_clusters
            clusters.restype = ctypes.c_int
            resident = clusters()

            def run(entry=entry):
                entry(a[0].data_ptr(), sfa.data_ptr(), b_data.data_ptr(), sfb.data_ptr(), d.data_ptr(), None,
                      m, 1, layout.get_tma_aligned_size(m, 4), num_sms, torch.cuda.current_stream().cuda_stream)

            us = gpu_time_us(run)
            print(f"{m:>5} {n:>6} {k:>6} {config.block_m:>4} {config.block_n:>4} {multicast:>3} {resident:>8} "
                  f"{us:8.1f} {2 * m * n * k / us / 1e6:7.0f}")


if __name__ == "__main__":
    main()
