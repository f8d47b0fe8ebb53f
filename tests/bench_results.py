"""Recorded results of `dg-moe bench gemm|moe|layout`, built with the benchmarks' own writers on made-up
times, for the chart tests: tests/data/bench_{gemm,moe,layout}.json are what this module returns.

The times follow a plausible H100 run (each library a fixed share of the case's roofline floor) so
the charts look like real ones; they are no measurement. One DeepGEMM call fails, as a broken peer
build's would, to show how a chart says why a bar is missing. After a change to a writer, rewrite
the files with ``python -m tests.bench_results`` (tests/test_bench_plot.py fails until then).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from dg_moe.bench import gemm_report, layout, moe
from dg_moe.bench.gemm_cases import EAGER_CASE, FORMS, PEERS, family_cases
from dg_moe.bench.peer_deepgemm import DeepGemmStatus
from dg_moe.bench.roofline import compute_floor_rate, floor_s, peaks
from dg_moe.bench.timing import CALLS, FLUSH_BYTES, REPLAYS
from dg_moe.moe.shapes import MODEL_SHAPES

DATA = Path(__file__).resolve().parent / "data"
GPU = "NVIDIA H100 80GB HBM3"
SMS = 132
# machine_facts() as an H100 answers it, frozen: a fixture must not change with the machine that builds it.
MACHINE = {
    "python": "3.12.3", "torch": "2.9.0+cu130", "torch_cuda": "13.0", "dg_moe": "0.1.0", "gpu": GPU,
    "capability": "9.0", "sms": SMS, "memory_gib": 79.2, "sm_clock_mhz": 1980,
    "nvidia_smi": {"clocks.sm": "1980", "clocks.max.sm": "1980", "clocks.applications.graphics": "1755",
                   "power.limit": "700.00", "driver_version": "580.65.06"},
}
PEAK = peaks(GPU, SMS)
# Each library's time as a multiple of the case's floor: dg_moe's forms, DeepGEMM's, the BF16 or cuBLAS peer.
SHARE = {"dg_moe": 1.25, "dg_moe_psum": 1.3, "dg_moe_rows": 1.35, "deepgemm": 1.32, "deepgemm_psum": 1.36,
         "deepgemm_rows": 1.42, "cublas_blockwise": 1.6, "grouped_mm_bf16": 2.4, "bmm_bf16": 2.6}
DEEPGEMM_FAILURE = "n/a (first call: RuntimeError: DG_HOST_ASSERT failed: num_groups <= 16)"


def _us(seconds: float, share: float) -> float:
    return round(seconds * 1e6 * share, 1)


def gemm_result() -> dict[str, object]:
    """`dg-moe bench gemm --quick --json` on an H100 with DeepGEMM: the document `bench` writes."""
    rows_by_family = {}
    for family in ("dense", "contiguous", "masked"):
        rows = []
        for index, case in enumerate(family_cases(family, quick=True)):
            floor = floor_s(case.flops, case.bytes_moved, PEAK)
            labels = [*FORMS[family], *FORMS[family].values(), PEERS[family]]
            # Small cases lose more to launch and pipeline fill: a share that grows as the floor shrinks.
            small = 1.0 + 2e-6 / floor
            times: dict[str, float | str] = {label: _us(floor, SHARE[label] * small * (1 + 0.02 * index))
                                             for label in labels}
            if family == "masked" and case.groups == 32 and case.expected_m == 16:
                times["deepgemm"] = DEEPGEMM_FAILURE
            bitwise = {ours: True for ours, theirs in FORMS[family].items() if isinstance(times[theirs], float)}
            rows.append(gemm_report.result_row(case, times, bitwise))
        rows_by_family[family] = rows
    meta = {**MACHINE, "families": ["dense", "contiguous", "masked", "eager"], "quick": True,
            "deepgemm": {"available": True, "version": "2.1.1",
                         "path": "/work/.peer/deepgemm/src/deep_gemm/__init__.py", "reason": None},
            "timing": {"calls_per_graph": CALLS, "replays": REPLAYS, "l2_flush_bytes": FLUSH_BYTES},
            "roofline": PEAK}
    return gemm_report.document(meta, rows_by_family, gemm_report.eager_row(11.8, 14.9, EAGER_CASE))


def moe_result() -> dict[str, object]:
    """`dg-moe bench moe --models deepseek-v3 --json` on an H100 with DeepGEMM: the document `main` writes."""
    shape = MODEL_SHAPES["deepseek-v3"]
    h, i = shape.hidden, shape.intermediate
    expert_bytes = (2 * i * h + h * i) + 4 * ((2 * i // 128) * (h // 128) + (h // 128) * (i // 128))
    hbm = PEAK["hbm_bytes_per_s"]
    compute = compute_floor_rate(GPU, SMS)
    fp8 = compute["fp8_flops_per_s"]
    rows = []
    # Experts a softmax top-8 routing of T tokens touches, out of 256, as the benchmark's draws give them.
    for tokens, touched in ((1, 8), (8, 61), (32, 163), (128, 247), (512, 256), (4096, 256)):
        mode = "masked" if tokens <= 128 else "contiguous"
        flops = 6 * tokens * shape.top_k * h * i
        floor = max(flops / fp8, touched * expert_bytes / hbm)
        gpu = {"dg_moe": _us(floor, 1.3), "deepgemm_layer": _us(floor, 1.38), "bf16_grouped": _us(floor, 2.9)}
        eager = None
        if mode == "contiguous":  # eager wall time: the host's routing and launches come on top
            eager = {label: round(us + 180.0, 1) for label, us in gpu.items()}
        similarity = {"deepgemm_layer": 0.0, "bf16_grouped": 2.1e-4}
        rows.append(moe.make_row(shape, tokens, mode, touched, expert_bytes, gpu, eager, similarity, hbm, fp8))
    status = DeepGemmStatus(ModuleType("deep_gemm"), version="2.6.1",
                            path="/work/.peer/deepgemm/src/deep_gemm/__init__.py")
    meta = moe.run_meta(GPU, MACHINE, [shape], moe.BATCHES, status, hbm, compute)
    return moe.document(meta, rows)


def layout_result() -> dict[str, object]:
    """`dg-moe bench layout --json` on an H100: the document `main` writes, bytes as `_cases` counts them."""
    h, inter, experts = layout.H, layout.INTER, layout.EXPERTS
    rows = []
    for tokens in layout.TOKENS:
        entries = tokens * layout.TOP_K
        if tokens <= 128:
            name, buffer_rows = "masked", experts * tokens
        else:  # the contiguous buffer: the routed rows with each expert's segment padded to 128
            name, buffer_rows = "contiguous", entries + experts * 64
        ops = ((f"route_to_{name}", tokens * h * 2 + buffer_rows * h),
               (f"silu_and_mul {name}", entries * 2 * inter * 2 + buffer_rows * inter),
               (f"reduce {name}", entries * h * 2 + tokens * h * 2))
        for index, (op, nbytes) in enumerate(ops):
            floor = nbytes / PEAK["hbm_bytes_per_s"]
            small = 1.0 + 4e-6 / floor
            rows.append(layout.result_row(f"{op} T={tokens}", tokens, nbytes, _us(floor, (1.2 + 0.1 * index) * small),
                                          _us(floor, (3.0 + 0.5 * index) * small)))
    meta = {**MACHINE, "sizes": {"hidden": h, "intermediate": inter, "experts": experts, "top_k": layout.TOP_K},
            "tokens": list(layout.TOKENS), "roofline": PEAK}
    return layout.document(meta, rows)


RESULTS = {"gemm": gemm_result, "moe": moe_result, "layout": layout_result}


def path(name: str) -> Path:
    """The recorded file of benchmark ``name``."""
    return DATA / f"bench_{name}.json"


if __name__ == "__main__":
    DATA.mkdir(exist_ok=True)
    for name, build in RESULTS.items():
        path(name).write_text(json.dumps(build(), indent=1) + "\n")
        print(f"wrote {path(name)}")
