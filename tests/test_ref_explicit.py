"""Independent float64 oracles for the reference tests, and tests of the oracles themselves.

The oracles apply scales the way the kernel does (exact per-128-K-block partial products of the raw
FP8 values, then times sfa·sfb) instead of dequantising first, and decode packed UE8M0 with shifts
instead of dg_moe's unpacker, so they share no code path with ``dg_moe.reference``.
"""

from __future__ import annotations

import math

import torch

FP8 = torch.float8_e4m3fn


def quant(x: torch.Tensor, gran_mn: int, gran_k: int, pow2: bool = False) -> tuple[torch.Tensor, ...]:
    """Block-quantise float ``[..., MN, K]`` (K % gran_k == 0) with explicit loops over blocks."""
    if gran_mn == 1 and x.shape[-2] != 1:
        # Rows are independent blocks: quantise them as a batch of one-row matrices.
        q, sf = quant(x.unsqueeze(-2), 1, gran_k, pow2)
        return q.squeeze(-2), sf.squeeze(-2)
    *lead, mn, k = x.shape
    mnb, kb = math.ceil(mn / gran_mn), k // gran_k
    q = torch.empty(x.shape, dtype=FP8)
    sf = torch.empty((*lead, mnb, kb), dtype=torch.float32)
    for i in range(mnb):
        for j in range(kb):
            block = x[..., i * gran_mn:(i + 1) * gran_mn, j * gran_k:(j + 1) * gran_k].float()
            amax = block.abs().amax(dim=(-2, -1)).clamp(min=1e-4)
            scale = amax / 448.0
            if pow2:
                scale = torch.exp2(torch.ceil(torch.log2(scale)))
            sf[..., i, j] = scale
            q[..., i * gran_mn:(i + 1) * gran_mn, j * gran_k:(j + 1) * gran_k] = (
                block / scale[..., None, None]
            ).to(FP8)
    return q, sf


def pack(sf: torch.Tensor) -> torch.Tensor:
    """Power-of-two float32 ``[..., kb]`` -> int32 ``[..., ceil(kb/4)]``, byte i of int j = block 4j+i."""
    kb = sf.shape[-1]
    exps = (torch.log2(sf.double()).round().long() + 127).tolist() if sf.numel() else []
    flat = torch.tensor(exps, dtype=torch.int64).reshape(-1, kb)
    out = torch.zeros(flat.shape[0], math.ceil(kb / 4), dtype=torch.int64)
    for j in range(kb):
        out[:, j // 4] |= flat[:, j] << (8 * (j % 4))
    out = torch.where(out >= 2**31, out - 2**32, out)
    return out.to(torch.int32).reshape(*sf.shape[:-1], math.ceil(kb / 4))


def unpack(sf: torch.Tensor, kb: int) -> torch.Tensor:
    """float32 scales as float64 ``[..., kb]``; int32 packed UE8M0 decoded byte by byte with shifts."""
    if sf.dtype != torch.int32:
        return sf.double()
    words = sf.long() & 0xFFFFFFFF
    cols = [((words[..., j // 4] >> (8 * (j % 4))) & 0xFF) for j in range(kb)]
    return torch.exp2(torch.stack(cols, dim=-1).double() - 127.0)


def explicit_fp8_gemm(a_q, sfa, b_q, sfb, gran_n: int) -> torch.Tensor:
    """float64 ``A @ B.T`` in the nt frame: a_q ``[M, K]``, sfa ``[M, K/128]``, b_q ``[N, K]``,
    sfb ``[ceil(N/gran_n), K/128]`` (float32 or packed int32, any strides)."""
    m, k = a_q.shape
    n = b_q.shape[0]
    kb = k // 128
    sa, sb = unpack(sfa, kb), unpack(sfb, kb)
    a64, b64 = a_q.double(), b_q.double()
    out = torch.zeros(m, n, dtype=torch.float64)
    for j in range(kb):
        cols = slice(j * 128, (j + 1) * 128)
        partial = a64[:, cols] @ b64[:, cols].T  # exact: raw FP8 products, 128 terms
        for nb in range(math.ceil(n / gran_n)):
            rows = slice(nb * gran_n, (nb + 1) * gran_n)
            out[:, rows] += partial[:, rows] * sa[:, j:j + 1] * sb[nb, j]
    return out


def explicit_bf16_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 ``A @ B.T`` as a sum of rank-1 updates over K chunks of 16 (nt frame)."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for j in range(0, a.shape[1], 16):
        out += torch.einsum("mk,nk->mn", a[:, j:j + 16].double(), b[:, j:j + 16].double())
    return out


def assert_rounded_from(d: torch.Tensor, expected: torch.Tensor) -> None:
    """d (bf16/fp32) is within half an ulp of its dtype of the float64 ``expected`` (plus float64 noise)."""
    ulp = 2.0**-8 if d.dtype == torch.bfloat16 else 2.0**-24
    err = (d.double() - expected).abs()
    bound = expected.abs() * ulp * (1 + 1e-9) + 1e-300
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item()}"


# ---- tests of the oracles themselves -------------------------------------------------------------


def test_pack_unpack_round_trip():
    torch.manual_seed(0)
    sf = torch.exp2(torch.randint(-20, 20, (3, 7)).float())
    packed = pack(sf)
    assert packed.shape == (3, 2) and packed.dtype == torch.int32
    assert torch.equal(unpack(packed, 7), sf.double())


def test_explicit_gemm_with_unit_scales_is_fp8_matmul():
    torch.manual_seed(1)
    a_q = torch.randn(5, 256).to(FP8)
    b_q = torch.randn(9, 256).to(FP8)
    ones_a, ones_b = torch.ones(5, 2), torch.ones(1, 2)
    expected = a_q.double() @ b_q.double().T
    assert torch.equal(explicit_fp8_gemm(a_q, ones_a, b_q, ones_b, 128), expected)


def test_explicit_gemm_scales_only_their_block():
    torch.manual_seed(2)
    a_q = torch.randn(3, 256).to(FP8)
    b_q = torch.randn(130, 256).to(FP8)
    sfa, sfb = torch.ones(3, 2), torch.ones(2, 2)
    base = explicit_fp8_gemm(a_q, sfa, b_q, sfb, 128)
    sfb[1, 0] = 2.0  # N rows 128.. of the first K block
    scaled = explicit_fp8_gemm(a_q, sfa, b_q, sfb, 128)
    first_block = a_q[:, :128].double() @ b_q[128:, :128].double().T
    assert torch.equal(scaled[:, :128], base[:, :128])
    torch.testing.assert_close(scaled[:, 128:], base[:, 128:] + first_block, rtol=1e-13, atol=1e-13)


def test_quant_round_trip_is_close():
    torch.manual_seed(3)
    x = torch.randn(7, 256)
    q, sf = quant(x, 1, 128)
    deq = q.double() * sf.double().repeat_interleave(128, dim=1)
    assert (deq - x.double()).abs().max().item() < 0.07 * x.abs().max().item()
