"""DeepEP adapters, on tensors built exactly in DeepEP's documented dispatch formats (deep_ep itself
is never imported)."""

from __future__ import annotations

import pytest
import torch

from dg_moe import layout
from dg_moe.reference import dequantize, ref_m_grouped_fp8_gemm_nt_masked

from .layout_loops import (
    FP8,
    assert_contiguous_equal,
    gen,
    hidden_states,
    loop_contiguous,
    loop_reduce,
    quantise_rows,
)


def normal_dispatch(num_recv: int, top_k: int, num_local: int, hidden: int, seed: int):
    """recv_x as (e4m3 [R, H], float32 [R, H/128]) and recv_topk_idx int64 [R, k] with -1 for slots
    of experts on other ranks (every received token has at least one local slot, as in DeepEP)."""
    g = gen(seed)
    x, sf = quantise_rows(hidden_states(num_recv, hidden, seed))
    perms = [torch.randperm(4 * num_local, generator=g)[:top_k] for _ in range(num_recv)]
    global_ids = torch.stack(perms) if perms else torch.empty(0, top_k, dtype=torch.int64)
    global_ids[:, 0] = torch.randint(num_local, (num_recv,), generator=g)
    idx = torch.where(global_ids < num_local, global_ids, -1)
    weights = torch.rand(num_recv, top_k, generator=g)
    return (x, sf), idx, weights


@pytest.mark.parametrize("num_recv,top_k,num_local", [(31, 8, 4), (0, 8, 4), (17, 1, 2), (140, 2, 1)])
def test_normal_dispatch_to_contiguous_and_reduce(num_recv, top_k, num_local):
    recv_x, recv_topk_idx, recv_topk_weights = normal_dispatch(num_recv, top_k, num_local, 256, seed=num_recv)
    got = layout.deepep_normal_to_contiguous(recv_x, recv_topk_idx, num_local)
    assert_contiguous_equal(got, loop_contiguous(*recv_x, recv_topk_idx, num_local))
    y = (torch.randn(got.a.shape[0], 256, generator=gen(1)) * 2).to(torch.bfloat16)
    out = layout.deepep_normal_reduce(y, got.inverse, recv_topk_weights)
    assert out.shape == (num_recv, 256) and out.dtype == torch.bfloat16
    assert torch.equal(out, loop_reduce(y, got.inverse, recv_topk_weights))


def test_normal_dispatch_bf16_recv_x_is_quantised():
    hidden = hidden_states(12, 128, 3)
    _, idx, _ = normal_dispatch(12, 4, 3, 128, seed=3)
    got = layout.deepep_normal_to_contiguous(hidden, idx, 3)
    assert_contiguous_equal(got, loop_contiguous(*quantise_rows(hidden), idx, 3))


def test_normal_dispatch_errors_use_deepep_names():
    recv_x, idx, w = normal_dispatch(4, 2, 2, 128, seed=0)
    fn = "deepep_normal_to_contiguous"
    with pytest.raises(ValueError, match=rf"{fn}: recv_topk_idx\[\d, \d\] = 2 is not an expert id"):
        layout.deepep_normal_to_contiguous(recv_x, torch.full_like(idx, 2), 2)
    with pytest.raises(ValueError, match=rf"{fn}: recv_x\[0\] has H = 100, not a positive multiple"):
        layout.deepep_normal_to_contiguous((recv_x[0][:, :100], recv_x[1]), idx, 2)
    with pytest.raises(TypeError, match="num_local_experts must be a positive int"):
        layout.deepep_normal_to_contiguous(recv_x, idx, None)
    got = layout.deepep_normal_to_contiguous(recv_x, idx, 2)
    y = torch.zeros(got.a.shape[0], 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"deepep_normal_reduce: recv_topk_weights has shape \(4, 3\)"):
        layout.deepep_normal_reduce(y, got.inverse, torch.ones(4, 3))


def low_latency_dispatch(num_experts: int, max_m: int, hidden: int, use_ue8m0: bool, seed: int):
    """packed_recv_x and packed_recv_count as DeepEP's low_latency_dispatch(use_fp8=True) allocates them."""
    g = gen(seed)
    x = torch.empty(num_experts, max_m, hidden, dtype=FP8)
    kb = hidden // 128
    if use_ue8m0:
        scales = torch.empty(num_experts, -(-kb // 4), max_m, dtype=torch.int32).transpose(1, 2)
    else:
        scales = torch.empty(num_experts, kb, max_m, dtype=torch.float32).transpose(1, 2)
    count = torch.randint(0, max_m + 1, (num_experts,), generator=g, dtype=torch.int32)
    for e in range(num_experts):
        rows = hidden_states(max_m, hidden, seed + e)
        q, sf = layout.per_token_cast_to_fp8(rows, use_ue8m0=use_ue8m0, use_packed_ue8m0=use_ue8m0)
        x[e] = q
        scales[e] = sf
    return (x, scales), count


@pytest.mark.parametrize("use_ue8m0", [False, True])
@pytest.mark.parametrize("num_experts,max_m,hidden", [(3, 8, 512), (1, 4, 128), (4, 12, 1024)])
def test_low_latency_to_masked_copies_nothing(use_ue8m0, num_experts, max_m, hidden):
    packed_recv_x, packed_recv_count = low_latency_dispatch(num_experts, max_m, hidden, use_ue8m0, seed=hidden)
    got = layout.deepep_low_latency_to_masked(packed_recv_x, packed_recv_count)
    for mine, theirs in zip(got, (*packed_recv_x, packed_recv_count), strict=True):
        assert mine.data_ptr() == theirs.data_ptr() and mine.stride() == theirs.stride()
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
    # The scales are what the masked GEMM reads: its reference on the views equals dequantised rows.
    w = layout.per_block_cast_to_fp8(hidden_states(128, hidden, 1))
    b = (w[0].expand(num_experts, -1, -1), w[1].expand(num_experts, -1, -1))
    out = ref_m_grouped_fp8_gemm_nt_masked((got.a, got.sfa), b, got.masked_m)
    for e, m in enumerate(packed_recv_count.tolist()):
        rows = dequantize(packed_recv_x[0][e, :m], packed_recv_x[1][e, :m], 1, 128)
        assert torch.equal(out[e, :m], rows @ dequantize(*w, 128, 128).T)


def test_low_latency_accepts_route_to_masked_output():
    routed = layout.route_to_masked(hidden_states(10, 256, 0), torch.randint(0, 3, (10, 2), generator=gen(0)), 3, 8)
    got = layout.deepep_low_latency_to_masked((routed.a, routed.sfa), routed.masked_m)
    assert got.sfa is routed.sfa and got.a is routed.a


def test_low_latency_errors_name_argument_and_fix():
    (x, sf), count = low_latency_dispatch(2, 8, 256, False, seed=0)
    fn = "deepep_low_latency_to_masked"
    with pytest.raises(ValueError, match=rf"{fn}: packed_recv_x\[1\] \(scales\) must be MN-major.*"
                                         r"torch.empty\(2, 2, 8, dtype=torch.float32\).transpose\(1, 2\)"):
        layout.deepep_low_latency_to_masked((x, sf.contiguous()), count)
    (x6, sf6), count6 = low_latency_dispatch(2, 6, 256, False, seed=0)
    with pytest.raises(ValueError, match=r"stride 6 between scale columns.*align\(M, 4\) = 8.*multiple of 4"):
        layout.deepep_low_latency_to_masked((x6, sf6), count6)
    with pytest.raises(ValueError, match=r"packed_recv_x\[1\] \(scales\) has shape \(2, 8, 3\)"):
        layout.deepep_low_latency_to_masked((x, torch.empty(2, 3, 8).transpose(1, 2)), count)
    with pytest.raises(ValueError, match="expert stride"):
        layout.deepep_low_latency_to_masked((x, torch.empty(2, 16, 8)[:, :2].transpose(1, 2)), count)
    with pytest.raises(ValueError, match="16-byte boundary"):
        layout.deepep_low_latency_to_masked((x, torch.empty(33)[1:].view(2, 2, 8).transpose(1, 2)), count)
    with pytest.raises(TypeError, match="packed_recv_count must have dtype int32"):
        layout.deepep_low_latency_to_masked((x, sf), count.long())
    with pytest.raises(ValueError, match=r"packed_recv_count has shape \(3,\)"):
        layout.deepep_low_latency_to_masked((x, sf), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="single torch.bfloat16 tensor.*m_grouped_bf16_gemm_nt_masked"):
        layout.deepep_low_latency_to_masked(torch.zeros(2, 8, 256, dtype=torch.bfloat16), count)
    with pytest.raises(TypeError, match=r"packed_recv_x\[0\] must have dtype float8_e4m3fn"):
        layout.deepep_low_latency_to_masked((x.view(torch.uint8), sf), count)
    with pytest.raises(ValueError, match=r"packed_recv_x\[0\] has H = 200, not a positive multiple of 128"):
        layout.deepep_low_latency_to_masked((torch.empty(2, 8, 200, dtype=FP8), sf), count)
    with pytest.raises(ValueError, match=r"packed_recv_x\[0\] must have unit stride along H"):
        layout.deepep_low_latency_to_masked((x.transpose(1, 2).contiguous().transpose(1, 2), sf), count)
    with pytest.raises(ValueError, match="packed_recv_count is on meta"):
        layout.deepep_low_latency_to_masked((x, sf), count.to("meta"))
