"""The MoE layer shapes the benchmarks use (docs/performance.md, Model shapes), by name (bench, warmup)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass


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
        raise argparse.ArgumentTypeError(f"expected positive token counts separated by commas, got {text!r}")
    return counts


def shapes_named(parser: argparse.ArgumentParser, names: str, table: Mapping[str, MoEShape]) -> list[MoEShape]:
    """The shapes of a comma list of model names; an unknown name is a usage error that lists the choices."""
    unknown = [n for n in names.split(",") if n not in table]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(table)}")
    return [table[n] for n in names.split(",")]
