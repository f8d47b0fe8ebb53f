"""expert_parallel_moe across 2 and 4 processes (gloo on CPU, NCCL on 2 GPUs) against the single-process
fused_moe on the full weights and the same routing, and the float64 per-token loop.

Every rank builds the same full layer from one seed, keeps its slice of the experts and draws its own
tokens; each rank checks its own tokens' result. The cases cover uneven expert loads, experts with no
token, tokens whose experts are all on other ranks, a rank with no token, -1 slots, the masked path,
a routed scaling factor and a shared expert; each also through the fixed-capacity (decode) exchange,
which must give the same bits.
"""

from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dg_moe.moe import expert_parallel_moe, fused_moe
from dg_moe.reference import calc_diff

from .moe_loops import hidden_states, layer, loop_moe, routing

H, INTER, LOCAL_EXPERTS = 256, 128, 2


def _tokens_per_rank(case: str, world: int) -> list[int]:
    if case == "zero_tokens_on_a_rank":
        return [0 if r == 1 else 24 + 7 * r for r in range(world)]
    return [40, 3, 65, 17][:world]


def _rank_inputs(case: str, rank: int, world: int, seed: int):
    """(hidden, ids, weights) of one rank for one case: global ids, distinct per token."""
    num_experts = LOCAL_EXPERTS * world
    num_tokens = _tokens_per_rank(case, world)[rank]
    hidden = hidden_states(num_tokens, H, seed + 10 * rank)
    s = seed + 10 * rank + 1
    if case == "uneven_loads_empty_experts":
        # Only the first three experts get tokens: rank 0 is loaded, rank 1 lightly, others receive nothing.
        ids, weights = routing(num_tokens, 2, num_experts, s, experts_used=3)
    elif case == "all_experts_remote":
        # Every token's experts belong to the next rank; one rank's experts only: the result is bitwise equal.
        owner = (rank + 1) % world
        ids, weights = routing(num_tokens, 2, LOCAL_EXPERTS, s)
        ids = ids + owner * LOCAL_EXPERTS
    elif case == "masked_drop_scaled_shared":
        ids, weights = routing(num_tokens, 3, num_experts, s, drop=0.3)
    else:  # "spread" and "zero_tokens_on_a_rank": top-4 over every rank's experts
        ids, weights = routing(num_tokens, min(4, num_experts), num_experts, s)
    return hidden, ids, weights


CASES = {
    # name: (mode, routed_scaling_factor, shared intermediate or None)
    "spread": ("contiguous", 1.0, None),
    "uneven_loads_empty_experts": ("contiguous", 1.0, None),
    "all_experts_remote": ("contiguous", 1.0, None),
    "zero_tokens_on_a_rank": ("auto", 1.0, None),
    "masked_drop_scaled_shared": ("masked", 2.5, 128),
}


def _check_case(case: str, rank: int, world: int, device: torch.device) -> None:
    mode, rsf, shared_inter = CASES[case]
    seed = len(case) * 101
    full = layer(LOCAL_EXPERTS * world, H, INTER, seed, shared_inter)
    mine = slice(rank * LOCAL_EXPERTS, (rank + 1) * LOCAL_EXPERTS)
    weights_slice = [w[mine].contiguous().to(device) for w in full.routed]
    shared = None if full.shared is None else type(full.shared)(*(t.to(device) for t in full.shared))
    hidden, ids, weights = _rank_inputs(case, rank, world, seed)
    if case == "uneven_loads_empty_experts":
        assert not (ids >= 3).any()
    if case == "all_experts_remote" and hidden.shape[0]:
        assert ((ids // LOCAL_EXPERTS) != rank).all()
    out = expert_parallel_moe(hidden.to(device), *weights_slice, ids.to(device), weights.to(device), mode=mode,
                              routed_scaling_factor=rsf, shared_expert=shared)
    assert out.dtype == torch.bfloat16 and out.shape == hidden.shape, (case, rank, out.shape)
    # Fixed-size buffers (the decode form): the same bits as the counted exchange.
    capacity = max(_tokens_per_rank(case, world)) + 3
    fixed = expert_parallel_moe(hidden.to(device), *weights_slice, ids.to(device), weights.to(device), mode=mode,
                                routed_scaling_factor=rsf, shared_expert=shared, capacity=capacity)
    assert torch.equal(fixed.cpu(), out.cpu()), (case, rank)
    out = out.cpu()
    expected = fused_moe(hidden, *full.routed, ids, weights, mode="contiguous", routed_scaling_factor=rsf,
                         shared_expert=full.shared)
    if hidden.shape[0] == 0:
        return
    if case == "all_experts_remote":
        assert torch.equal(out, expected), (case, rank)
    # The partial sums of different ranks are each rounded to bf16 once before they are added.
    diff = calc_diff(out, expected)
    assert diff < 1e-5, (case, rank, diff)
    reference = calc_diff(out, loop_moe(hidden, full, ids, weights, rsf))
    assert 0 < reference < 1e-3, (case, rank, reference)


def _worker(rank: int, world: int, init: str, backend: str, cases: list[str], errors: str) -> None:
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            torch.set_num_threads(1)
            device = torch.device("cpu")
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
        try:
            for case in cases:
                _check_case(case, rank, world, device)
            dist.barrier()
        finally:
            dist.destroy_process_group()
    except BaseException:
        with open(f"{errors}.{rank}", "w") as f:
            f.write(traceback.format_exc())
        raise


def _spawn(world: int, backend: str, cases: list[str], tmp_path) -> None:
    init = f"file://{tmp_path / 'store'}"
    errors = str(tmp_path / "error")
    try:
        mp.spawn(_worker, args=(world, init, backend, cases, errors), nprocs=world, join=True)
    except Exception:
        reports = sorted(p for p in os.listdir(tmp_path) if p.startswith("error."))
        details = "\n".join((tmp_path / p).read_text() for p in reports)
        pytest.fail(f"a rank failed:\n{details}")


@pytest.mark.parametrize("world", [2, 4])
def test_matches_single_process_fused_moe_gloo(world, tmp_path):
    _spawn(world, "gloo", list(CASES), tmp_path)


def test_routing_is_checked_against_the_global_expert_count():
    """Before any collective: an id past W * E_l is refused with the global count in the message."""
    if dist.is_initialized():
        pytest.skip("a process group is already up")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        full = layer(LOCAL_EXPERTS, H, INTER, 3)
        hidden = hidden_states(4, H, 4)
        ids = torch.tensor([[0, 1]] * 3 + [[1, LOCAL_EXPERTS]])
        with pytest.raises(ValueError, match=rf"topk_ids\[3, 1\] = {LOCAL_EXPERTS}.*\[0, {LOCAL_EXPERTS}\)"):
            expert_parallel_moe(hidden, *full.routed, ids, torch.ones(4, 2))
        # One rank is the single-process layer (the exchange sends everything to itself).
        ids, weights = routing(4, 2, LOCAL_EXPERTS, 5)
        out = expert_parallel_moe(hidden, *full.routed, ids, weights)
        assert torch.equal(out, fused_moe(hidden, *full.routed, ids, weights, mode="contiguous"))
        with pytest.raises(ValueError, match="capacity must be an int >= the 4 tokens"):
            expert_parallel_moe(hidden, *full.routed, ids, weights, capacity=3)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs in this process")
def test_matches_single_process_fused_moe_nccl(tmp_path):
    _spawn(2, "nccl", list(CASES), tmp_path)


def test_pack_unpack_round_trip_bit_exact():
    """_unpack sizes each column by its dtype's itemsize (1, 2, 4 and 8 bytes here): every column comes back
    with its own bits, NaN payloads and -0.0 included."""
    from dg_moe.moe.expert_parallel import _pack, _unpack

    g = torch.Generator().manual_seed(7)
    columns = [
        torch.randint(0, 256, (5, 3), dtype=torch.uint8, generator=g).view(torch.float8_e4m3fn),
        torch.randint(-2**15, 2**15, (5, 2), dtype=torch.int16, generator=g).view(torch.bfloat16),
        torch.tensor([[-0.0, float("nan")]] * 5, dtype=torch.float32),
        torch.randint(-2**31, 2**31, (5, 4), dtype=torch.int32, generator=g),
        torch.randint(-2**62, 2**62, (5, 1), dtype=torch.int64, generator=g),
    ]
    back = _unpack(_pack(columns), [(c.dtype, c.shape[1]) for c in columns])
    for c, b in zip(columns, back, strict=True):
        assert b.dtype == c.dtype and b.shape == c.shape and b.is_contiguous()
        assert torch.equal(b.view(torch.uint8), c.view(torch.uint8))
