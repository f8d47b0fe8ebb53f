"""`dg-moe` command line: info, demo, warmup, bench.

A user error (a bad option or model name, no GPU, no nvcc) ends the command with one line on stderr that
names the problem and the fix, and exit status 2. Any other exception keeps its traceback: it is a bug.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from . import __version__
from .cli_args import CommandParser
from .errors import DeviceNotAvailableError, ToolchainNotFoundError, UnsupportedArchitectureError, UsageError

EXIT_USAGE = 2
BENCHES = ("moe", "layout", "gemm", "plot")  # plot: a recorded result's chart, no GPU
USER_ERRORS = (UsageError, DeviceNotAvailableError, UnsupportedArchitectureError, ToolchainNotFoundError)


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cmd_info() -> int:
    """Print versions, the GPU, the JIT toolchain and the kernel cache."""
    from . import jit

    print(f"torch: {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'})")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            is_sm90 = (props.major, props.minor) == (9, 0)
            supported = "supported" if is_sm90 else "no dg_moe kernels (SM90 only)"
            print(
                f"GPU {index}: {props.name}, compute capability {props.major}.{props.minor} ({supported}), "
                f"{props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
            )
    else:
        print("GPU: none visible (CPU tensors run the reference implementation)")
    tools = jit.toolchain_info()
    for key, value in tools.items():
        print(f"{key}: {value}")
    cache = jit.cache_dir()
    print(f"kernel cache: {cache} ({_format_bytes(jit.cache_size_bytes())})")
    return 0


def cmd_demo(device: str) -> int:
    """Run the fused MoE demo (see dg_moe.demo)."""
    from .demo import main as demo_main

    return demo_main(device)


def cmd_bench(what: str, options: list[str]) -> int:
    """Run one of the GPU benchmarks (dg_moe.bench.moe, dg_moe.bench.layout, dg_moe.bench.gemm), or draw the
    chart of a result one of them recorded (dg_moe.bench.plot)."""
    if what == "moe":
        from .bench.moe import main as bench_main

        return bench_main(options)
    if what == "gemm":
        from .bench.gemm import main as gemm_main

        return gemm_main(options)
    if what == "plot":
        from .bench.plot import main as plot_main

        return plot_main(options)
    from .bench.layout import main as layout_main

    return layout_main(options)


def build_parser() -> CommandParser:
    """The top-level parser; warmup and bench own their options, so their entries here only list them."""
    parser = CommandParser(prog="dg-moe", description="FP8 MoE GEMM kernels for Hopper")
    parser.add_argument("--version", action="version", version=f"dg-moe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPU, nvcc, headers, kernel cache")
    demo = sub.add_parser("demo", help="run a DeepSeek-V3-shaped fused MoE layer in both layouts and check it")
    demo.add_argument("--device", default="auto", help="auto (SM90 GPU if present, else CPU), cpu, cuda or cuda:N")
    sub.add_parser("warmup", help="compile ahead of serving every GEMM kernel a model's MoE layer needs "
                   "(`dg-moe warmup --help`)")
    bench = sub.add_parser("bench", help="GPU benchmarks (`dg-moe bench moe --help`, `dg-moe bench layout --help`, "
                           "`dg-moe bench gemm --help`) and the chart of their --json result "
                           "(`dg-moe bench plot --help`)")
    bench.add_argument("what", choices=BENCHES)
    return parser


def run(argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the command; user errors propagate as the exceptions of USER_ERRORS."""
    argv = list(argv)
    # warmup and bench own their options (and their --help): everything after the command goes to them.
    if argv[:1] == ["warmup"]:
        from .moe.warmup import main as warmup_main

        return warmup_main(argv[1:])
    if argv[:1] == ["bench"] and argv[1:2] and argv[1] in BENCHES:
        return cmd_bench(argv[1], argv[2:])
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return cmd_info()
    return cmd_demo(args.device)


def command_name(argv: Sequence[str]) -> str:
    """The command the words of ``argv`` name, as its messages call it: "dg-moe bench moe", "dg-moe"."""
    words = ["dg-moe"]
    if argv[:1] and argv[0] in ("info", "demo", "warmup", "bench"):
        words.append(argv[0])
        if argv[0] == "bench" and len(argv) > 1 and argv[1] in BENCHES:
            words.append(argv[1])
    return " ".join(words)


def _one_line(err: BaseException) -> str:
    # Some messages (nvcc's search list, CUDA's text) span lines; a user error must stay one line.
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dg-moe` console script: the command's exit status, 2 for a user error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except USER_ERRORS as err:
        name = command_name(argv)
        # Named from argv, not by the parser: argparse reports a stray option after `demo` from the top level.
        hint = f" (see `{name} --help`)" if isinstance(err, UsageError) else ""
        print(f"{name}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
