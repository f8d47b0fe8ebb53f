"""`dg-moe demo`: one DeepSeek-V3-shaped MoE layer through ``dg_moe.fused_moe``, in both layouts.

Builds a layer from random BF16 weights quantised to FP8 (recipe 128x128), routes tokens with a
softmax top-k, runs the routed experts plus one shared expert through the contiguous (prefill)
and masked (decode) layouts, and compares each result with a float64 MoE computed from the same
dequantised FP8 tokens and weights (the numeric contract: global similarity error < 1e-3). It also
reports the distance to the unquantised BF16 model, for information. It runs on an SM90 GPU when
the kernels are available (all 256 experts), else on the CPU reference path with a few experts,
and says which.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cli_args import require_gpu
from .errors import DgMoeError, UsageError
from .layout import per_token_cast_to_fp8
from .moe import SharedExpert, fused_moe, quantize_expert_weights, reference_moe, select_mode
from .reference.metrics import calc_diff

SIMILARITY_LIMIT = 1e-3


@dataclass(frozen=True)
class DemoShape:
    """One MoE layer: DeepSeek-V3's expert shapes (hidden 7168, intermediate 2048, one shared expert,
    routed scaling 2.5) with ``experts`` of its 256 routed experts."""

    tokens: int = 64
    hidden: int = 7168
    intermediate: int = 2048
    experts: int = 256
    top_k: int = 8
    shared_intermediate: int = 2048
    routed_scaling_factor: float = 2.5


GPU_SHAPE = DemoShape()
# The float64 reference GEMMs make the CPU path slow: four experts keep it to seconds.
CPU_SHAPE = DemoShape(tokens=32, experts=4, top_k=2)


@dataclass(frozen=True)
class ModeResult:
    """One layout's run: its similarity errors and the seconds one warm call took."""

    mode: str
    similarity_error: float
    bf16_similarity_error: float
    seconds: float


def _random_weights(shape: tuple[int, ...], fan_in: int, device: torch.device) -> torch.Tensor:
    # Drawn in BF16 and scaled in place: 256 experts' float32 weights would not fit beside them.
    return torch.randn(shape, dtype=torch.bfloat16, device=device).div_(fan_in**0.5)


def _timed(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        run()  # the first call compiles the kernels
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def run_demo(device: torch.device, shape: DemoShape = CPU_SHAPE, seed: int = 0) -> list[ModeResult]:
    """Run the layer on ``device`` in the contiguous and masked layouts; one result per layout."""
    torch.manual_seed(seed)
    t, h, i, e, k, s = (shape.tokens, shape.hidden, shape.intermediate, shape.experts, shape.top_k,
                        shape.shared_intermediate)
    hidden = torch.randn(t, h, device=device, dtype=torch.bfloat16)
    w13, w2 = _random_weights((e, 2 * i, h), h, device), _random_weights((e, h, i), i, device)
    shared_w13, shared_w2 = _random_weights((2 * s, h), h, device), _random_weights((h, s), s, device)
    q13, q2 = quantize_expert_weights(w13), quantize_expert_weights(w2)
    shared = SharedExpert(*quantize_expert_weights(shared_w13), *quantize_expert_weights(shared_w2))
    topk_weights, topk_ids = torch.randn(t, e, device=device).softmax(-1).topk(k, dim=-1)
    rsf = shape.routed_scaling_factor

    expected = reference_moe(per_token_cast_to_fp8(hidden), q13, q2, topk_ids, topk_weights,
                             routed_scaling_factor=rsf,
                             shared_expert=((shared.w13, shared.w13_scale), (shared.w2, shared.w2_scale)))
    unquantised = reference_moe(hidden, w13, w2, topk_ids, topk_weights, routed_scaling_factor=rsf,
                                shared_expert=(shared_w13, shared_w2))
    results = []
    for mode in ("contiguous", "masked"):
        out, seconds = _timed(lambda mode=mode: fused_moe(hidden, *q13, *q2, topk_ids, topk_weights, mode=mode,
                                                          routed_scaling_factor=rsf, shared_expert=shared),
                              device)
        results.append(ModeResult(mode, calc_diff(out, expected), calc_diff(out, unquantised), seconds))
    return results


def pick_device() -> torch.device:
    """The first CUDA device if it is SM90, else the CPU."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names: auto (see :func:`pick_device`), cpu, cuda or cuda:N. Raises UsageError
    for any other name, DeviceNotAvailableError or UnsupportedArchitectureError for a GPU that is missing or not
    SM90 (the kernels' only architecture)."""
    if name == "auto":
        return pick_device()
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists every device type it knows, most of which dg_moe cannot use
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r} is not a device dg-moe demo runs on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        require_gpu("use --device cpu (the reference implementation) or --device auto", index=device.index)
    return device


def _describe(shape: DemoShape) -> str:
    return (f"{shape.tokens} tokens, hidden {shape.hidden}, intermediate {shape.intermediate}, "
            f"{shape.experts} routed experts, top-{shape.top_k}, 1 shared expert (intermediate "
            f"{shape.shared_intermediate}), routed scaling {shape.routed_scaling_factor}")


def main(device_name: str = "auto") -> int:
    """Entry of `dg-moe demo`; prints the device, accuracy and time, returns a process exit code."""
    device = resolve_device(device_name)
    shape = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    print("dg-moe demo: fused MoE layer (dg_moe.fused_moe), DeepSeek-V3 expert shapes, FP8 (1,128,128) weights")
    try:
        results = run_demo(device, shape)
    except DgMoeError as err:
        if device.type != "cuda" or device_name != "auto":
            raise
        print(f"  GPU path unavailable ({err}); falling back to the CPU reference path")
        device, shape = torch.device("cpu"), CPU_SHAPE
        results = run_demo(device, shape)
    path = "SM90 kernels" if device.type == "cuda" else "CPU reference implementation"
    print(f"  layer: {_describe(shape)}")
    print(f"  device: {device} ({path})")
    print(f"  mode auto would pick {select_mode('auto', shape.tokens)} for {shape.tokens} tokens")
    ok = True
    for result in results:
        passed = result.similarity_error < SIMILARITY_LIMIT
        ok = ok and passed
        print(f"  {result.mode:>10}: global similarity error vs float64 reference: {result.similarity_error:.2e} "
              f"({'OK' if passed else 'FAIL'}, threshold {SIMILARITY_LIMIT:.0e}); time: {result.seconds * 1e3:.1f} ms")
    print(f"  vs the unquantised BF16 layer (float64, FP8 rounding of weights and tokens included): "
          f"{results[0].bf16_similarity_error:.2e} (information only)")
    return 0 if ok else 1
