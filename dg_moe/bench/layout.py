"""`dg-moe bench layout`: the MoE layout ops, Triton kernels against their PyTorch formulation.

GPU time (CUDA-graph replays, L2 flushed) of routing (BF16 tokens quantised into the buffer),
the SiLU-and-mul activation and the weighted reduce at DeepSeek-V3's sizes (H 7168, I 2048,
256 experts, top-8), for a decode batch (masked layout) and a prefill batch (contiguous layout).
GB/s counts each op's compulsory bytes: tokens or rows read once, buffers written once.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from .. import layout
from ..cli_args import CommandParser, require_gpu
from ..layout import BACKEND_ENV
from .timing import gpu_times_us

H, INTER, EXPERTS, TOP_K = 7168, 2048, 256, 8


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


def build_parser() -> CommandParser:
    """`dg-moe bench layout` takes no options; its parser gives --help and rejects strays, with no GPU."""
    return CommandParser(prog="dg-moe bench layout", description=__doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    """Print one row per op and batch: microseconds and GB/s of both implementations."""
    build_parser().parse_args(argv)
    require_gpu("run it on a machine with a CUDA GPU and a CUDA build of torch", sm90=False)
    print(f"GPU: {torch.cuda.get_device_name()}; DeepSeek-V3 sizes (H {H}, I {INTER}, E {EXPERTS}, top-{TOP_K})")
    print(f"{'op':<32} {'triton us':>10} {'torch us':>10} {'triton GB/s':>11} {'speedup':>8}")
    for tokens in (128, 4096):
        for name, fn, nbytes in _cases(tokens):
            triton_us, torch_us = gpu_times_us([_with_backend("triton", fn), _with_backend("torch", fn)])
            ok = isinstance(triton_us, float) and triton_us > 0
            gbps = f"{nbytes / triton_us / 1e3:11.0f}" if ok else f"{'-':>11}"
            speedup = f"{torch_us / triton_us:8.2f}" if ok and isinstance(torch_us, float) else f"{'-':>8}"
            print(f"{name:<32} {triton_us if not ok else f'{triton_us:10.1f}':>10} "
                  f"{torch_us if isinstance(torch_us, str) else f'{torch_us:10.1f}':>10} {gbps} {speedup}", flush=True)
    return 0
