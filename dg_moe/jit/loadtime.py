"""Time how long a fresh process takes to load an already-cached kernel.

``python -m dg_moe.jit.loadtime`` makes sure the sm90_scale kernel is cached (compiling it if
needed), then starts new Python processes that import torch (when installed) and dg_moe.jit and
time one ``build()`` each: the cost a serving process pays per kernel at start-up. Only that call
is timed, not the imports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping

from .runtime import build
from .source import TemplateArg

DEFAULT_FAMILY = "sm90_scale"
DEFAULT_ARGS: dict[str, TemplateArg] = {
    "DTYPE": "__nv_bfloat16",
    "BLOCK_M": 32,
    "BLOCK_N": 128,
    "STAGES": 4,
    "THREADS": 128,
}

_CHILD = """
import json, sys, time
try:
    import torch  # noqa: F401  (a serving process has it loaded, with libstdc++)
except ImportError:
    pass
from dg_moe.jit import build, stats
family, args = json.loads(sys.argv[1])
start = time.perf_counter()
build(family, args)
seconds = time.perf_counter() - start
print(json.dumps({"ms": seconds * 1e3, "stats": stats()}))
"""


def fresh_process_load_ms(
    family: str = DEFAULT_FAMILY, template_args: Mapping[str, TemplateArg] | None = None, runs: int = 3
) -> list[dict]:
    """Compile (or find) the kernel here, then time ``build`` in ``runs`` new processes.

    Returns one ``{"ms": float, "stats": dict}`` per process; ``stats["compiles"]`` is 0 when the
    cached kernel was loaded as intended.
    """
    args = dict(DEFAULT_ARGS if template_args is None else template_args)
    build(family, args)
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps([family, args])],
            capture_output=True, text=True, check=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> None:
    """Print the fresh-process load time of the cached sm90_scale kernel (or of ``--family``/``--args``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default=DEFAULT_FAMILY)
    parser.add_argument("--args", default=None, help="template arguments as JSON, e.g. '{\"BLOCK_M\": 32}'")
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args(argv)
    template_args = json.loads(opts.args) if opts.args else None
    results = fresh_process_load_ms(opts.family, template_args, opts.runs)
    times = sorted(r["ms"] for r in results)
    compiled = sum(r["stats"]["compiles"] for r in results)
    print(
        f"{opts.family}: cached kernel loaded in a fresh process in {times[len(times) // 2]:.2f} ms "
        f"(median of {len(times)}; min {times[0]:.2f}, max {times[-1]:.2f}; compiles in children: {compiled})"
    )


if __name__ == "__main__":
    main()
