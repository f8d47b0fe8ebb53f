"""A/B of tile configurations of the masked (decode) FP8 GEMM at MoE decode shapes (GPU only).

    python3 tools/ab_masked.py [--tile BMxBN ...]

Each case is E experts of which ``active`` hold ``rows`` tokens each (the rest none), as a decode step
routes T tokens top-k; every variant is compiled first, in parallel, then all are timed in one
interleaved run (GPU time, L2 flushed) with the same inputs, the heuristic's choice marked *. GB/s counts
the active experts' weights and scales, the valid A rows and the D rows written. Every variant's valid
output rows must equal the heuristic's bit for bit (the K order and promotion do not depend on the tile).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from dg_moe import layout
from dg_moe.bench.timing import gpu_times_us
from dg_moe.jit import build, compile_many
from dg_moe.kernels.sm90_fp8_gemm import FAMILY, GemmType, config_for, template_args
from dg_moe.kernels.sm90_fp8_gemm.heuristic import max_stages
from dg_moe.kernels.sm90_fp8_gemm.launcher import _ARGTYPES, _ENTRY
from dg_moe.layout.scale_factors import get_tma_aligned_size

# name, experts, active experts, rows per active expert, N, K (DeepSeek-V3 gate_up and down)
CASES = [
    ("ds T=1 w13", 256, 8, 1, 4096, 7168), ("ds T=1 w2", 256, 8, 1, 7168, 2048),
    ("ds T=32 w13", 256, 166, 2, 4096, 7168), ("ds T=32 w2", 256, 166, 2, 7168, 2048),
    ("ds T=128 w13", 256, 252, 4, 4096, 7168), ("ds T=128 w2", 256, 252, 4, 7168, 2048),
]
TILES = [(64, 64), (64, 128), (128, 64), (128, 128), (128, 32)]


def _parse_tile(text: str) -> tuple[int, int]:
    block_m, block_n = (int(x) for x in text.lower().split("x"))
    return block_m, block_n


def _inputs(experts: int, active: int, rows: int, n: int, k: int):
    max_m = max(rows, 1)
    x = torch.randn(experts * max_m, k, device="cuda", dtype=torch.bfloat16)
    a, sfa = layout.per_token_cast_to_fp8(x)
    a = a.view(experts, max_m, k)
    sfa = layout.get_mn_major_tma_aligned_tensor(sfa.view(experts, max_m, k // 128))
    b = torch.empty(experts, n, k, dtype=torch.float8_e4m3fn, device="cuda")
    sfb = torch.empty(experts, n // 128, k // 128, device="cuda")
    for e in range(experts):
        b[e], sfb[e] = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    masked_m = torch.zeros(experts, dtype=torch.int32, device="cuda")
    masked_m[torch.randperm(experts, device="cuda")[:active]] = rows
    return a, sfa, b, sfb, masked_m


def _launch(entry, call_args: tuple) -> None:
    # The stream is read per call: under graph capture it is the capturing stream, not the default one
    # (a handle taken earlier launched outside the graph and timed nothing). Errors raise (errcheck).
    entry(*call_args, torch.cuda.current_stream().cuda_stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", action="append", type=_parse_tile, help="BMxBN, repeatable")
    args = parser.parse_args()
    tiles = args.tile or TILES
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    plans = []
    for name, experts, active, rows, n, k in CASES:
        chosen = config_for(GemmType.MASKED, rows, n, k, experts, num_sms)
        configs = [chosen] + [dataclasses.replace(chosen, block_m=bm, block_n=bn, multicast=1,
                                                  num_stages=max_stages(bm, bn, k))
                              for bm, bn in tiles if (bm, bn) != (chosen.block_m, chosen.block_n)]
        plans.append((name, experts, active, rows, n, k, configs))
    variants = {tuple(template_args(GemmType.MASKED, c, n, k).items()) for *_, n, k, cs in plans for c in cs}
    compile_many(FAMILY, [dict(v) for v in variants], jobs=16)

    print(f"{'case':<14} {'tile':>9} {'stages':>6} {'us':>8} {'GB/s':>6}")
    for name, experts, active, rows, n, k, configs in plans:
        a, sfa, b, sfb, masked_m = _inputs(experts, active, rows, n, k)
        max_m = a.shape[1]
        outs, fns = [], []
        for config in configs:
            entry = build(FAMILY, template_args(GemmType.MASKED, config, n, k)).function(_ENTRY, _ARGTYPES)
            d = torch.full((experts, max_m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
            call_args = (a.data_ptr(), sfa.data_ptr(), b.data_ptr(), sfb.data_ptr(), d.data_ptr(),
                         masked_m.data_ptr(), max_m, experts, get_tma_aligned_size(max_m, 4), num_sms)
            fns.append(lambda entry=entry, call_args=call_args: _launch(entry, call_args))
            outs.append(d)
        times = gpu_times_us(fns)
        valid = torch.arange(max_m, device="cuda")[None, :] < masked_m[:, None]
        moved = active * (n * k + 4 * (n // 128) * (k // 128)) + active * rows * (k + 2 * n)
        for i, (config, us) in enumerate(zip(configs, times, strict=True)):
            same = torch.equal(outs[i][valid].view(torch.int16), outs[0][valid].view(torch.int16))
            mark = "*" if i == 0 else " "
            gbps = f"{moved / us / 1e3:6.0f}" if isinstance(us, float) and us > 0 else "     -"
            shown = f"{us:8.1f}" if isinstance(us, float) else str(us)[:30]
            print(f"{name:<14} {mark}{config.block_m:>3}x{config.block_n:<4} {config.num_stages:>6} {shown:>8} "
                  f"{gbps}{'' if same else '  OUTPUT DIFFERS'}", flush=True)


if __name__ == "__main__":
    main()
