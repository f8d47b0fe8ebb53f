"""`dg-moe bench gemm`: dg_moe's FP8 GEMMs beside DeepGEMM and cuBLAS/torch, in one process.

Every case runs dg_moe, DeepGEMM (when ``import deep_gemm`` works) and a peer (cuBLASLt blockwise
FP8 through F.scaled_mm for dense; BF16 torch._grouped_mm for contiguous, torch.bmm for masked) on
the same problem. Before timing, every output is poisoned with NaN, each library runs once, and
dg_moe's valid rows are compared with DeepGEMM's bit for bit (reported, never fatal). GPU time:
interleaved CUDA-graph replays with L2 flushed (dg_moe.bench.timing). Ratios are DeepGEMM time /
dg_moe time (> 1: dg_moe faster), with geomeans per family; the eager line is host-inclusive time
per call. ``--warmup`` compiles every kernel first (dg_moe.bench.gemm_warmup). ``--json`` records every
row (schema dg_moe.bench.gemm/1), ``--plot`` draws them against each case's floor (dg_moe.bench.plot).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import torch

from ..cli_args import CommandParser, positive_int, require_gpu
from .gemm_cases import EAGER_CASE, FAMILIES, FORMS, PEERS, Case, call_labels, family_cases, parse_families
from .gemm_plan import bench_variants, estimate_seconds
from .gemm_problems import Problem, build_problem
from .gemm_report import document, eager_line, eager_row, progress_line, result_row, table
from .gemm_warmup import num_sms, warm
from .machine import machine_facts
from .output import Outputs, add_output_options, outputs
from .peer_deepgemm import DeepGemmStatus, load_deep_gemm
from .roofline import peaks
from .timing import CALLS, FLUSH_BYTES, REPLAYS, describe_error, eager_us, gpu_times_us

JSON_NAME = "bench_gemm.json"


def first_runs(problem: Problem) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """Run every call once on an output poisoned with NaN; the calls that ran, and why the others did not."""
    ran, failed = {}, {}
    for label, call in problem.calls.items():
        call.out.fill_(float("nan"))
        try:
            call.fn()
            torch.cuda.synchronize()
            ran[label] = call.fn
        except Exception as err:  # the case goes on without this call; its column says why
            failed[label] = f"n/a (first call: {describe_error(err)})"
    return ran, failed


def compare(problem: Problem, ran: dict[str, Callable[[], object]]) -> dict[str, bool]:
    """Per dg_moe form whose DeepGEMM twin also ran: are their valid output rows bitwise equal? A row
    either left unwritten keeps its NaN, which equals nothing."""
    out = {}
    for ours, theirs in FORMS[problem.case.family].items():
        if ours in ran and theirs in ran:
            out[ours] = torch.equal(problem.valid(problem.calls[ours].out), problem.valid(problem.calls[theirs].out))
    return out


def run_case(case: Case, status: DeepGemmStatus) -> dict[str, object]:
    """Build, check and time one case; a failure becomes the row's n/a entries, not the run's end."""
    labels = call_labels(case.family)
    try:
        problem = build_problem(case, status.module)
        ran, times = first_runs(problem)
        bitwise = compare(problem, ran)
        fns = dict(ran)
        peer = PEERS[case.family]
        try:
            fns[peer] = problem.peer()
        except Exception as err:  # e.g. out of memory for the BF16 copies: the peer's column says why
            times[peer] = f"n/a ({describe_error(err)})"
        times.update(zip(fns, gpu_times_us(list(fns.values())), strict=True))
    except Exception as err:  # inputs could not be built: every column says why
        times, bitwise = {label: f"n/a (case failed: {describe_error(err)})" for label in labels}, {}
    if status.module is None:
        times.update({label: status.missing for label in FORMS[case.family].values()})
    return result_row(case, {label: times[label] for label in labels if label in times}, bitwise)


def _eager_or_why(fn: Callable[[], object]) -> float | str:
    try:
        return eager_us(fn)
    except Exception as err:  # the line says why instead of ending the run
        return f"n/a ({describe_error(err)})"


def run_eager(status: DeepGemmStatus) -> dict[str, object]:
    """Wall time per back-to-back eager call of the small dense GEMM, for each library."""
    problem = build_problem(EAGER_CASE, status.module)
    ours = _eager_or_why(problem.calls["dg_moe"].fn)
    theirs = _eager_or_why(problem.calls["deepgemm"].fn) if "deepgemm" in problem.calls else status.missing
    return eager_row(ours, theirs, EAGER_CASE)


def bench(families: Sequence[str], quick: bool, status: DeepGemmStatus, json_path: str | None,
          plot_path: str | None = None) -> int:
    """Run the families' cases, print a line per case and the tables; JSON rewritten after each family (a run
    cut short keeps what it measured, for `dg-moe bench plot`), the chart drawn once at the end."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    print(f"GPU: {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}; DeepGEMM: "
          f"{status.version or status.reason}", flush=True)
    out = Outputs(json_path, plot_path)
    rows_by_family: dict[str, list[dict[str, object]]] = {}
    eager = doc = None
    meta: dict[str, object] = {"families": list(families), "quick": quick, "deepgemm": status.describe(),
                               "timing": {"calls_per_graph": CALLS, "replays": REPLAYS, "l2_flush_bytes": FLUSH_BYTES},
                               "roofline": peaks(props.name, props.multi_processor_count)}
    for family in families:
        if family == "eager":
            eager = run_eager(status)
            print(eager_line(eager), flush=True)
        else:
            cases = family_cases(family, quick)
            rows = rows_by_family.setdefault(family, [])
            for index, case in enumerate(cases, 1):
                start = time.perf_counter()
                rows.append(run_case(case, status))
                print(progress_line(index, len(cases), rows[-1], time.perf_counter() - start), flush=True)
                torch.cuda.empty_cache()  # the next case's inputs have other sizes
        if json_path or plot_path:
            doc = document({**machine_facts(), **meta}, rows_by_family, eager)
            out.write_json(doc)
    for family, rows in rows_by_family.items():
        print("\n" + "\n".join(table(family, rows)))
    if eager is not None:
        print("\n" + eager_line(eager))
    if doc is not None:
        out.write_plot(doc)
    if out.announce():
        print("\n" + out.announce())
    return 0


def dry_run(families: Sequence[str], quick: bool, status: DeepGemmStatus) -> int:
    """List the cases, the dg_moe variants to compile and the estimated timing; needs no GPU."""
    sms = num_sms()
    timed = [c for f in families if f != "eager" for c in family_cases(f, quick)]
    everything = timed + (family_cases("eager") if "eager" in families else [])
    for family in families:
        cases = family_cases(family, quick)
        print(f"{family}: {len(cases)} cases")
        for case in cases:
            scalars = {k: v for k, v in case.describe().items() if not isinstance(v, list)}
            print(f"  {case.label}: {json.dumps(scalars)}")
    print(f"dg_moe kernel variants to compile ({sms} SMs): {len(bench_variants(everything, sms))}")
    print(f"DeepGEMM: {status.version or status.reason}")
    print(f"estimated timing: {estimate_seconds(timed, sms, status.module is not None):.0f} s "
          "(graph replays at dg_moe's predicted kernel times, plus setup per case; compiles not included)")
    return 0


def build_parser() -> CommandParser:
    """The options of `dg-moe bench gemm`; building it touches no GPU, so --help works anywhere."""
    parser = CommandParser(prog="dg-moe bench gemm", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default=",".join(FAMILIES),
                        help=f"comma list of {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="only the cases with (N, K) = (4096, 7168)")
    add_output_options(parser, JSON_NAME)
    parser.add_argument("--no-deepgemm", action="store_true", help="do not import deep_gemm (its columns say so)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the cases and the plan; no GPU needed")
    mode.add_argument("--warmup", action="store_true",
                      help="compile every kernel the cases run, both libraries, in parallel processes; no timing")
    parser.add_argument("--jobs", type=positive_int, help="--warmup's parallel processes (default: one per CPU)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry of `dg-moe bench gemm`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        families = parse_families(args.family)
    except ValueError as err:
        parser.error(str(err))
    out = outputs(args, JSON_NAME)  # --dry-run and --warmup write nothing, but a bad --plot fails them too
    status = load_deep_gemm("disabled by --no-deepgemm" if args.no_deepgemm else None)
    cases = [c for f in families for c in family_cases(f, args.quick)]
    if args.dry_run:
        return dry_run(families, args.quick, status)
    if args.warmup:
        return warm(cases, status, args.jobs)
    require_gpu("run it on an H100/H200 with a CUDA build of torch (--dry-run lists the cases without one)")
    return bench(families, args.quick, status, out.json_path, out.plot_path)
