"""`dg-moe bench gemm`: dg_moe's FP8 GEMMs beside cuBLAS and torch peers, in one process.

Dense: dg_moe vs cuBLASLt blockwise FP8 (same recipe, through torch's scaled_mm) vs cuBLAS BF16.
Masked: dg_moe vs torch.bmm in BF16 over all rows (a stand-in for a masked BF16 grouped GEMM).
Contiguous: dg_moe vs torch._grouped_mm in BF16. GPU time per docs/performance.md; peers that fail
to run print their error instead of a number.
"""

from __future__ import annotations

import json
import os
import statistics

import torch
import torch.nn.functional as F

import dg_moe
from dg_moe import layout

from .timing import eager_us, gpu_times_us

DENSE_SHAPES = [(m, n, k) for m in (128, 4096) for n, k in
                [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]]
MASKED_CASES = [(1, 1024, 4096, 7168), (4, 256, 4096, 7168), (8, 64, 4096, 7168), (8, 64, 7168, 2048),
                (16, 32, 4096, 7168), (16, 128, 4096, 7168), (32, 16, 4096, 7168), (32, 16, 7168, 2048)]
CONTIGUOUS_CASES = [(4, 8192, 4096, 7168), (4, 8192, 7168, 2048), (8, 4096, 4096, 7168), (8, 4096, 7168, 2048),
                    (32, 256, 4096, 7168), (32, 256, 7168, 2048)]


def fp8_dense_inputs(m: int, n: int, k: int):
    """Random FP8 operands, recipe (1, 128, 128): a = (e4m3 [M, K], f32 row-major sfa [M, K/128]),
    b = (e4m3 [N, K], f32 sfb [ceil(N/128), K/128])."""
    a = layout.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
    b = layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    return a, b


def cublas_blockwise(a, b, k: int):
    """A no-argument call of F.scaled_mm with cuBLASLt's blockwise recipe on the operands of
    ``fp8_dense_inputs``; scale layouts prepared here, once, as docs/performance.md (Peers) gives them."""
    kb = k // 128
    l4 = layout.align(kb, 4)
    sfa = a[1].t().contiguous().t()
    sfb_padded = torch.ones(b[1].shape[0], l4, device="cuda")
    sfb_padded[:, :kb] = b[1]
    sfb_t = sfb_padded.t()
    return lambda: F.scaled_mm(a[0], b[0].T, sfa, F.ScalingType.BlockWise1x128, sfb_t,
                               F.ScalingType.BlockWise128x128, output_dtype=torch.bfloat16, use_fast_accum=False)


def _time_with_peers(ours, *peers) -> tuple[float, ...]:
    """GPU times of ours and its peers, replays interleaved; ours must run, a peer that cannot
    reports why instead of a number."""
    ours()  # raises, with its traceback, if our kernel fails
    times = gpu_times_us([ours, *peers])
    if isinstance(times[0], str):
        raise RuntimeError(times[0])
    return tuple(times)


def _fmt(value: float | str, scale: float) -> str:
    return f"{scale / value:8.0f}" if isinstance(value, float) and value > 0 else f"{value}"


def bench_dense() -> list[dict]:
    rows = []
    for m, n, k in DENSE_SHAPES:
        a, b = fp8_dense_inputs(m, n, k)
        # Scale factors in the layout the kernel reads, as every peer gets its own (docs/performance.md).
        a_mn_major = (a[0], layout.get_mn_major_tma_aligned_tensor(a[1]))
        d = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        a_bf16 = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b_bf16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        ours, blockwise, bf16 = _time_with_peers(lambda a=a_mn_major, b=b, d=d: dg_moe.fp8_gemm_nt(a, b, d),
                                                 cublas_blockwise(a, b, k), lambda x=a_bf16, y=b_bf16: x @ y.T)
        row = {"m": m, "n": n, "k": k, "dg_moe_us": ours, "cublas_blockwise_us": blockwise, "cublas_bf16_us": bf16}
        if (m, n, k) == (128, 2112, 7168):
            row["dg_moe_eager_us"] = eager_us(lambda a=a_mn_major, b=b, d=d: dg_moe.fp8_gemm_nt(a, b, d))
            row["dg_moe_eager_row_major_sfa_us"] = eager_us(lambda a=a, b=b, d=d: dg_moe.fp8_gemm_nt(a, b, d))
        rows.append(row)
    return rows


def _masked_counts(groups: int, expected: int, max_m: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(groups * 1000 + expected)
    scale = torch.rand(groups, generator=gen) * 0.6 + 0.7
    return (scale * expected).round().clamp(0, max_m).to(torch.int32).cuda()


def bench_masked() -> list[dict]:
    rows = []
    for groups, expected, n, k in MASKED_CASES:
        max_m = layout.align(int(expected * 1.3) + 1, 64)
        x = torch.randn(groups * max_m, k, device="cuda", dtype=torch.bfloat16)
        a_data, sfa = layout.per_token_cast_to_fp8(x)
        a = (a_data.view(groups, max_m, k), layout.get_mn_major_tma_aligned_tensor(sfa.view(groups, max_m, -1)))
        w = [layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
             for _ in range(groups)]
        b = (torch.stack([p[0] for p in w]), torch.stack([p[1] for p in w]))
        masked_m = _masked_counts(groups, expected, max_m)
        d = torch.empty(groups, max_m, n, device="cuda", dtype=torch.bfloat16)
        valid = int(masked_m.sum())
        bytes_moved = groups * n * k + valid * k + valid * n * 2 + groups * (n // 128) * (k // 128) * 4
        a_bf16 = torch.randn(groups, max_m, k, device="cuda", dtype=torch.bfloat16)
        b_bf16 = torch.randn(groups, k, n, device="cuda", dtype=torch.bfloat16)
        ours, bmm = _time_with_peers(lambda: dg_moe.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected),
                                     lambda: torch.bmm(a_bf16, b_bf16))
        rows.append({
            "groups": groups, "expected_m": expected, "n": n, "k": k, "dg_moe_us": ours,
            "dg_moe_gbps": bytes_moved / ours / 1e3, "bmm_bf16_us": bmm,
        })
    return rows


def bench_contiguous() -> list[dict]:
    rows = []
    for groups, per_group, n, k in CONTIGUOUS_CASES:
        gen = torch.Generator().manual_seed(groups * per_group)
        counts = ((torch.rand(groups, generator=gen) * 0.6 + 0.7) * per_group).round().int().tolist()
        ends, row = [], 0
        for c in counts:
            ends.append(row + c)
            row += layout.align(c, 128)
        m_sum = row
        psum = torch.tensor(ends, dtype=torch.int32, device="cuda")
        a_data, sfa = layout.per_token_cast_to_fp8(torch.randn(m_sum, k, device="cuda", dtype=torch.bfloat16))
        a = (a_data, layout.get_mn_major_tma_aligned_tensor(sfa))
        w = [layout.per_block_cast_to_fp8(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
             for _ in range(groups)]
        b = (torch.stack([p[0] for p in w]), torch.stack([p[1] for p in w]))
        d = torch.empty(m_sum, n, device="cuda", dtype=torch.bfloat16)
        valid = sum(counts)
        x_bf16 = torch.randn(valid, k, device="cuda", dtype=torch.bfloat16)
        w_bf16 = torch.randn(groups, n, k, device="cuda", dtype=torch.bfloat16)
        offs = torch.tensor(counts, device="cuda", dtype=torch.int32).cumsum(0).int()
        ours, grouped_mm = _time_with_peers(
            lambda: dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, psum, use_psum_layout=True),
            lambda: torch._grouped_mm(x_bf16, w_bf16.transpose(1, 2), offs=offs))
        rows.append({
            "groups": groups, "rows_per_group": per_group, "n": n, "k": k, "valid_rows": valid,
            "dg_moe_us": ours, "dg_moe_tflops": 2 * valid * n * k / ours / 1e6, "grouped_mm_bf16_us": grouped_mm,
        })
    return rows


def _geomean(values: list[float]) -> float:
    return statistics.geometric_mean(values) if values else float("nan")


def main(out_dir: str | None = None) -> int:
    """Run all three benchmarks, print tables, write JSON to ``out_dir`` when given."""
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}")
    dense = bench_dense()
    print("\nDense FP8 (TFLOPS; GPU time, L2 flushed)")
    print(f"{'M':>5} {'N':>6} {'K':>6} {'dg_moe':>8} {'cuBLAS-bw':>10} {'cuBLAS-bf16':>11} {'x cuBLAS-bw':>11}")
    ratios: dict[int, list[float]] = {128: [], 4096: []}
    for r in dense:
        flops = 2 * r["m"] * r["n"] * r["k"] / 1e6
        peer = r["cublas_blockwise_us"]
        ratio = peer / r["dg_moe_us"] if isinstance(peer, float) else float("nan")
        if isinstance(peer, float):
            ratios[r["m"]].append(ratio)
        print(f"{r['m']:>5} {r['n']:>6} {r['k']:>6} {_fmt(r['dg_moe_us'], flops):>8} {_fmt(peer, flops):>10} "
              f"{_fmt(r['cublas_bf16_us'], flops):>11} {ratio:>11.2f}")
        if "dg_moe_eager_us" in r:
            print(f"      eager call {r['dg_moe_eager_us']:.1f} us (row-major SFA converted per call: "
                  f"{r['dg_moe_eager_row_major_sfa_us']:.1f} us) vs GPU time {r['dg_moe_us']:.1f} us")
    for m, values in ratios.items():
        print(f"geomean dg_moe / cuBLAS blockwise at M={m}: {_geomean(values):.2f}x")

    masked = bench_masked()
    print("\nMasked grouped FP8 (GB/s counts weights, valid A rows, valid D rows)")
    print(f"{'G':>3} {'rows':>5} {'N':>5} {'K':>5} {'us':>8} {'GB/s':>7} {'bmm-bf16 us':>12}")
    for r in masked:
        peer = r["bmm_bf16_us"]
        peer_s = f"{peer:12.1f}" if isinstance(peer, float) else peer
        print(f"{r['groups']:>3} {r['expected_m']:>5} {r['n']:>5} {r['k']:>5} {r['dg_moe_us']:8.1f} "
              f"{r['dg_moe_gbps']:7.0f} {peer_s}")

    contiguous = bench_contiguous()
    print("\nContiguous grouped FP8 (TFLOPS on valid rows)")
    print(f"{'G':>3} {'rows/g':>6} {'N':>5} {'K':>5} {'dg_moe':>7} {'grouped_mm-bf16':>15}")
    for r in contiguous:
        flops = 2 * r["valid_rows"] * r["n"] * r["k"] / 1e6
        print(f"{r['groups']:>3} {r['rows_per_group']:>6} {r['n']:>5} {r['k']:>5} {r['dg_moe_tflops']:7.0f} "
              f"{_fmt(r['grouped_mm_bf16_us'], flops):>15}")

    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bench_gemm.json"), "w") as f:
            json.dump({"gpu": props.name, "dense": dense, "masked": masked, "contiguous": contiguous}, f, indent=1)
    return 0
