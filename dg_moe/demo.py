"""`dg-moe demo`: one DeepSeek-style MoE layer through the public grouped-GEMM ops.

Routes tokens to experts (top-k), builds the contiguous (prefill) layout, runs gate/up and
down projections with `m_grouped_fp8_gemm_nt_contiguous`, and compares with a float64 MoE
computed from the same dequantised weights. It runs on an SM90 GPU when the kernels are
available, else on the CPU reference path, and says which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import layout
from .errors import DgMoeError
from .ops import m_grouped_fp8_gemm_nt_contiguous
from .reference.metrics import calc_diff


@dataclass(frozen=True)
class DemoShape:
    """A small routed-expert MoE layer: Qwen3-30B-A3B's expert shapes with 8 of its 128 experts."""

    tokens: int = 64
    hidden: int = 2048
    intermediate: int = 768
    experts: int = 8
    top_k: int = 2


def _quantise_experts(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [layout.per_block_cast_to_fp8(w[e]) for e in range(w.size(0))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _dequantise_experts(w_fp8: torch.Tensor, sf: torch.Tensor) -> torch.Tensor:
    expanded = sf.repeat_interleave(128, dim=1).repeat_interleave(128, dim=2)
    return w_fp8.double() * expanded[:, : w_fp8.size(1), : w_fp8.size(2)].double()


def _contiguous_layout(topk_ids: torch.Tensor, experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row order (token index per row, -1 on padding) and per-row expert ids, 128-row padded segments."""
    alignment = layout.get_mk_alignment_for_contiguous_layout()
    flat = topk_ids.flatten()
    token_of_slot = torch.arange(flat.numel(), device=flat.device) // topk_ids.size(1)
    rows, groups = [], []
    for e in range(experts):
        tokens = token_of_slot[flat == e]
        padded = layout.align(tokens.numel(), alignment)
        rows.append(F.pad(tokens, (0, padded - tokens.numel()), value=-1))
        groups.append(torch.where(torch.arange(padded, device=flat.device) < tokens.numel(), e, -1))
    return torch.cat(rows), torch.cat(groups).int()


def run_demo(device: torch.device, shape: DemoShape = DemoShape(), seed: int = 0) -> dict[str, float]:
    """Run the MoE layer on ``device``; returns similarity to the float64 reference and seconds taken."""
    torch.manual_seed(seed)
    t, h, i, e, k = shape.tokens, shape.hidden, shape.intermediate, shape.experts, shape.top_k
    hidden = torch.randn(t, h, device=device, dtype=torch.bfloat16)
    w13, w13_sf = _quantise_experts(torch.randn(e, 2 * i, h, device=device) / h**0.5)
    w2, w2_sf = _quantise_experts(torch.randn(e, h, i, device=device) / i**0.5)
    logits = torch.randn(t, e, device=device)
    topk_weights, topk_ids = logits.softmax(-1).topk(k, dim=-1)

    start = time.perf_counter()
    token_of_row, group_of_row = _contiguous_layout(topk_ids, e)
    valid = token_of_row >= 0
    x = torch.zeros(token_of_row.numel(), h, device=device, dtype=torch.bfloat16)
    x[valid] = hidden[token_of_row[valid]]
    gate_up = torch.empty(x.size(0), 2 * i, device=device, dtype=torch.bfloat16)
    m_grouped_fp8_gemm_nt_contiguous(layout.per_token_cast_to_fp8(x), (w13, w13_sf), gate_up, group_of_row)
    act = F.silu(gate_up[:, :i].float()) * gate_up[:, i:].float()
    down = torch.empty(x.size(0), h, device=device, dtype=torch.bfloat16)
    m_grouped_fp8_gemm_nt_contiguous(layout.per_token_cast_to_fp8(act), (w2, w2_sf), down, group_of_row)
    slot_weight = torch.zeros(token_of_row.numel(), device=device)
    for e_id in range(e):
        rows = (group_of_row == e_id).nonzero().flatten()
        hit = (topk_ids[token_of_row[rows]] == e_id).float()
        slot_weight[rows] = (topk_weights[token_of_row[rows]] * hit).sum(-1)
    out = torch.zeros(t, h, device=device, dtype=torch.float32)
    out.index_add_(0, token_of_row[valid], down[valid].float() * slot_weight[valid, None])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    # The float64 reference starts from the dequantised FP8 inputs the GEMMs consumed (per-token
    # quantisation is row-wise, so quantising before or after the permutation is the same).
    w13_ref, w2_ref = _dequantise_experts(w13, w13_sf), _dequantise_experts(w2, w2_sf)
    hidden_fp8, hidden_sf = layout.per_token_cast_to_fp8(hidden)
    hidden_ref = hidden_fp8.double() * hidden_sf.double().repeat_interleave(128, dim=1)[:, :h]
    ref = torch.zeros(t, h, dtype=torch.float64, device=device)
    for slot in range(k):
        for e_id in range(e):
            sel = topk_ids[:, slot] == e_id
            if bool(sel.any()):
                y = hidden_ref[sel] @ w13_ref[e_id].T
                z = (F.silu(y[:, :i]) * y[:, i:]) @ w2_ref[e_id].T
                ref[sel] += topk_weights[sel, slot, None].double() * z
    return {"similarity_error": calc_diff(out, ref), "seconds": seconds}


def pick_device() -> torch.device:
    """The first CUDA device if it is SM90, else the CPU."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
        return torch.device("cuda")
    return torch.device("cpu")


def main(device_name: str = "auto") -> int:
    """Entry of `dg-moe demo`; prints the device, accuracy and time, returns a process exit code."""
    shape = DemoShape()
    device = pick_device() if device_name == "auto" else torch.device(device_name)
    print(
        f"dg-moe demo: MoE layer, {shape.tokens} tokens, hidden {shape.hidden}, intermediate "
        f"{shape.intermediate}, {shape.experts} experts, top-{shape.top_k}, FP8 (1,128,128) weights"
    )
    try:
        result = run_demo(device, shape)
    except DgMoeError as err:
        if device.type != "cuda" or device_name != "auto":
            raise
        print(f"  GPU path unavailable ({err}); falling back to the CPU reference path")
        device = torch.device("cpu")
        result = run_demo(device, shape)
    path = "SM90 kernels" if device.type == "cuda" else "CPU reference implementation"
    ok = result["similarity_error"] < 1e-3
    print(f"  device: {device} ({path})")
    print(f"  global similarity error vs float64 reference: {result['similarity_error']:.2e} "
          f"({'OK' if ok else 'FAIL'}, threshold 1e-3)")
    print(f"  time: {result['seconds'] * 1e3:.1f} ms")
    return 0 if ok else 1
