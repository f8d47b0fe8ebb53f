"""Per-kernel GPU time of one fused MoE layer call (GPU only): where a decode or prefill step goes.

    python3 tools/profile_moe.py deepseek-v3 1,32,128 [masked|contiguous|auto]

Random FP8 experts and softmax top-k routing; each profiled call is preceded by a 256 MB memset that
flushes L2 (its kernel, named by profiling one flush alone, is left out of the table). Prints, per
batch size, every kernel's mean time per call and the sum, against the touched experts' weight-read
floor at the datasheet bandwidth.
"""

from __future__ import annotations

import collections
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from dg_moe.bench.moe import hbm_bandwidth
from dg_moe.moe import fused_moe
from dg_moe.moe.shapes import MODEL_SHAPES

CALLS = 5


def fp8_experts(experts: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Clamped to e4m3's range: a value past 448 would convert to NaN, not saturate.
    w = (torch.randn(experts, rows, cols, device="cuda") * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    sf = torch.rand(experts, rows // 128, cols // 128, device="cuda") / (100 * cols**0.5) + 1e-4
    return w, sf


def _kernel_times(prof: profile) -> list[tuple[str, float]]:
    return [(e.name, e.device_time_total) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0]


def main(model: str, batches: str, mode: str = "auto") -> None:
    shape = MODEL_SHAPES[model]
    w13, w13_sf = fp8_experts(shape.experts, 2 * shape.intermediate, shape.hidden)
    w2, w2_sf = fp8_experts(shape.experts, shape.hidden, shape.intermediate)
    expert_bytes = w13[0].numel() + w2[0].numel() + 4 * (w13_sf[0].numel() + w2_sf[0].numel())
    hbm = hbm_bandwidth(torch.cuda.get_device_name()) or float("nan")
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        flush.zero_()
        torch.cuda.synchronize()
    flush_names = {name for name, _ in _kernel_times(prof)}
    for tokens in (int(t) for t in batches.split(",")):
        hidden = torch.randn(tokens, shape.hidden, device="cuda").to(torch.bfloat16)
        weights, ids = torch.rand(tokens, shape.experts, device="cuda").softmax(-1).topk(shape.top_k, dim=-1)
        ids = ids.int()

        def call() -> torch.Tensor:
            return fused_moe(hidden, w13, w13_sf, w2, w2_sf, ids, weights, mode=mode)

        for _ in range(3):
            call()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(CALLS):
                flush.zero_()
                call()
            torch.cuda.synchronize()
        per_kernel: dict[str, float] = collections.defaultdict(float)
        counts: dict[str, int] = collections.defaultdict(int)
        for name, us in _kernel_times(prof):
            if name not in flush_names:
                per_kernel[name] += us / CALLS
                counts[name] += 1
        touched = int(torch.unique(ids).numel())
        floor_us = touched * expert_bytes / hbm * 1e6
        total = sum(per_kernel.values())
        print(f"\n{model} T={tokens} mode={mode}: {total:.1f} us of kernels per call, floor {floor_us:.1f} us "
              f"({touched} experts), x floor {total / floor_us:.2f}")
        for name, us in sorted(per_kernel.items(), key=lambda kv: -kv[1]):
            print(f"  {us:9.1f} us  x{counts[name] // CALLS:<3} {name[:110]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
