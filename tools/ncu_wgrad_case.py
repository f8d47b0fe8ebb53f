"""Run one `tools/bench_wgrad.py` case's weight-gradient GEMM once in each library between
cudaProfilerStart/Stop, for Nsight Compute (GPU only; a warm-up call of each stays outside the profiled range):

    WGRAD=1 bash tools/ncu_source.sh NAME "dense M=4096 N=7168 K=4096" [--base DIR]

--base: dg_moe's kernel from that kernel source tree (as bench_wgrad's --base).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from dg_moe.bench.peer_deepgemm import load_deep_gemm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label", help="a bench_wgrad case label, e.g. 'dense M=4096 N=7168 K=4096'")
    parser.add_argument("--base", metavar="DIR", help="dg_moe's kernel source tree (searched before dg_moe/csrc)")
    args = parser.parse_args(argv)
    # The benchmark's cases and operands, and the profiled range, from the scripts beside this one.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    bench_wgrad = importlib.import_module("bench_wgrad")
    ncu_case = importlib.import_module("ncu_case")
    found = [c for c in bench_wgrad.cases() if c.label == args.label]
    if not found:
        raise SystemExit(f"no bench_wgrad case is labelled {args.label!r}")
    if args.base is not None:
        bench_wgrad.use_kernel_tree(args.base)
    device = torch.device("cuda")
    prob = bench_wgrad.problem(found[0], device, load_deep_gemm().module)
    d = torch.zeros(prob.shape, dtype=torch.float32, device=device)
    ncu_case.profile_once([lambda: prob.ours(d, d)] + ([lambda: prob.peer(d)] if prob.peer is not None else []))


if __name__ == "__main__":
    main()
