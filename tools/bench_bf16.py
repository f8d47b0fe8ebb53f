"""dg_moe's SM90 BF16 GEMMs beside cuBLAS (torch.matmul), torch._grouped_mm, torch.bmm and, when
importable, DeepGEMM's BF16 ops, on DeepSeek-V3 shapes (GPU only).

    python3 tools/bench_bf16.py [--no-deepgemm]

Every call writes its own BF16 output (torch._grouped_mm allocates it). Times are GPU times (CUDA-graph
replays, L2 flushed, interleaved: dg_moe.bench.timing); TFLOPS count every row. Each case first checks
dg_moe's output against the float64 reference (global similarity, printed) and, where DeepGEMM ran, bitwise
equality with it.
"""

from __future__ import annotations

import argparse

import torch

import dg_moe
from dg_moe import layout, reference
from dg_moe.bench.peer_deepgemm import load_deep_gemm
from dg_moe.bench.timing import describe_error, gpu_times_us
from dg_moe.jit import compile_many
from dg_moe.kernels.sm90_bf16_gemm import FAMILY, VariantSet
from dg_moe.kernels.sm90_bf16_gemm.constants import GemmType

# (kind, M or rows per group, N, K, groups)
CASES = [
    ("dense", 4096, 4096, 7168, 1), ("dense", 4096, 2112, 7168, 1), ("dense", 128, 7168, 2048, 1),
    ("dense", 4096, 24576, 1536, 1), ("contiguous", 512, 4096, 7168, 8), ("contiguous", 256, 7168, 2048, 32),
    ("masked", 64, 4096, 7168, 16), ("masked", 4, 7168, 2048, 64),
]


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device="cuda").to(torch.bfloat16)


def _case(kind: str, rows: int, n: int, k: int, groups: int, deep_gemm):
    """(calls by label, outputs by label, FLOPs, float64 reference); each call writes its own output."""
    b = _bf16(groups, n, k)
    if kind == "dense":
        a = _bf16(rows, k)
        out = {label: torch.empty(rows, n, device="cuda", dtype=torch.bfloat16) for label in ("dg_moe", "cublas",
                                                                                             "deepgemm")}
        calls = {"dg_moe": lambda: dg_moe.bf16_gemm_nt(a, b[0], out["dg_moe"]),
                 "cublas": lambda: torch.matmul(a, b[0].T, out=out["cublas"])}
        if deep_gemm is not None:
            calls["deepgemm"] = lambda: deep_gemm.bf16_gemm_nt(a, b[0], out["deepgemm"])
        return calls, out, 2.0 * rows * n * k, reference.ref_bf16_gemm_nt(a, b[0])
    if kind == "contiguous":
        m_sum = groups * layout.align(rows, 128)
        a = _bf16(m_sum, k)
        per_row = torch.arange(groups, device="cuda", dtype=torch.int32).repeat_interleave(m_sum // groups)
        ends = torch.arange(1, groups + 1, device="cuda", dtype=torch.int32) * (m_sum // groups)
        out = {label: torch.empty(m_sum, n, device="cuda", dtype=torch.bfloat16) for label in ("dg_moe", "deepgemm")}
        calls = {"dg_moe": lambda: dg_moe.m_grouped_bf16_gemm_nt_contiguous(a, b, out["dg_moe"], ends,
                                                                           use_psum_layout=True),
                 # torch allocates its output: the peer's time includes no copy.
                 "grouped_mm": lambda: torch._grouped_mm(a, b.transpose(1, 2), offs=ends)}
        if deep_gemm is not None:
            calls["deepgemm"] = lambda: deep_gemm.m_grouped_bf16_gemm_nt_contiguous(a, b, out["deepgemm"], per_row)
        ref = reference.ref_m_grouped_bf16_gemm_nt_contiguous(a, b, per_row)
        return calls, out, 2.0 * m_sum * n * k, ref
    a = _bf16(groups, rows, k)
    masked_m = torch.full((groups,), rows, device="cuda", dtype=torch.int32)
    out = {label: torch.empty(groups, rows, n, device="cuda", dtype=torch.bfloat16) for label in ("dg_moe", "bmm",
                                                                                                 "deepgemm")}
    calls = {"dg_moe": lambda: dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, out["dg_moe"], masked_m, rows),
             "bmm": lambda: torch.bmm(a, b.transpose(1, 2), out=out["bmm"])}
    if deep_gemm is not None:
        calls["deepgemm"] = lambda: deep_gemm.m_grouped_bf16_gemm_nt_masked(a, b, out["deepgemm"], masked_m, rows)
    return calls, out, 2.0 * groups * rows * n * k, reference.ref_m_grouped_bf16_gemm_nt_masked(a, b, masked_m)


def _compile_first() -> None:
    """Every dg_moe variant the cases run, compiled in parallel before the first case."""
    found = VariantSet(torch.cuda.get_device_properties(0).multi_processor_count)
    types = {"dense": GemmType.NORMAL, "contiguous": GemmType.CONTIGUOUS_PSUM, "masked": GemmType.MASKED}
    for kind, rows, n, k, groups in CASES:
        found.add(types[kind], rows if kind != "contiguous" else layout.align(rows, 128), n, k, groups)
    compile_many(FAMILY, found.variants())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-deepgemm", action="store_true", help="do not import DeepGEMM")
    args = parser.parse_args()
    status = load_deep_gemm("--no-deepgemm" if args.no_deepgemm else None)
    print(f"{torch.cuda.get_device_name()}; DeepGEMM: {status.version or status.reason}")
    _compile_first()
    print(f"{'case':<34} {'diff':>8} {'=DG':>4} | TFLOPS per library (us)")
    for kind, rows, n, k, groups in CASES:
        label = f"{kind} rows={rows} N={n} K={k} G={groups}"
        calls, out, flops, ref = _case(kind, rows, n, k, groups, status.module)
        ran = {}
        for name, call in calls.items():
            try:
                call()
                torch.cuda.synchronize()
                ran[name] = call
            except Exception as err:  # the peer's column says why
                print(f"  {name}: n/a ({describe_error(err)})")
        diff = reference.calc_diff(out["dg_moe"].double(), ref) if "dg_moe" in ran else float("nan")
        same = "yes" if "deepgemm" in ran and torch.equal(out["dg_moe"], out["deepgemm"]) else "-"
        times = dict(zip(ran, gpu_times_us(list(ran.values())), strict=True))
        cells = [f"{name} {flops / t / 1e6:7.1f} ({t:7.1f})" if isinstance(t, float) else f"{name} {t}"
                 for name, t in times.items()]
        print(f"{label:<34} {diff:8.1e} {same:>4} | " + "  ".join(cells))


if __name__ == "__main__":
    main()
