"""dg_moe's SM90 BF16 GEMMs beside cuBLAS (torch.matmul), torch._grouped_mm, torch.bmm and, when
importable, DeepGEMM's BF16 ops, on DeepSeek-V3 shapes (GPU only); the ``dense-nn/tn/tt`` and
``contiguous-nn`` cases run the transposed ops (MN-major operands).

    python3 tools/bench_bf16.py [--no-deepgemm] [--tile SPEC]... [--match TEXT]... [--compile-only]

Every call writes its own BF16 output (torch._grouped_mm allocates it). Times are GPU times (CUDA-graph
replays, L2 flushed, interleaved: dg_moe.bench.timing); TFLOPS count every row. Each case first checks
dg_moe's output against the float64 reference (global similarity, printed) and, where DeepGEMM ran, bitwise
equality with it. ``--tile BMxBN[xMC[B]][sST]`` (tools/ab_variants.py's spelling) also runs that forced
configuration of dg_moe's kernel on every case whose layout can take it, checked bit for bit against the
heuristic's output and timed in the same interleaved measurement; ``DG_PRINT_CONFIGS=1`` prints DeepGEMM's
choices and dg_moe's. ``--compile-only`` compiles every variant and stops (no GPU needed).
"""

from __future__ import annotations

import argparse

import torch

import dg_moe
from dg_moe import layout, reference
from dg_moe.bench.peer_deepgemm import load_deep_gemm
from dg_moe.bench.tile_spec import TileSpec, parse_tile
from dg_moe.bench.timing import describe_error, gpu_times_us
from dg_moe.jit import compile_many
from dg_moe.kernels.sm90_bf16_gemm import FAMILY
from dg_moe.kernels.sm90_bf16_gemm.constants import K_MAJOR, GemmType, Majors
from dg_moe.kernels.sm90_bf16_gemm.heuristic import config_for, fits_registers, max_stages, predict_us, smem_bytes
from dg_moe.kernels.sm90_bf16_gemm.launcher import bind, bound_launch
from dg_moe.kernels.sm90_bf16_gemm.variants import template_args
from dg_moe.kernels.sm90_fp8_gemm.heuristic import GemmConfig

# (kind, M or rows per group, N, K, groups)
CASES = [
    ("dense", 4096, 4096, 7168, 1), ("dense", 4096, 2112, 7168, 1), ("dense", 128, 7168, 2048, 1),
    ("dense", 4096, 24576, 1536, 1), ("dense", 4096, 32768, 512, 1), ("dense", 4096, 7168, 2048, 1),
    ("contiguous", 512, 4096, 7168, 8), ("contiguous", 256, 7168, 2048, 32),
    ("masked", 64, 4096, 7168, 16), ("masked", 4, 7168, 2048, 64),
    ("dense-nn", 4096, 4096, 7168, 1), ("dense-tn", 4096, 4096, 7168, 1), ("dense-tt", 4096, 4096, 7168, 1),
    ("dense-nn", 128, 7168, 2048, 1), ("contiguous-nn", 512, 4096, 7168, 8),
]


def _bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device="cuda").to(torch.bfloat16)


def _transposed_case(op: str, rows: int, n: int, k: int, deep_gemm):
    """``_case`` of dense-<op>: bf16_gemm_<op> on a [M, K] or [K, M] and b [K, N] or [N, K] as stored."""
    a = _bf16(rows, k) if op[0] == "n" else _bf16(k, rows)
    b = _bf16(k, n) if op[1] == "n" else _bf16(n, k)
    a_mk = a if op[0] == "n" else a.T
    b_kn = b if op[1] == "n" else b.T
    out = {label: torch.empty(rows, n, device="cuda", dtype=torch.bfloat16) for label in ("dg_moe", "cublas",
                                                                                         "deepgemm")}
    calls = {"dg_moe": lambda: getattr(dg_moe, f"bf16_gemm_{op}")(a, b, out["dg_moe"]),
             "cublas": lambda: torch.matmul(a_mk, b_kn, out=out["cublas"])}
    if deep_gemm is not None:
        calls["deepgemm"] = lambda: getattr(deep_gemm, f"bf16_gemm_{op}")(a, b, out["deepgemm"])
    ref = getattr(reference, f"ref_bf16_gemm_{op}")(a, b)
    return calls, out, 2.0 * rows * n * k, ref, None


def _case(kind: str, rows: int, n: int, k: int, groups: int, deep_gemm):
    """(calls by label, outputs by label, FLOPs, float64 reference, dg_moe's kernel operands (a, b, d, layout
    tensor or None), None for the transposed ops); each call writes its own output."""
    if kind.startswith("dense-"):
        return _transposed_case(kind.removeprefix("dense-"), rows, n, k, deep_gemm)
    nn = kind == "contiguous-nn"
    b = _bf16(groups, k, n) if nn else _bf16(groups, n, k)
    if kind == "dense":
        a = _bf16(rows, k)
        out = {label: torch.empty(rows, n, device="cuda", dtype=torch.bfloat16) for label in ("dg_moe", "cublas",
                                                                                             "deepgemm")}
        calls = {"dg_moe": lambda: dg_moe.bf16_gemm_nt(a, b[0], out["dg_moe"]),
                 "cublas": lambda: torch.matmul(a, b[0].T, out=out["cublas"])}
        if deep_gemm is not None:
            calls["deepgemm"] = lambda: deep_gemm.bf16_gemm_nt(a, b[0], out["deepgemm"])
        return calls, out, 2.0 * rows * n * k, reference.ref_bf16_gemm_nt(a, b[0]), (a, b[0], out["dg_moe"], None)
    if kind.startswith("contiguous"):
        m_sum = groups * layout.align(rows, 128)
        a = _bf16(m_sum, k)
        per_row = torch.arange(groups, device="cuda", dtype=torch.int32).repeat_interleave(m_sum // groups)
        ends = torch.arange(1, groups + 1, device="cuda", dtype=torch.int32) * (m_sum // groups)
        out = {label: torch.empty(m_sum, n, device="cuda", dtype=torch.bfloat16) for label in ("dg_moe", "deepgemm")}
        op = "m_grouped_bf16_gemm_nn_contiguous" if nn else "m_grouped_bf16_gemm_nt_contiguous"
        calls = {"dg_moe": lambda: getattr(dg_moe, op)(a, b, out["dg_moe"], ends, use_psum_layout=True),
                 # torch allocates its output: the peer's time includes no copy.
                 "grouped_mm": lambda: torch._grouped_mm(a, b if nn else b.transpose(1, 2), offs=ends)}
        if deep_gemm is not None:
            calls["deepgemm"] = lambda: getattr(deep_gemm, op)(a, b, out["deepgemm"], per_row)
        ref = getattr(reference, f"ref_{op}")(a, b, per_row)
        return calls, out, 2.0 * m_sum * n * k, ref, None if nn else (a, b, out["dg_moe"], ends)
    a = _bf16(groups, rows, k)
    masked_m = torch.full((groups,), rows, device="cuda", dtype=torch.int32)
    out = {label: torch.empty(groups, rows, n, device="cuda", dtype=torch.bfloat16) for label in ("dg_moe", "bmm",
                                                                                                 "deepgemm")}
    calls = {"dg_moe": lambda: dg_moe.m_grouped_bf16_gemm_nt_masked(a, b, out["dg_moe"], masked_m, rows),
             "bmm": lambda: torch.bmm(a, b.transpose(1, 2), out=out["bmm"])}
    if deep_gemm is not None:
        calls["deepgemm"] = lambda: deep_gemm.m_grouped_bf16_gemm_nt_masked(a, b, out["deepgemm"], masked_m, rows)
    ref = reference.ref_m_grouped_bf16_gemm_nt_masked(a, b, masked_m)
    return calls, out, 2.0 * groups * rows * n * k, ref, (a, b, out["dg_moe"], masked_m)


TYPES = {"dense": GemmType.NORMAL, "contiguous": GemmType.CONTIGUOUS_PSUM, "masked": GemmType.MASKED}
# The transposed cases' layout and operand majors; forced tiles run on the K-major cases only.
MAJORS = {"nn": Majors(b_mn=True), "tn": Majors(a_mn=True, b_mn=True), "tt": Majors(a_mn=True)}


def _layout_of(kind: str) -> tuple[GemmType, Majors]:
    base, _, op = kind.partition("-")
    return TYPES[base], MAJORS[op] if op else K_MAJOR


def _rows_hint(kind: str, rows: int) -> int:
    return layout.align(rows, 128) if kind.startswith("contiguous") else rows


def variants(kind: str, rows: int, n: int, k: int, groups: int, tiles: list[TileSpec],
             num_sms: int) -> list[tuple[str, GemmConfig]]:
    """(name, config) of every forced tile this case's layout can take (the heuristic's choice runs as the
    ``dg_moe`` column): contiguous tiles at most 128 rows; pairs sharing A or B on every layout (DeepGEMM
    shares B on dense shapes too, v19)."""
    hint = _rows_hint(kind, rows)
    out = []
    if "-" in kind:
        return out
    for t in tiles:
        if (kind == "contiguous" and t.block_m > 128) or not fits_registers(t.block_m, t.block_n):
            continue
        stages = t.stages or max_stages(t.block_m, t.block_n)
        config = GemmConfig(t.block_m, t.block_n, stages, t.multicast, smem_bytes(t.block_m, t.block_n, stages),
                            predict_us(t.block_m, t.block_n, hint, n, k, groups, num_sms), t.shares_b)
        out.append((t.name(stages), config))
    return out


def _compile_first(tiles: list[TileSpec], num_sms: int, cases: list[tuple]) -> None:
    """Every dg_moe variant the cases run (the heuristic's and the forced ones), compiled in parallel."""
    found: dict[tuple, dict] = {}
    for kind, rows, n, k, groups in cases:
        gemm_type, majors = _layout_of(kind)
        configs = [config_for(gemm_type, _rows_hint(kind, rows), n, k, groups, num_sms, majors=majors)]
        configs += [config for _, config in variants(kind, rows, n, k, groups, tiles, num_sms)]
        for config in configs:
            args = template_args(gemm_type, config, n, k, majors=majors)
            found.setdefault(tuple(sorted(args.items())), args)
    paths = compile_many(FAMILY, list(found.values()))
    print(f"compiled {len(paths)} variants", flush=True)


def _forced_call(kind: str, config: GemmConfig, n: int, k: int, operands: tuple, num_sms: int):
    """A call of one forced variant on the case's kernel operands (a, b, d, layout), or the error's text."""
    a, b, d, grouped = operands
    try:
        return bound_launch(bind(TYPES[kind], config, n, k), TYPES[kind], a, b, d, grouped, num_sms)
    except Exception as err:  # reported in the case's line; the other variants still run
        return describe_error(err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-deepgemm", action="store_true", help="do not import DeepGEMM")
    parser.add_argument("--tile", type=parse_tile, action="append", default=[], help="forced variant, e.g. 128x192")
    parser.add_argument("--match", action="append", default=[], help="keep cases whose label contains TEXT")
    parser.add_argument("--compile-only", action="store_true", help="compile every variant and stop")
    parser.add_argument("--sms", type=int, default=132, help="SM count for --compile-only (default 132)")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.match or any(text in _label(*c) for text in args.match)]
    if args.compile_only:
        _compile_first(args.tile, args.sms, cases)
        return
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    status = load_deep_gemm("--no-deepgemm" if args.no_deepgemm else None)
    print(f"{torch.cuda.get_device_name()}; DeepGEMM: {status.version or status.reason}")
    _compile_first(args.tile, num_sms, cases)
    print(f"{'case':<34} {'diff':>8} {'=DG':>4} | TFLOPS per library (us)")
    for kind, rows, n, k, groups in cases:
        label = _label(kind, rows, n, k, groups)
        calls, out, flops, ref, operands = _case(kind, rows, n, k, groups, status.module)
        for buffer in out.values():
            buffer.fill_(float("nan"))
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
        heuristic_out = out["dg_moe"].clone()
        for name, config in variants(kind, rows, n, k, groups, args.tile, num_sms):
            call = _forced_call(kind, config, n, k, operands, num_sms)
            if isinstance(call, str):
                print(f"  {name}: n/a ({call})")
                continue
            out["dg_moe"].fill_(float("nan"))
            call()
            torch.cuda.synchronize()
            # Padding rows are never written: compare where the heuristic's output holds values.
            written = ~heuristic_out.isnan()
            if not torch.equal(out["dg_moe"][written], heuristic_out[written]):
                print(f"  {name}: DIFFERS from the heuristic's output")
            ran[name] = call
        times = dict(zip(ran, gpu_times_us(list(ran.values())), strict=True))
        cells = [f"{name} {flops / t / 1e6:7.1f} ({t:7.1f})" if isinstance(t, float) else f"{name} {t}"
                 for name, t in times.items()]
        gemm_type, majors = _layout_of(kind)
        config = config_for(gemm_type, _rows_hint(kind, rows), n, k, groups, num_sms, majors=majors)
        print(f"{label:<34} {diff:8.1e} {same:>4} | " + "  ".join(cells) +
              f"  [dg_moe: {config.block_m}x{config.block_n}x{config.multicast}{'B' if config.multicast_b else ''}"
              f"s{config.num_stages}]", flush=True)


def _label(kind: str, rows: int, n: int, k: int, groups: int) -> str:
    return f"{kind} rows={rows} N={n} K={k} G={groups}"


if __name__ == "__main__":
    main()
