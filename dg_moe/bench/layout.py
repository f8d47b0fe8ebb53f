"""`dg-moe bench layout`: the MoE layout ops, Triton kernels against their PyTorch formulation.

GPU time (CUDA-graph replays, L2 flushed) of routing (BF16 tokens quantised into the buffer),
the SiLU-and-mul activation and the weighted reduce at DeepSeek-V3's sizes (H 7168, I 2048,
256 experts, top-8), for a decode batch (masked layout) and a prefill batch (contiguous layout).
GB/s counts each op's compulsory bytes: tokens or rows read once, buffers written once.
``--json`` records the rows (schema dg_moe.bench.layout/1), ``--plot`` draws them against the HBM bandwidth.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from .. import layout
from ..cli_args import CommandParser, require_gpu
from ..layout import BACKEND_ENV
from .machine import machine_facts
from .output import add_output_options, outputs
from .roofline import peaks
from .timing import gpu_times_us

H, INTER, EXPERTS, TOP_K = 7168, 2048, 256, 8
TOKENS = (128, 4096)
"""A decode batch (the masked layout: T <= 128) and a prefill batch (the contiguous layout)."""
SCHEMA = "dg_moe.bench.layout/1"
JSON_NAME = "bench_layout.json"


def _with_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        saved = os.environ.get(BACKEND_ENV)
        os.environ[BACKEND_ENV] = backend
        try:
            return fn()
        finally:
            if saved is None:
                del os.environ[BACKEND_ENV]
            else:
                os.environ[BACKEND_ENV] = saved
    return run


def _cases(tokens: int) -> list[tuple[str, Callable[[], object], int]]:
    g = torch.Generator(device="cuda").manual_seed(tokens)
    hidden = torch.randn(tokens, H, device="cuda", generator=g).to(torch.bfloat16)
    ids = torch.rand(tokens, EXPERTS, device="cuda", generator=g).topk(TOP_K, dim=-1).indices.int()
    weights = torch.rand(tokens, TOP_K, device="cuda", generator=g)
    entries = tokens * TOP_K
    if tokens <= 128:
        routed = layout.route_to_masked(hidden, ids, EXPERTS, tokens)
        rows = EXPERTS * tokens
        gate_up = torch.randn(EXPERTS, tokens, 2 * INTER, device="cuda", generator=g).to(torch.bfloat16)
        y = torch.randn(EXPERTS, tokens, H, device="cuda", generator=g).to(torch.bfloat16)
        return [
            (f"route_to_masked T={tokens}", lambda: layout.route_to_masked(hidden, ids, EXPERTS, tokens),
             tokens * H * 2 + rows * H),
            (f"silu_and_mul masked T={tokens}", lambda: layout.silu_and_mul_to_fp8_masked(gate_up, routed.masked_m),
             entries * 2 * INTER * 2 + rows * INTER),
            (f"reduce masked T={tokens}", lambda: layout.unpermute_reduce_masked(y, routed.inverse, weights),
             entries * H * 2 + tokens * H * 2),
        ]
    routed = layout.route_to_contiguous(hidden, ids, EXPERTS)
    rows = routed.a.shape[0]
    gate_up = torch.randn(rows, 2 * INTER, device="cuda", generator=g).to(torch.bfloat16)
    y = torch.randn(rows, H, device="cuda", generator=g).to(torch.bfloat16)
    ends = routed.grouped_layout_psum
    return [
        (f"route_to_contiguous T={tokens}", lambda: layout.route_to_contiguous(hidden, ids, EXPERTS),
         tokens * H * 2 + rows * H),
        (f"silu_and_mul contiguous T={tokens}",
         lambda: layout.silu_and_mul_to_fp8_contiguous(gate_up, ends, use_psum_layout=True),
         entries * 2 * INTER * 2 + rows * INTER),
        (f"reduce contiguous T={tokens}", lambda: layout.unpermute_reduce_contiguous(y, routed.inverse, weights),
         entries * H * 2 + tokens * H * 2),
    ]


def result_row(name: str, tokens: int, nbytes: int, triton_us: float | str, torch_us: float | str) -> dict[str, object]:
    """One op at one batch: ``op`` (its name without the batch), ``layout``, both times (or why not), the
    compulsory ``bytes``, GB/s of each timed backend and the speedup of Triton over PyTorch."""
    times = {"triton": triton_us, "torch": torch_us}
    ok = isinstance(triton_us, float) and triton_us > 0
    return {
        "label": name, "op": name.rsplit(" T=", 1)[0], "layout": "masked" if tokens <= 128 else "contiguous",
        "tokens": tokens, "bytes": nbytes, "times_us": times, "unit": "GB/s",
        "throughput": {k: nbytes / v / 1e3 for k, v in times.items() if isinstance(v, float) and v > 0},
        "speedup": torch_us / triton_us if ok and isinstance(torch_us, float) else None,
    }


def format_row(row: dict[str, object]) -> str:
    """The printed line of a row: op, both times, Triton's GB/s, the speedup."""
    def cell(value: object, width: int, digits: int) -> str:
        if isinstance(value, float):
            return f"{value:>{width}.{digits}f}"
        return f"{'-' if value is None else value:>{width}}"  # a failed call's reason, or no value

    times, speedup = row["times_us"], row["speedup"]
    return (f"{row['label']:<32} {cell(times['triton'], 10, 1)} {cell(times['torch'], 10, 1)} "
            f"{cell(row['throughput'].get('triton'), 11, 0)} {cell(speedup, 8, 2)}")


def document(meta: dict[str, object], rows: Sequence[dict[str, object]]) -> dict[str, object]:
    """The JSON written by ``--json``: the rows, with the machine, the sizes and the peaks."""
    return {"schema": SCHEMA, "meta": meta, "results": list(rows)}


def build_parser() -> CommandParser:
    """The options of `dg-moe bench layout` (outputs only); building it touches no GPU, so --help works anywhere."""
    parser = CommandParser(prog="dg-moe bench layout", description=__doc__.splitlines()[0])
    add_output_options(parser, JSON_NAME)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print one row per op and batch: microseconds and GB/s of both implementations."""
    out = outputs(build_parser().parse_args(argv), JSON_NAME)
    require_gpu("run it on a machine with a CUDA GPU and a CUDA build of torch", sm90=False)
    name = torch.cuda.get_device_name()
    print(f"GPU: {name}; DeepSeek-V3 sizes (H {H}, I {INTER}, E {EXPERTS}, top-{TOP_K})")
    print(f"{'op':<32} {'triton us':>10} {'torch us':>10} {'triton GB/s':>11} {'speedup':>8}")
    rows = []
    for tokens in TOKENS:
        for label, fn, nbytes in _cases(tokens):
            triton_us, torch_us = gpu_times_us([_with_backend("triton", fn), _with_backend("torch", fn)])
            rows.append(result_row(label, tokens, nbytes, triton_us, torch_us))
            print(format_row(rows[-1]), flush=True)
    facts = machine_facts()
    meta = {**facts, "sizes": {"hidden": H, "intermediate": INTER, "experts": EXPERTS, "top_k": TOP_K},
            "tokens": list(TOKENS), "roofline": peaks(name, facts.get("sms"))}
    out.write(document(meta, rows))
    if out.announce():
        print(out.announce())
    return 0
