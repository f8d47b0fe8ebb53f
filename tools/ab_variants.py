"""A/B of SM90 FP8 GEMM variants on `dg-moe bench gemm`'s cases, beside DeepGEMM, in one process (GPU).

    python tools/ab_variants.py [--family dense,contiguous,masked] [--match TEXT]... [--tile SPEC]...
                                [--base DIR]... [--contiguous G:ROWS[:N:K]]... [--no-deepgemm] [--compile-only]
                                [--json PATH]

For each case (bench gemm's lists; --match keeps cases whose label contains one of the texts) the
heuristic's variant and every --tile variant run on the case's own inputs (psum form for contiguous),
from this tree and from each --base tree (a kernel source tree searched before dg_moe/csrc, e.g. a
`git archive` of an earlier commit's dg_moe/csrc; only the heuristic's variant). Every output is
poisoned with NaN, run once and compared bit for bit on its valid rows with DeepGEMM's (or, without
it, the heuristic variant's); then all of them and DeepGEMM are timed in one interleaved measurement.
A variant that fails or differs is reported, never fatal.
--tile BMxBN[xMC[B]][sST]: e.g. 128x192x2B (a 2-CTA cluster sharing B), 128x128x2 (sharing A),
    256x128s3 (3 stages; default: the most that fit). A tile a layout cannot take is skipped.
--contiguous G:ROWS[:N:K]: also a prefix-sum contiguous case of G groups of about ROWS rows (jittered as
    bench gemm's are), at N x K or at both MoE shapes; e.g. 256:128, a DeepSeek-V3 prefill of 4096 tokens.
--compile-only: compile every variant in parallel processes and stop (no GPU needed).
--profile: after the checks, run each call once between cudaProfilerStart/Stop instead of timing them, for
    `ncu --profile-from-start off` (Nsight Compute on a variant the heuristic does not pick).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from dg_moe import device as dg_device
from dg_moe.bench.gemm_cases import FORMS, MOE_NK, ContiguousCase, family_cases, parse_families
from dg_moe.bench.gemm_plan import gemm_calls
from dg_moe.bench.gemm_problems import build_problem
from dg_moe.bench.peer_deepgemm import load_deep_gemm
from dg_moe.bench.tile_spec import TileSpec, parse_tile
from dg_moe.bench.timing import describe_error, gpu_times_us
from dg_moe.jit import compile_only
from dg_moe.kernels.sm90_fp8_gemm import FAMILY, GemmConfig, GemmType, config_for, template_args
from dg_moe.kernels.sm90_fp8_gemm.heuristic import fits_registers, max_stages, predict_us
from dg_moe.kernels.sm90_fp8_gemm.launcher import bind, bound_launch, kernel_operands

FORM = {"dense": "dg_moe", "contiguous": "dg_moe_psum", "masked": "dg_moe"}


def parse_contiguous(text: str) -> list[ContiguousCase]:
    parts = text.split(":")
    if len(parts) not in (2, 4) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"--contiguous {text!r}: expected G:ROWS or G:ROWS:N:K, e.g. 256:128")
    groups, rows, *nk = (int(p) for p in parts)
    return [ContiguousCase(groups, rows, n, k) for n, k in ([tuple(nk)] if nk else MOE_NK)]


def variants(gemm_type: GemmType, rows_hint: int, n: int, k: int, groups: int, tiles: list[TileSpec],
             sms: int):
    """(name, config): the heuristic's choice first, then every tile the layout can take."""
    out = [("heuristic", config_for(gemm_type, rows_hint, n, k, groups, sms))]
    contiguous = gemm_type in (GemmType.CONTIGUOUS, GemmType.CONTIGUOUS_PSUM)
    for t in tiles:
        if (contiguous and t.block_m > 128) or not fits_registers(t.block_m, t.block_n):
            continue
        config = GemmConfig(t.block_m, t.block_n, t.stages or max_stages(t.block_m, t.block_n, k), t.multicast, 0,
                            predict_us(t.block_m, t.block_n, t.multicast, rows_hint, n, k, groups, sms, t.shares_b),
                            t.shares_b)
        out.append((t.name(config.num_stages), config))
    return out


def _compile(job: tuple[dict, str | None]) -> str:
    try:
        compile_only(FAMILY, job[0], source_root=job[1])
        return ""
    except Exception as err:  # reported; the variant then fails at its first call too
        return f"{job[0]} from {job[1] or 'this tree'}: {describe_error(err)}"


def plan(cases, tiles, bases, sms):
    """Every (case, layout type, [(name, config, source root)]), from the cases' shapes alone (no GPU):
    the first dg_moe call of each case (the psum form for contiguous), as bench gemm's plan gives it."""
    out = []
    for case in cases:
        gemm_type, hint, groups = gemm_calls(case)[0]
        runs = [(name, config, None) for name, config in variants(gemm_type, hint, case.n, case.k, groups, tiles, sms)]
        runs += [(f"heuristic@{Path(b).name}", runs[0][1], b) for b in bases]
        out.append((case, gemm_type, runs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="contiguous,masked,dense")
    parser.add_argument("--match", action="append", default=[], help="keep cases whose label contains TEXT")
    parser.add_argument("--tile", type=parse_tile, action="append", default=[])
    parser.add_argument("--base", action="append", default=[], help="kernel source tree to compare against")
    parser.add_argument("--contiguous", type=parse_contiguous, action="append", default=[],
                        help="extra prefix-sum contiguous case G:ROWS[:N:K]")
    parser.add_argument("--no-deepgemm", action="store_true")
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--sms", type=int, default=132, help="SM count for --compile-only (default 132)")
    parser.add_argument("--profile", action="store_true", help="one profiled call each instead of timing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bases = [str(Path(b).resolve()) for b in args.base]
    cases = [c for f in parse_families(args.family) if f != "eager" for c in family_cases(f)
             if not args.match or any(text in c.label for text in args.match)]
    cases += [c for extra in args.contiguous for c in extra]
    sms = args.sms if args.compile_only else dg_device.num_sms_for(torch.device("cuda"))
    planned = plan(cases, args.tile, bases, sms)

    jobs = {(tuple(sorted(template_args(t, c, case.n, case.k).items())), root)
            for case, t, runs in planned for _, c, root in runs}
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        errors = [e for e in pool.map(_compile, [(dict(a), root) for a, root in jobs]) if e]
    print(f"compiled {len(jobs)} variants; {len(errors)} failed", flush=True)
    for error in errors:
        print("  " + error)
    if args.compile_only:
        return

    status = load_deep_gemm("disabled by --no-deepgemm" if args.no_deepgemm else None)
    report = []
    print(f"{'case':<34} {'variant':<26} {'pred':>7} {'us':>8} {'rate':>7} {'DG/this':>7}  check")
    for case, gemm_type, runs in planned:
        problem = build_problem(case, status.module)
        inputs = problem.inputs[FORM[case.family]]
        a, b = kernel_operands(gemm_type, inputs.a, inputs.b)
        reference_label = FORMS[case.family][FORM[case.family]]
        fns, names, checks = [], [], []
        reference = None
        if reference_label in problem.calls:
            call = problem.calls[reference_label]
            call.out.fill_(float("nan"))
            try:
                call.fn()
                torch.cuda.synchronize()
                reference = problem.valid(call.out).clone()
                fns.append(call.fn)
                names.append((reference_label, None))
                checks.append("peer")
            except Exception as err:
                print(f"{case.label:<34} {reference_label:<26} n/a ({describe_error(err)})")
        out = torch.empty_like(problem.calls[FORM[case.family]].out)
        for name, config, root in runs:
            try:
                entry = bind(gemm_type, config, case.n, case.k, source_root=root)
                launch = bound_launch(entry, gemm_type, a, b, out, inputs.layout, sms)
                out.fill_(float("nan"))
                launch()
                torch.cuda.synchronize()
                got = problem.valid(out)
                if reference is None:
                    reference = got.clone()
                check = "bitwise equal" if torch.equal(got, reference) else "DIFFERS"
            except Exception as err:
                print(f"{case.label:<34} {name:<26} failed: {describe_error(err)}")
                continue
            fns.append(launch)
            names.append((name, config))
            checks.append(check)
        if args.profile:
            torch.cuda.cudart().cudaProfilerStart()
            for fn in fns:
                fn()
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
            print(f"{case.label:<34} profiled: " + ", ".join(name for name, _ in names), flush=True)
            continue
        times = gpu_times_us(fns)
        peer_us = times[0] if names and names[0][1] is None else None
        for (name, config), us, check in zip(names, times, checks, strict=True):
            pred = f"{config.predicted_us:7.1f}" if config is not None else " " * 7
            if not isinstance(us, float) or us <= 0:
                print(f"{case.label:<34} {name:<26} {pred} {us}  {check}", flush=True)
                continue
            rate = case.flops / us / 1e6 if case.family != "masked" else case.bytes_moved / us / 1e3
            ratio = peer_us / us if isinstance(peer_us, float) else float("nan")
            print(f"{case.label:<34} {name:<26} {pred} {us:8.1f} {rate:7.0f} {ratio:7.2f}  {check}", flush=True)
            report.append({"case": case.label, "variant": name, "us": us, "check": check,
                           "config": dataclasses.asdict(config) if config else None})
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
