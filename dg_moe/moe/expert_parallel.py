"""Expert parallelism over ``torch.distributed``: each rank of a process group holds a slice of the
experts and runs them, through the single-process layer's own paths, on the tokens the other ranks
send it (docs/moe-layer.md, "Expert parallelism").

Rank ``r`` of ``W`` owns the global experts ``[r * E_l, (r + 1) * E_l)``, ``E_l = w13.shape[0]``.
One call moves each token once to every rank that owns at least one of its top-k experts, as
DeepEP's normal dispatch does:

1. dispatch: per destination rank, the token's FP8 row (quantised 1x128 once, at the source), its
   float32 scales, its k expert ids made local to that rank (-1 for a slot owned elsewhere) and its k
   float32 weights (``routed_scaling_factor`` folded in), packed into one byte row; the row counts are
   exchanged first (``all_to_all_single`` of a [W] tensor), then the rows (one ``all_to_all_single``,
   variable splits);
2. experts: the received rows, grouped by source rank, go through the contiguous (or masked) path of
   :func:`~dg_moe.moe.fused_moe` on the rank's experts, which weights and sums each row's local slots;
3. combine: each bf16 partial sum goes back to its token's rank (``all_to_all_single``, the splits
   reversed), which adds the ranks' partials in float32 in rank order, rounds once to bf16 and adds
   the shared expert, computed locally on the rank's own tokens.

Reading the counts on the host (the splits) synchronises; that suits prefill. With ``capacity`` every
buffer is fixed-size and nothing is read on the host (the decode form); capturing it in a CUDA graph
over NCCL is the next step (docs/moe-layer.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..layout.quant import per_token_cast_to_fp8_unchecked
from . import layer_checks
from .contiguous import routed_experts_contiguous
from .fused import Mode, select_mode
from .masked import default_max_m, routed_experts_masked
from .shared import SharedExpert, shared_expert_forward

_FN = "expert_parallel_moe"


def expert_parallel_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    mode: Mode = "contiguous",
    routed_scaling_factor: float = 1.0,
    shared_expert: SharedExpert | None = None,
    capacity: int | None = None,
) -> torch.Tensor:
    """``fused_moe`` over the experts of every rank of ``group``; a collective: every rank calls it.

    hidden: bfloat16 [T, H], this rank's tokens (T may differ between ranks, 0 included).
    w13, w13_scale, w2, w2_scale: this rank's slice of the experts, shaped as ``fused_moe`` takes them
        ([E_l, 2I, H], ...); rank r holds the global experts [r*E_l, (r+1)*E_l), E_l equal on every rank.
    topk_ids: int [T, k], *global* expert ids in [0, W*E_l), -1 for a slot routed nowhere.
    topk_weights: float [T, k], used as given.
    group: the process group (default: the world); NCCL for CUDA tensors, gloo for CPU ones.
    mode: the layout the rank-local experts run: "contiguous" (default), "masked" or "auto", chosen on the
        number of rows the rank received (masked with ``max_m`` = that number: nothing is dropped).
    routed_scaling_factor, shared_expert: as in ``fused_moe``; the shared expert runs on the source rank.
    capacity: None (default) sizes the exchange from the counts, read on the host. An int C >= T, the same
        on every rank, makes every buffer fixed-size instead: each rank sends every destination a block of
        C rows (a token's row with the ids local to that destination, all -1 where it owns none of them;
        padding rows all -1) through equal-split exchanges, the receiver runs [W*C] rows, and the source
        adds the W partials of each token. No host read, no count exchange, every shape fixed by (C, W):
        the decode form (W*C rows each way). Same bits as the counted exchange.

    Returns bfloat16 [T, H], this rank's tokens in their order. The result equals ``fused_moe`` on the
    full weights and routing, up to the bf16 rounding of each rank's partial sum (bitwise where a
    token's experts are on one rank).
    """
    world = dist.get_world_size(group)
    num_local = w13.shape[0] if isinstance(w13, torch.Tensor) and w13.dim() == 3 else 0
    local_view = topk_ids.remainder(max(num_local, 1)).masked_fill(topk_ids < 0, -1) \
        if isinstance(topk_ids, torch.Tensor) else topk_ids
    # The single-process checks, on ids folded into [0, E_l): dtypes, shapes, devices, H and I, the mode.
    dims = layer_checks.fused_moe_args(_FN, hidden, w13, w13_scale, w2, w2_scale, local_view, topk_weights, mode,
                                       None, routed_scaling_factor, shared_expert)
    _check_global_ids(topk_ids, num_local * world)
    layer_checks.distinct_experts(_FN, topk_ids)
    num_tokens, h = dims.num_tokens, hidden.shape[1]
    top_k = topk_ids.shape[1]
    device = hidden.device

    x, sf = per_token_cast_to_fp8_unchecked(hidden)
    weights = topk_weights.float() * routed_scaling_factor

    owner = torch.where(topk_ids >= 0, topk_ids.div(num_local, rounding_mode="floor"), -1)  # [T, k]
    if capacity is not None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < max(num_tokens, 1):
            raise ValueError(f"{_FN}: capacity must be an int >= the {num_tokens} tokens of this rank (and >= 1), "
                             f"the same on every rank; got {capacity!r}")
        out = _fixed_capacity(x, sf, weights, topk_ids, owner, (w13, w13_scale), (w2, w2_scale), group, world,
                              capacity, mode)
        if shared_expert is not None:
            out.add_(shared_expert_forward((x, sf), shared_expert))
        return out

    # Dispatch: a (token, destination) pair per rank owning one of the token's experts, grouped by
    # destination, tokens in order within a destination.
    goes_to = (owner.unsqueeze(-1) == torch.arange(world, device=device)).any(dim=1)  # [T, W]
    pairs = goes_to.t().nonzero()  # [N, 2] (destination, token), destination-major
    dest, token = pairs[:, 0], pairs[:, 1]
    send_counts = goes_to.sum(dim=0)  # int64 [W]
    ids = topk_ids[token].long()
    local_ids = torch.where(owner[token] == dest.unsqueeze(1), ids - dest.unsqueeze(1) * num_local, -1)
    send = _pack([x[token], sf[token], local_ids.to(torch.int32), weights[token]])

    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send_splits, recv_splits = send_counts.tolist(), recv_counts.tolist()
    recv = send.new_empty(sum(recv_splits), send.shape[1])
    dist.all_to_all_single(recv, send, recv_splits, send_splits, group=group)
    rx, rsf, rids, rweights = _unpack(recv, [(torch.float8_e4m3fn, h), (torch.float32, sf.shape[1]),
                                             (torch.int32, top_k), (torch.float32, top_k)])

    # The rank's experts on what it received: the single-process layer's own paths.
    received = recv.shape[0]
    if select_mode(mode, received) == "masked":
        partial, _ = routed_experts_masked((rx, rsf), (w13, w13_scale), (w2, w2_scale), rids, rweights,
                                           default_max_m(received))
    else:
        partial = routed_experts_contiguous((rx, rsf), (w13, w13_scale), (w2, w2_scale), rids, rweights)

    # Combine: partial sums back to their tokens' ranks, in the order they were sent.
    back_bytes = partial.new_empty(sum(send_splits), h).view(torch.uint8)
    dist.all_to_all_single(back_bytes, partial.contiguous().view(torch.uint8), send_splits, recv_splits, group=group)
    back = back_bytes.view(torch.bfloat16)
    acc = torch.zeros(num_tokens, h, dtype=torch.float32, device=device)
    start = 0
    for count in send_splits:  # rank order; a token appears at most once per rank: no colliding adds
        acc.index_add_(0, token[start:start + count], back[start:start + count].float())
        start += count
    out = acc.to(torch.bfloat16)
    if shared_expert is not None:
        out.add_(shared_expert_forward((x, sf), shared_expert))
    return out


def _fixed_capacity(x: torch.Tensor, sf: torch.Tensor, weights: torch.Tensor, topk_ids: torch.Tensor,
                    owner: torch.Tensor, w13: tuple[torch.Tensor, torch.Tensor], w2: tuple[torch.Tensor, torch.Tensor],
                    group: dist.ProcessGroup | None, world: int, capacity: int, mode: Mode) -> torch.Tensor:
    """The routed sum with every buffer sized by (capacity, W): equal-split exchanges, no host read."""
    num_tokens, h = x.shape
    top_k = topk_ids.shape[1]
    num_local = w13[0].shape[0]
    pad = capacity - num_tokens
    device = x.device
    ranks = torch.arange(world, device=device).view(world, 1, 1)
    ids = torch.nn.functional.pad(topk_ids.long(), (0, 0, 0, pad), value=-1)
    owner = torch.nn.functional.pad(owner, (0, 0, 0, pad), value=-1)
    local_ids = torch.where(owner.unsqueeze(0) == ranks, ids.unsqueeze(0) - ranks * num_local, -1)  # [W, C, k]
    common = torch.nn.functional.pad(_pack([x, sf, weights]), (0, 0, 0, pad))  # [C, bytes]; padding rows zero
    send = torch.cat([common.expand(world, -1, -1), local_ids.to(torch.int32).view(torch.uint8)], dim=2)
    send = send.reshape(world * capacity, -1)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    rx, rsf, rweights, rids = _unpack(recv, [(torch.float8_e4m3fn, h), (torch.float32, sf.shape[1]),
                                             (torch.float32, top_k), (torch.int32, top_k)])
    rows = world * capacity
    if select_mode(mode, rows) == "masked":
        partial, _ = routed_experts_masked((rx, rsf), w13, w2, rids, rweights, rows)
    else:
        partial = routed_experts_contiguous((rx, rsf), w13, w2, rids, rweights)
    back = torch.empty_like(partial).view(torch.uint8)  # bytes: not every backend takes bf16
    dist.all_to_all_single(back, partial.contiguous().view(torch.uint8), group=group)
    back = back.view(torch.bfloat16).view(world, capacity, h)[:, :num_tokens]
    acc = back[0].float()
    for r in range(1, world):  # rank order, as the counted exchange adds
        acc += back[r].float()
    return acc.to(torch.bfloat16)


def _check_global_ids(topk_ids: object, num_experts: int) -> None:
    """On CPU: every id is -1 or a global expert id in [0, W * E_l)."""
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.device.type != "cpu" or topk_ids.numel() == 0:
        return  # fused_moe_args reports a wrong type; a device read is not made off the CPU
    if topk_ids.dtype.is_floating_point:
        return
    bad = ((topk_ids < -1) | (topk_ids >= num_experts)).nonzero()
    if bad.numel() > 0:
        t, s = bad[0].tolist()
        raise ValueError(
            f"{_FN}: topk_ids[{t}, {s}] = {topk_ids[t, s].item()} is not a global expert id: ids must be in "
            f"[0, {num_experts}) (world size x local experts) or -1"
        )


def _pack(columns: list[torch.Tensor]) -> torch.Tensor:
    """One uint8 [N, bytes] row per entry: the columns' bytes side by side (one exchange for all)."""
    return torch.cat([c.contiguous().view(torch.uint8) for c in columns], dim=1)  # 2-D: [N, width * itemsize]


def _unpack(rows: torch.Tensor, columns: list[tuple[torch.dtype, int]]) -> list[torch.Tensor]:
    """The inverse of :func:`_pack`: (dtype, width) per column, each returned contiguous."""
    out, start = [], 0
    for dtype, width in columns:
        nbytes = width * dtype.itemsize  # not a throwaway CPU tensor's element_size(): ~1.6 us a column
        out.append(rows[:, start:start + nbytes].contiguous().view(dtype))
        start += nbytes
    return out
