"""Several tools/bench_wgrad.py logs side by side (one per kernel tree, e.g. the runs of tools/gpu_next.sh's
wgradab step), so that an A/B of kernel trees reads as one table: per case, dg_moe's time in each log, its
speed over the first log's (> 1: faster than the first tree) and DeepGEMM's time over dg_moe's in that log.

    python3 tools/wgrad_ab_table.py FIRST.log OTHER.log [...]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

# bench_wgrad's case label is padded to 50 columns; each library's cell ends in its time in us, in parentheses.
LABEL_WIDTH = 50
_TIME = r"{name}\s+\S+\s+\(\s*([0-9.]+)\)"


def case_times(text: str) -> dict[str, tuple[float | None, float | None]]:
    """(dg_moe us, DeepGEMM us) per case label of one bench_wgrad log; None where a library has no time."""
    times: dict[str, tuple[float | None, float | None]] = {}
    for line in text.splitlines():
        if not line.startswith(("dense ", "k_grouped ")) or " | " not in line:
            continue
        ours = re.search(_TIME.format(name="dg_moe"), line)
        theirs = re.search(_TIME.format(name="deepgemm"), line)
        times[line[:LABEL_WIDTH].rstrip()] = (float(ours.group(1)) if ours else None,
                                              float(theirs.group(1)) if theirs else None)
    return times


def _cell(ours: float | None, theirs: float | None, first: float | None) -> str:
    if ours is None:
        return "-"
    speedup = f"{first / ours:5.2f}" if first else f"{'-':>5}"
    peer = f"{theirs / ours:5.2f}" if theirs else f"{'-':>5}"
    return f"{ours:8.1f} {speedup} {peer}"


def table(logs: Sequence[tuple[str, str]]) -> str:
    """One row per case of the first log, one cell per (name, text) log."""
    parsed = [case_times(text) for _, text in logs]
    header = f"{'case':<{LABEL_WIDTH}} " + " | ".join(f"{name[:20]:>20}" for name, _ in logs)
    lines = [header, f"{'(us, speed over the first log, DG/ours)':<{LABEL_WIDTH}} " +
             " | ".join(f"{'us  first  DG':>20}" for _ in logs)]
    for label, (first, _) in parsed[0].items():
        cells = [_cell(*each.get(label, (None, None)), first) for each in parsed]
        lines.append(f"{label:<{LABEL_WIDTH}} " + " | ".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path, help="bench_wgrad logs; the first is the baseline")
    args = parser.parse_args(argv)
    print(table([(log.stem, log.read_text()) for log in args.logs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
