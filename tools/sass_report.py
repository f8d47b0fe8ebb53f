"""ptxas resources and SASS of SM90 FP8 GEMM variants, for comparing two kernel source trees (no GPU).

    python tools/sass_report.py [--base DIR] [--out FILE.json]

Compiles a fixed set of variants (every tile shape, layout, multicast and the narrow tail) from the
package's csrc and, with --base, from another tree searched first (e.g. a `git archive` of the
previous commit's dg_moe/csrc), in a private cache. For each it reports registers, stack and spill
bytes (cuobjdump -res-usage), the SASS instruction count, QGMMA / LDL / STL counts, the size and
opcode counts of each K loop (innermost loops holding QGMMA), and whether the SASS (addresses
stripped) is identical between the two trees. Needs cuobjdump on PATH (nvidia-cuda-cuobjdump wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dg_moe.jit import compile_only
from dg_moe.kernels.sm90_fp8_gemm import FAMILY, GemmType, template_args
from dg_moe.kernels.sm90_fp8_gemm.heuristic import GemmConfig, max_stages

# (layout, BLOCK_M, BLOCK_N, multicast, N, K[, shares B]): each tile path of the kernel at least once.
VARIANTS = [
    (GemmType.NORMAL, 256, 128, 1, 4096, 7168),
    (GemmType.NORMAL, 256, 128, 2, 7168, 2048),
    (GemmType.NORMAL, 128, 128, 1, 2112, 7168),  # narrow last column block
    (GemmType.NORMAL, 128, 192, 1, 4096, 7168),  # two SFB blocks per tile
    (GemmType.NORMAL, 128, 64, 1, 24576, 1536),
    (GemmType.NORMAL, 64, 32, 1, 7168, 16384),
    (GemmType.CONTIGUOUS, 128, 128, 1, 4096, 7168),
    (GemmType.CONTIGUOUS_PSUM, 128, 128, 1, 7168, 2048),
    (GemmType.CONTIGUOUS_PSUM, 128, 192, 1, 4096, 7168),
    (GemmType.MASKED, 64, 128, 1, 4096, 7168),
    (GemmType.MASKED, 128, 128, 1, 7168, 2048),
    (GemmType.NORMAL, 128, 192, 2, 2112, 7168, True),
    (GemmType.CONTIGUOUS, 128, 192, 2, 4096, 7168, True),
    (GemmType.CONTIGUOUS_PSUM, 128, 192, 2, 7168, 2048, True),
    (GemmType.MASKED, 128, 128, 2, 4096, 7168, True),
]

_ADDRESS = re.compile(r"/\*([0-9a-f]{4,})\*/")
_BRANCH = re.compile(r"\bBRA(?:\.\w+)*\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")
_OPCODE = re.compile(r"^\s*(?:/\*[0-9a-f]+\*/)?\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _args(variant) -> dict:
    gemm_type, block_m, block_n, multicast, n, k, *shares_b = variant
    config = GemmConfig(block_m, block_n, max_stages(block_m, block_n, k), multicast, 0, 0.0, bool(shares_b))
    return template_args(gemm_type, config, n, k)


def _compile(job: tuple[dict, str | None]) -> str:
    return str(compile_only(FAMILY, job[0], source_root=job[1]))


def _sass_lines(library: str) -> list[str]:
    text = subprocess.run(["cuobjdump", "-sass", library], capture_output=True, text=True, check=True).stdout
    return [line for line in text.splitlines() if _OPCODE.match(line) and "/*" in line]


def _k_loops(lines: list[str], opcodes: list[str]) -> list[dict]:
    """Innermost loops (a backward branch and its target) holding QGMMA, the K loops: instruction count and
    opcode histogram of each."""
    index_of = {int(_ADDRESS.search(line).group(1), 16): i for i, line in enumerate(lines)}
    spans = []
    for i, line in enumerate(lines):
        branch = _BRANCH.search(line)
        if branch is None or branch.group(1) is None:
            continue
        start = index_of.get(int(branch.group(1), 16))
        if start is None or start > i or not any(op.startswith("QGMMA") for op in opcodes[start:i + 1]):
            continue
        spans.append((start, i + 1))
    innermost = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]
    return [{"instructions": b - a, "opcodes": dict(sorted(Counter(op.split(".")[0] for op in opcodes[a:b]).items()))}
            for a, b in innermost]


def describe(library: str) -> dict:
    """Resources and instruction statistics of the one GEMM kernel in ``library``."""
    usage = subprocess.run(["cuobjdump", "-res-usage", library], capture_output=True, text=True, check=True).stdout
    reg, stack, shared, local = (int(x) for x in _RESOURCES.search(usage).groups())
    lines = _sass_lines(library)
    opcodes = [_OPCODE.match(line).group(1) for line in lines]
    counts = Counter(op.split(".")[0] for op in opcodes)
    return {
        "k_loops": _k_loops(lines, opcodes),
        "registers": reg, "stack": stack, "local": local, "static_shared": shared,
        "instructions": len(opcodes), "qgmma": counts["QGMMA"], "ldl": counts["LDL"], "stl": counts["STL"],
        "sass": [_ADDRESS.sub("", line).strip() for line in lines],
    }


def _sizes(report: dict) -> str:
    return "/".join(str(loop["instructions"]) for loop in report["k_loops"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="kernel source tree to compare against")
    parser.add_argument("--out", type=Path, help="write the report (SASS included) as JSON here")
    parser.add_argument("--only", type=int, nargs="*", help="indices into VARIANTS to report (default: all)")
    args = parser.parse_args()
    variants = [VARIANTS[i] for i in args.only] if args.only else VARIANTS
    os.environ.setdefault("DG_MOE_CACHE_DIR", tempfile.mkdtemp(prefix="dg_moe_sass_"))
    roots = [None] + ([str(args.base.resolve())] if args.base else [])
    jobs = [(_args(v), root) for v in variants for root in roots]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        libraries = list(pool.map(_compile, jobs))
    report = []
    print(f"{'variant':<42} {'regs':>4} {'spill':>5} {'insts':>6} {'qgmma':>5} {'K loops':>12}  vs base")
    for i, variant in enumerate(variants):
        now = describe(libraries[i * len(roots)])
        base = describe(libraries[i * len(roots) + 1]) if args.base else None
        gemm_type, block_m, block_n, multicast, n, k, *shares_b = variant
        name = f"{gemm_type.name} {block_m}x{block_n}x{multicast}{'B' if shares_b else ''} N={n} K={k}"
        if base is None:
            verdict = ""
        elif base["sass"] == now["sass"]:
            verdict = "identical SASS"
        else:
            same_loops = base["k_loops"] == now["k_loops"]
            verdict = (f"SASS differs; base regs {base['registers']} spill {base['local']} insts "
                       f"{base['instructions']}, K loops {_sizes(base)} ({'same' if same_loops else 'DIFFERENT'} "
                       "opcode counts)")
        print(f"{name:<42} {now['registers']:>4} {now['local']:>5} {now['instructions']:>6} {now['qgmma']:>5} "
              f"{_sizes(now):>12}  {verdict}")
        report.append({"variant": name, "now": now, "base": base})
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
