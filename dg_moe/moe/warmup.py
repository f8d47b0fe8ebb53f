"""`dg-moe warmup`: compile, ahead of serving, every GEMM kernel a MoE layer's forward can ask for.

A kernel variant is fixed by (layout, N, K, block configuration), and the configuration follows from
the rows-per-expert hint the layer passes (``ceil(T*k / E)``, for the masked path capped at
``max_m = T``) and the GPU's SM count. For each batch size this lists the variants both layouts
would request for the two expert GEMMs (and the shared expert's two dense GEMMs), removes
duplicates, and compiles them in parallel into the JIT cache; serving processes then only load
them. The layout ops' Triton kernels compile on the GPU at first use and are not covered here.

``--bf16`` also compiles the BF16 family's variants (dg_moe.kernels.sm90_bf16_gemm) for the same calls,
for layers that run their experts in BF16 through the BF16 grouped ops. ``--wgrad`` adds the
weight-gradient kernels a training step's backward asks for (the experts' K-grouped GEMMs in both
layout forms, the shared expert's dense ones: dg_moe/kernels/sm90_fp8_wgrad/). The two combine: the
forward's FP8 variants compile first, then the BF16 ones, then the weight-gradient ones, the BF16
experts' K-grouped ones among them.

It needs nvcc (the JIT's toolchain), not a GPU: without one it plans for an H100 SXM's 132 SMs unless
``--num-sms`` says otherwise. Progress goes to stderr, one line per variant done; the summary to stdout
(``--json``: a JSON object). Exit status 1 when nvcc rejected a variant.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..cli_args import CommandParser, positive_int
from ..jit import CompileOutcome, compile_each, get_toolchain
from ..kernels import sm90_bf16_gemm
from ..kernels.sm90_fp8_gemm import FAMILY, GemmType
from ..kernels.sm90_fp8_gemm.variants import VariantSet
from ..kernels.sm90_fp8_wgrad import FAMILY as WGRAD_FAMILY
from ..kernels.sm90_fp8_wgrad import WgradType
from ..kernels.sm90_fp8_wgrad import config_for as wgrad_config_for
from ..kernels.sm90_fp8_wgrad import template_args as wgrad_template_args
from ..layout.math import align
from .hints import expected_rows_per_expert, masked_rows_hint
from .shapes import MODEL_SHAPES, MoEShape, shape_arg, shapes_named, token_counts

DEFAULT_BATCHES = tuple(2**i for i in range(14))  # 1 .. 8192 tokens
H100_SXM_SMS = 132


def layer_variants(shape: MoEShape, batches: Iterable[int], num_sms: int, bf16: bool = False) -> list[dict[str, int]]:
    """Template arguments of every SM90 GEMM variant ``fused_moe`` asks for at these batch sizes.

    Both layouts at every batch size (a caller may force either mode), the masked one with the
    default ``max_m = T`` (also what :class:`DecodeGraphRunner` captures); the shared expert's
    dense GEMMs when the shape has one. In first-requested order, without duplicates. ``bf16``: the
    BF16 family's variants for the same calls instead (family ``sm90_bf16_gemm``).
    """
    h, inter, e, k = shape.hidden, shape.intermediate, shape.experts, shape.top_k
    found = sm90_bf16_gemm.VariantSet(num_sms) if bf16 else VariantSet(num_sms)
    for tokens in batches:
        for gemm_type, hint in ((GemmType.MASKED, masked_rows_hint(tokens, k, e, max(tokens, 1))),
                                (GemmType.CONTIGUOUS_PSUM, expected_rows_per_expert(tokens, k, e))):
            found.add(gemm_type, hint, 2 * inter, h, e)
            found.add(gemm_type, hint, h, inter, e)
        if shape.shared_intermediate is not None:
            found.add(GemmType.NORMAL, tokens, 2 * shape.shared_intermediate, h, 1)
            found.add(GemmType.NORMAL, tokens, h, shape.shared_intermediate, 1)
    return found.variants()


def layer_wgrad_variants(shape: MoEShape, batches: Iterable[int], num_sms: int,
                         bf16: bool = False) -> list[dict[str, int | str]]:
    """Template arguments of the weight-gradient variants the layer's backward asks for at these batch sizes:
    dW13[e] [2I, H] and dW2[e] [H, I] K-grouped over the experts (K: the routed tokens, 128-aligned per
    expert), in both layout forms, and the shared expert's dense dW [2Is, H] and [H, Is] (K: the tokens).
    ``bf16``: the BF16 experts' K-grouped ones (``k_grouped_bf16_gemm_tn_contiguous``) instead; the shared
    expert's then run on the BF16 dense family. In first-requested order, without duplicates."""
    h, inter, e = shape.hidden, shape.intermediate, shape.experts
    found: dict[tuple, dict[str, int | str]] = {}

    def add(wgrad_type: WgradType, m: int, n: int, k: int, groups: int) -> None:
        args = wgrad_template_args(wgrad_type, wgrad_config_for(wgrad_type, m, n, k, groups, num_sms, bf16), n)
        found.setdefault(tuple(sorted(args.items())), args)

    for tokens in batches:
        k_per_expert = align(max(1, tokens * shape.top_k // e), 128)
        for wgrad_type in (WgradType.K_GROUPED, WgradType.K_GROUPED_PSUM):
            add(wgrad_type, 2 * inter, h, k_per_expert, e)
            add(wgrad_type, h, inter, k_per_expert, e)
        if shape.shared_intermediate is not None and not bf16:
            add(WgradType.NORMAL, 2 * shape.shared_intermediate, h, align(tokens, 128), 1)
            add(WgradType.NORMAL, h, shape.shared_intermediate, align(tokens, 128), 1)
    return list(found.values())


@dataclass
class WarmupSummary:
    """What `dg-moe warmup --json` prints: the counts, the wall time and each failure's first line."""

    models: list[str]
    num_sms: int
    variants: int
    compiled: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)


def _note(text: str) -> None:
    print(f"dg-moe warmup: {text}", file=sys.stderr, flush=True)


def _num_sms(requested: int | None) -> int:
    if requested is not None:
        return requested
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    _note(f"no GPU visible: planning for {H100_SXM_SMS} SMs (H100 SXM); pass --num-sms for another GPU")
    return H100_SXM_SMS


def unique_variants(shapes: Iterable[MoEShape], batches: Iterable[int], num_sms: int,
                    bf16: bool = False) -> list[dict[str, int]]:
    """Every variant the shapes' layers ask for at these batch sizes, each once, in first-requested order
    (``bf16``: of the BF16 family)."""
    batches = list(batches)
    variants = [v for shape in shapes for v in layer_variants(shape, batches, num_sms, bf16)]
    return list({tuple(sorted(v.items())): v for v in variants}.values())


def describe_variant(variant: Mapping[str, object]) -> str:
    """A short label for progress lines, e.g. "MGroupedMasked N=4096 K=7168 64x128, 8 stages" (weight-gradient
    variants, whose K is run-time: "wgrad KGrouped N=7168 128x144x2B, 6 stages" for a pair sharing B, "wgrad
    BF16 KGrouped ...")."""
    pair = ""
    if "WGRAD_TYPE" in variant:
        bf16 = " BF16" if str(variant["OPERANDS"]).endswith("Bf16") else ""
        kind, k = f"wgrad{bf16} " + str(variant["WGRAD_TYPE"]).rsplit("::", 1)[-1], ""
        pair = "x2B" if variant.get("SHARE_B") else ""
    else:
        kind, k = str(variant["GEMM_TYPE"]).rsplit("::", 1)[-1], f" K={variant['SHAPE_K']}"
    return (f"{kind} N={variant['SHAPE_N']}{k} {variant['BLOCK_M']}x{variant['BLOCK_N']}{pair}, "
            f"{variant['NUM_STAGES']} stages")


def _record(summary: WarmupSummary, outcome: CompileOutcome, label: str) -> str:
    if outcome.error is not None:
        summary.failed += 1
        first_line = outcome.error.strip().splitlines()[0] if outcome.error.strip() else "nvcc failed"
        summary.failures.append({"variant": label, "error": outcome.error})
        return f"FAILED ({first_line})"
    if outcome.compiled:
        summary.compiled += 1
        return "compiled"
    summary.cached += 1
    return "cached"


def compile_with_progress(summary: WarmupSummary, variants: Sequence[Mapping[str, int]], jobs: int,
                          family: str = FAMILY, first: int = 0) -> None:
    """Compile ``variants`` of ``family`` in ``jobs`` processes, a stderr line per variant done (numbered
    from ``first`` + 1 of ``summary.variants``); fills in ``summary``, adding to its seconds."""
    start = time.perf_counter()
    for done, outcome in enumerate(compile_each(family, variants, jobs), first + 1):
        label = ("BF16 " if family == sm90_bf16_gemm.FAMILY else "") + describe_variant(variants[outcome.index])
        result = _record(summary, outcome, label)
        _note(f"[{done}/{summary.variants}] {label}: {result} in {outcome.seconds:.1f} s "
              f"({time.perf_counter() - start:.0f} s elapsed)")
    summary.seconds = round(summary.seconds + time.perf_counter() - start, 3)


def build_parser() -> CommandParser:
    """The options of `dg-moe warmup`; building it touches neither CUDA nor nvcc."""
    parser = CommandParser(prog="dg-moe warmup", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--models", default="deepseek-v3",
                      help=f"comma list of {', '.join(MODEL_SHAPES)} (default: deepseek-v3)")
    what.add_argument("--shape", type=shape_arg, metavar="H,I,E,K[,Is]",
                      help="a custom layer instead: hidden, intermediate, experts, top-k, shared intermediate")
    parser.add_argument("--batches", type=token_counts, default=list(DEFAULT_BATCHES),
                        help="token counts to cover (default 1,2,4,...,8192)")
    parser.add_argument("--num-sms", type=positive_int,
                        help=f"SM count of the serving GPU (default: this GPU's, else {H100_SXM_SMS})")
    parser.add_argument("--jobs", type=positive_int, help="parallel nvcc processes (default: one per CPU)")
    parser.add_argument("--bf16", action="store_true",
                        help="also compile the BF16 grouped GEMMs (sm90_bf16_gemm) at the same shapes")
    parser.add_argument("--wgrad", action="store_true",
                        help="also the weight-gradient GEMMs of the layer's backward (training; with --bf16 the BF16 "
                             "experts' as well)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON on stdout (variants, compiled, cached, failed, seconds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Compile the variants of the named models (or of one custom shape); 0, or 1 when a compile failed."""
    args = build_parser().parse_args(argv)
    shapes = [args.shape] if args.shape else shapes_named(args.models)
    get_toolchain()  # without nvcc: stop before planning, with the install hint
    num_sms = _num_sms(args.num_sms)
    variants = unique_variants(shapes, args.batches, num_sms)
    bf16_variants = unique_variants(shapes, args.batches, num_sms, bf16=True) if args.bf16 else []
    wgrad: list[dict[str, int | str]] = []
    if args.wgrad:
        listed = [v for shape in shapes for bf16 in (False, True)[:1 + args.bf16]
                  for v in layer_wgrad_variants(shape, args.batches, num_sms, bf16)]
        wgrad = list({tuple(sorted(v.items())): v for v in listed}.values())
    jobs = args.jobs or os.cpu_count() or 1
    total = len(variants) + len(bf16_variants) + len(wgrad)
    summary = WarmupSummary([s.name for s in shapes], num_sms, total)
    _note(f"{total} kernel variants for {', '.join(summary.models)} ({num_sms} SMs, batches "
          f"{min(args.batches)}..{max(args.batches)}), {min(jobs, max(total, 1))} parallel compiles")
    compile_with_progress(summary, variants, jobs)
    # compile_with_progress adds each family's time to summary.seconds and numbers on from ``first``.
    if bf16_variants:
        compile_with_progress(summary, bf16_variants, jobs, sm90_bf16_gemm.FAMILY, len(variants))
    if wgrad:
        compile_with_progress(summary, wgrad, jobs, WGRAD_FAMILY, len(variants) + len(bf16_variants))
    if args.json:
        print(json.dumps(asdict(summary)))
    else:
        print(f"dg-moe warmup: {summary.variants - summary.failed} of {summary.variants} variants cached in "
              f"{summary.seconds:.1f} s ({summary.compiled} compiled, {summary.cached} already cached, "
              f"{summary.failed} failed)")
    return 1 if summary.failed else 0
