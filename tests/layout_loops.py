"""Deliberately simple loop formulations of the MoE layout ops, and random inputs for their tests.

The loops walk experts, tokens and slots in Python and move one row at a time, so they share no
code path with the vectorised ops in ``dg_moe.layout`` (sort, scatter, gather). Quantisation of a
single row uses ``per_token_cast_to_fp8``, whose numerics the ops promise to reproduce.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dg_moe.layout import ContiguousLayout, per_token_cast_to_fp8

FP8 = torch.float8_e4m3fn


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hidden_states(num_tokens: int, hidden: int, seed: int) -> torch.Tensor:
    """bf16 [T, H] with rows of different magnitudes (so the scales differ per row and block)."""
    g = gen(seed)
    x = torch.randn(num_tokens, hidden, generator=g) * (torch.rand(num_tokens, 1, generator=g) * 8 + 0.1)
    return x.to(torch.bfloat16)


def topk_ids(num_tokens: int, top_k: int, num_experts: int, seed: int, drop: float = 0.0,
             dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Distinct experts per token (as a router gives), each slot set to -1 with probability ``drop``."""
    g = gen(seed)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(num_tokens)]) \
        if num_tokens else torch.empty(0, top_k, dtype=torch.int64)
    ids = torch.where(torch.rand(ids.shape, generator=g) < drop, -1, ids)
    return ids.to(dtype)


def quantise_rows(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [T, H], float32 [T, H/128]) quantising one row at a time."""
    num_tokens, h = hidden.shape
    q = torch.zeros(num_tokens, h, dtype=torch.uint8)
    sf = torch.zeros(num_tokens, h // 128)
    for t in range(num_tokens):
        row_q, row_sf = per_token_cast_to_fp8(hidden[t:t + 1])
        q[t] = row_q[0].view(torch.uint8)
        sf[t] = row_sf[0]
    return q.view(FP8), sf


def loop_contiguous(x: torch.Tensor, sf: torch.Tensor, ids: torch.Tensor, num_experts: int) -> dict:
    """Contiguous layout by walking experts, then tokens, then slots."""
    num_tokens, top_k = ids.shape
    h = x.shape[1]
    m_cap = 128 * math.ceil((num_tokens * top_k + min(num_experts, num_tokens * top_k) * 127) / 128)
    a = torch.zeros(m_cap, h, dtype=torch.uint8)
    sfa = torch.ones(m_cap, h // 128)
    per_row = [-1] * m_cap
    ends = []
    inverse = [[-1] * top_k for _ in range(num_tokens)]
    ids_list = ids.tolist()
    row = 0
    for e in range(num_experts):
        for t in range(num_tokens):
            for s in range(top_k):
                if ids_list[t][s] == e:
                    a[row] = x[t].view(torch.uint8)
                    sfa[row] = sf[t]
                    per_row[row] = e
                    inverse[t][s] = row
                    row += 1
        ends.append(row)
        row = 128 * math.ceil(row / 128)
    return dict(
        a=a.view(FP8), sfa=sfa, grouped_layout=torch.tensor(per_row, dtype=torch.int32),
        grouped_layout_psum=torch.tensor(ends, dtype=torch.int32),
        inverse=torch.tensor(inverse, dtype=torch.int32).view(num_tokens, top_k),
    )


def loop_masked(x: torch.Tensor, sf: torch.Tensor, ids: torch.Tensor, num_experts: int, max_m: int) -> dict:
    """Masked layout by walking experts, then tokens, then slots; entries past max_m are dropped."""
    num_tokens, top_k = ids.shape
    h = x.shape[1]
    a = torch.zeros(num_experts, max_m, h, dtype=torch.uint8)
    sfa = torch.ones(num_experts, max_m, h // 128)
    masked_m, overflow = [], []
    inverse = [[-1] * top_k for _ in range(num_tokens)]
    ids_list = ids.tolist()
    for e in range(num_experts):
        count = 0
        for t in range(num_tokens):
            for s in range(top_k):
                if ids_list[t][s] == e:
                    if count < max_m:
                        a[e, count] = x[t].view(torch.uint8)
                        sfa[e, count] = sf[t]
                        inverse[t][s] = e * max_m + count
                    count += 1
        masked_m.append(min(count, max_m))
        overflow.append(count - min(count, max_m))
    return dict(
        a=a.view(FP8), sfa=sfa, masked_m=torch.tensor(masked_m, dtype=torch.int32),
        inverse=torch.tensor(inverse, dtype=torch.int32).view(num_tokens, top_k),
        overflow=torch.tensor(overflow, dtype=torch.int32),
    )


def loop_reduce(y_rows: torch.Tensor, inverse: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """bf16 [T, H]: per token, acc = 0 then acc = acc + w * y[row] in slot order, in FP32."""
    num_tokens, top_k = inverse.shape
    out = torch.zeros(num_tokens, y_rows.shape[-1], dtype=torch.bfloat16)
    inv = inverse.tolist()
    for t in range(num_tokens):
        acc = torch.zeros(y_rows.shape[-1], dtype=torch.float32)
        for s in range(top_k):
            if inv[t][s] >= 0:
                acc = acc + weights[t, s].float() * y_rows[inv[t][s]].float()
        out[t] = acc.to(torch.bfloat16)
    return out


def loop_silu_quant(x: torch.Tensor, valid_rows: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [rows, I], float32 [rows, I/128]) row by row; rows not valid are zero with scale 1.0."""
    rows, two_i = x.shape
    inter = two_i // 2
    q = torch.zeros(rows, inter, dtype=torch.uint8)
    sf = torch.ones(rows, inter // 128)
    for r in range(rows):
        if valid_rows[r]:
            act = F.silu(x[r, :inter].float()) * x[r, inter:].float()
            row_q, row_sf = per_token_cast_to_fp8(act.unsqueeze(0))
            q[r] = row_q[0].view(torch.uint8)
            sf[r] = row_sf[0]
    return q.view(FP8), sf


def assert_fp8_equal(x: torch.Tensor, y: torch.Tensor) -> None:
    assert x.dtype == FP8 and y.dtype == FP8 and x.shape == y.shape
    assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))


def assert_activation_close(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
    """SiLU-and-mul quantised by the Triton kernel (``got``, any device) against the PyTorch formulation on
    CPU (``want``). The kernel's exp may differ from PyTorch's in the last bit: scales within 2 ulp, codes
    within one e4m3 step, and almost all codes equal; the layout exactly. (Also the rule of
    tools/sanitize_cases.py's activation checks.)"""
    (q, sf), (q_want, sf_want) = (got, want)
    assert q.shape == q_want.shape and q.stride() == q_want.stride()
    assert sf.shape == sf_want.shape and sf.stride() == sf_want.stride()
    q, sf = q.cpu(), sf.cpu()
    assert torch.allclose(sf, sf_want, rtol=2.0**-22, atol=0)
    codes, codes_want = q.view(torch.uint8).int(), q_want.view(torch.uint8).int()
    assert (codes - codes_want).abs().max() <= 1
    assert (codes != codes_want).float().mean() < 1e-3


def mn_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of ``get_mn_major_tma_aligned_tensor``'s layout for float32 ``[..., MN, Kb]``."""
    mn, kb = shape[-2], shape[-1]
    aligned = 4 * math.ceil(mn / 4)
    return (1, aligned) if len(shape) == 2 else (aligned * kb, 1, aligned)


def assert_mn_major(sf: torch.Tensor) -> None:
    """sf has ``get_mn_major_tma_aligned_tensor``'s strides; an empty tensor has no layout to check."""
    if sf.numel():
        assert sf.stride() == mn_major_strides(tuple(sf.shape))


def assert_contiguous_equal(got: ContiguousLayout, want: dict) -> None:
    assert_fp8_equal(got.a, want["a"])
    assert got.a.is_contiguous()
    assert got.sfa.dtype == torch.float32 and torch.equal(got.sfa, want["sfa"])
    assert_mn_major(got.sfa)
    for key in ("grouped_layout", "grouped_layout_psum", "inverse"):
        value = getattr(got, key)
        assert value.dtype == torch.int32 and torch.equal(value, want[key]), key
