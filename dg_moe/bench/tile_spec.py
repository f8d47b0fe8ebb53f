"""``--tile`` specifications of the A/B tools: a forced GEMM configuration written BMxBN[xMC[B]][sST]."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

_TILE = re.compile(r"(\d+)x(\d+)(?:x([12])(B?))?(?:s(\d+))?")


@dataclass(frozen=True)
class TileSpec:
    """One forced variant: tile rows and columns, cluster size (1 or 2), whether the cluster shares B
    (else A), and the stage count (0: the most that fit)."""

    block_m: int
    block_n: int
    multicast: int = 1
    shares_b: bool = False
    stages: int = 0

    def name(self, stages: int) -> str:
        return f"{self.block_m}x{self.block_n}x{self.multicast}{'B' if self.shares_b else ''}s{stages}"


def parse_tile(text: str) -> TileSpec:
    """``128x192x2B`` (a 2-CTA cluster sharing B), ``128x128x2`` (sharing A), ``256x128s3`` (3 stages)."""
    match = _TILE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--tile {text!r}: expected BMxBN[xMC[B]][sST], e.g. 128x192x2B")
    bm, bn, mc, shares_b, st = match.groups()
    return TileSpec(int(bm), int(bn), int(mc or 1), shares_b == "B", int(st or 0))
