"""The MoE layer shapes the benchmarks use (docs/performance.md, Model shapes), by name (bench, warmup)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class MoEShape:
    """One model's MoE layer: hidden size H, routed experts' intermediate size I, E experts, top-k,
    and the shared expert's intermediate size (None: no shared expert)."""

    name: str
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    shared_intermediate: int | None = None


# The one model list: `dg-moe warmup` and `dg-moe bench moe` both offer exactly these names.
MODEL_SHAPES = {
    "deepseek-v3": MoEShape("deepseek-v3", 7168, 2048, 256, 8, shared_intermediate=2048),
    "qwen3-235b-a22b": MoEShape("qwen3-235b-a22b", 4096, 1536, 128, 8),
    "qwen3-30b-a3b": MoEShape("qwen3-30b-a3b", 2048, 768, 128, 8),
    "mixtral-8x7b": MoEShape("mixtral-8x7b", 4096, 14336, 8, 2),
}


def token_counts(text: str) -> list[int]:
    """argparse type: positive token counts separated by commas ("1,8,128")."""
    try:
        counts = [int(c) for c in text.split(",") if c]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive token counts separated by commas (e.g. 1,8,128), got {text!r}"
        )
    return counts


def shape_arg(text: str) -> MoEShape:
    """argparse type: a custom layer "H,I,E,K[,Is]" (hidden, intermediate, experts, top-k, shared intermediate)."""
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        dims = []
    ok = len(dims) in (4, 5) and min(dims) >= 1 and dims[3] <= dims[2]
    # The FP8 scales cover 128 channels each: the layer takes H, I and Is only in whole blocks.
    if not ok or any(d % 128 for d in (dims[0], dims[1], *dims[4:])):
        raise argparse.ArgumentTypeError(
            f"expected H,I,E,K[,Is] as positive integers with H, I and Is multiples of 128 and K <= E "
            f"(e.g. 7168,2048,256,8,2048), got {text!r}"
        )
    return MoEShape("custom", *dims[:4], shared_intermediate=dims[4] if len(dims) == 5 else None)


def shapes_named(names: str, table: Mapping[str, MoEShape] = MODEL_SHAPES) -> list[MoEShape]:
    """The shapes of a comma list of model names, in any case; an unknown name raises UsageError listing the
    choices."""
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in table]
    if unknown or not wanted:
        raise UsageError(f"unknown model(s) {', '.join(unknown) or repr(names)}; "
                         f"choose from {', '.join(table)} (comma-separated)")
    return [table[n] for n in dict.fromkeys(wanted)]
