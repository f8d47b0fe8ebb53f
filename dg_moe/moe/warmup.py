"""`dg-moe warmup`: compile, ahead of serving, every GEMM kernel a MoE layer's forward can ask for.

A kernel variant is fixed by (layout, N, K, block configuration), and the configuration follows from
the rows-per-expert hint the layer passes (``ceil(T*k / E)``, for the masked path capped at
``max_m = T``) and the GPU's SM count. For each batch size this lists the variants both layouts
would request for the two expert GEMMs (and the shared expert's two dense GEMMs), removes
duplicates, and compiles them in parallel into the JIT cache; serving processes then only load
them. The layout ops' Triton kernels compile on the GPU at first use and are not covered here.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable, Sequence

import torch

from ..jit import compile_many
from ..kernels.sm90_fp8_gemm import FAMILY, GemmType
from ..kernels.sm90_fp8_gemm.variants import VariantSet
from .hints import expected_rows_per_expert, masked_rows_hint
from .shapes import MODEL_SHAPES, MoEShape, shapes_named, token_counts

DEFAULT_BATCHES = tuple(2**i for i in range(14))  # 1 .. 8192 tokens
H100_SXM_SMS = 132


def layer_variants(shape: MoEShape, batches: Iterable[int], num_sms: int) -> list[dict[str, int]]:
    """Template arguments of every SM90 GEMM variant ``fused_moe`` asks for at these batch sizes.

    Both layouts at every batch size (a caller may force either mode), the masked one with the
    default ``max_m = T`` (also what :class:`DecodeGraphRunner` captures); the shared expert's
    dense GEMMs when the shape has one. In first-requested order, without duplicates.
    """
    h, inter, e, k = shape.hidden, shape.intermediate, shape.experts, shape.top_k
    found = VariantSet(num_sms)
    for tokens in batches:
        for gemm_type, hint in ((GemmType.MASKED, masked_rows_hint(tokens, k, e, max(tokens, 1))),
                                (GemmType.CONTIGUOUS_PSUM, expected_rows_per_expert(tokens, k, e))):
            found.add(gemm_type, hint, 2 * inter, h, e)
            found.add(gemm_type, hint, h, inter, e)
        if shape.shared_intermediate is not None:
            found.add(GemmType.NORMAL, tokens, 2 * shape.shared_intermediate, h, 1)
            found.add(GemmType.NORMAL, tokens, h, shape.shared_intermediate, 1)
    return found.variants()


def _num_sms(requested: int | None) -> int:
    if requested is not None:
        return requested
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return H100_SXM_SMS


def main(argv: Sequence[str] | None = None) -> int:
    """Compile the variants of the named models (or of one custom shape) and report the time."""
    parser = argparse.ArgumentParser(prog="dg-moe warmup", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deepseek-v3", help=f"comma list of {', '.join(MODEL_SHAPES)}")
    parser.add_argument("--shape", metavar="H,I,E,K[,Is]",
                        help="a custom layer instead: hidden, intermediate, experts, top-k, shared intermediate")
    parser.add_argument("--batches", type=token_counts, default=list(DEFAULT_BATCHES),
                        help="token counts to cover (default 1,2,4,...,8192)")
    parser.add_argument("--num-sms", type=int, help="SM count of the serving GPU (default: this GPU's, else 132)")
    parser.add_argument("--jobs", type=int, help="parallel nvcc processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if args.shape:
        try:
            dims = [int(v) for v in args.shape.split(",")]
            shape = MoEShape("custom", *dims[:4], shared_intermediate=dims[4] if len(dims) > 4 else None)
        except (ValueError, TypeError):
            parser.error(f"--shape takes H,I,E,K[,Is] as integers, got {args.shape!r}")
        shapes = [shape]
    else:
        shapes = shapes_named(parser, args.models, MODEL_SHAPES)
    num_sms = _num_sms(args.num_sms)
    variants = [v for shape in shapes for v in layer_variants(shape, args.batches, num_sms)]
    unique = list({tuple(sorted(v.items())): v for v in variants}.values())
    jobs = args.jobs or os.cpu_count() or 1
    print(f"dg-moe warmup: {len(unique)} kernel variants for {', '.join(s.name for s in shapes)} "
          f"({num_sms} SMs, batches {min(args.batches)}..{max(args.batches)}), {jobs} parallel compiles", flush=True)
    start = time.perf_counter()
    compile_many(FAMILY, unique, jobs)
    print(f"dg-moe warmup: {len(unique)} variants cached in {time.perf_counter() - start:.1f} s")
    return 0
