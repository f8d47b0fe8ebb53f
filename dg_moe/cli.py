"""`dg-moe` command line: info, demo."""

from __future__ import annotations

import argparse
import sys

import torch


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
    """Run one of the GPU benchmarks (dg_moe.bench.moe, dg_moe.bench.layout, dg_moe.bench.gemm)."""
    if what == "moe":
        from .bench.moe import main as bench_main

        return bench_main(options)
    if what == "gemm":
        from .bench.gemm import main as gemm_main

        return gemm_main(options)
    from .bench.layout import main as layout_main

    return layout_main(options)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dg-moe` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # warmup and bench own their options (and their --help): everything after the command goes to them.
    if argv[:1] == ["warmup"]:
        from .moe.warmup import main as warmup_main

        return warmup_main(argv[1:])
    if argv[:1] == ["bench"] and argv[1:2] in (["moe"], ["layout"], ["gemm"]):
        return cmd_bench(argv[1], argv[2:])
    parser = argparse.ArgumentParser(prog="dg-moe", description="FP8 MoE GEMM kernels for Hopper")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, GPU, nvcc, headers, kernel cache")
    demo = sub.add_parser("demo", help="run a DeepSeek-V3-shaped fused MoE layer in both layouts and check it")
    demo.add_argument("--device", default="auto", help="auto (SM90 GPU if present, else CPU), cpu, cuda")
    sub.add_parser("warmup", help="compile ahead of serving every GEMM kernel a model's MoE layer needs "
                   "(`dg-moe warmup --help`)")
    bench = sub.add_parser("bench", help="GPU benchmarks (`dg-moe bench moe --help`, `dg-moe bench layout`, "
                           "`dg-moe bench gemm --help`)")
    bench.add_argument("what", choices=("moe", "layout", "gemm"))
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info()
    return cmd_demo(args.device)


if __name__ == "__main__":
    sys.exit(main())
