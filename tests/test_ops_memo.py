"""The validated-signature memo never lets a bad call through: new metadata is checked again,
and CPU calls (whose layout values are checked) are never memoised."""

import pytest
import torch

import dg_moe
from dg_moe.ops import _memo


def _meta_dense(m=128, n=256, k=512, d_rows=None):
    fp8 = torch.float8_e4m3fn
    a = (torch.empty(m, k, dtype=fp8, device="meta"), torch.empty(m, k // 128, device="meta"))
    b = (torch.empty(n, k, dtype=fp8, device="meta"), torch.empty((n + 127) // 128, k // 128, device="meta"))
    d = torch.empty(d_rows or m, n, dtype=torch.bfloat16, device="meta")
    return a, b, d


def test_repeated_call_hits_the_memo_and_new_metadata_is_checked_again():
    _memo._validated.clear()
    a, b, d = _meta_dense()
    dg_moe.fp8_gemm_nt(a, b, d)
    dg_moe.fp8_gemm_nt(a, b, d)
    assert len(_memo._validated) == 1
    a, b, bad_d = _meta_dense(d_rows=127)
    with pytest.raises(ValueError, match="d has shape"):
        dg_moe.fp8_gemm_nt(a, b, bad_d)
    strided_d = torch.empty(256, 128, dtype=torch.bfloat16, device="meta").t()
    with pytest.raises(ValueError, match="d"):
        dg_moe.fp8_gemm_nt(a, b, strided_d)


def test_scalar_arguments_are_part_of_the_signature():
    _memo._validated.clear()
    a, b, d = _meta_dense()
    dg_moe.fp8_gemm_nt(a, b, d)
    with pytest.raises(ValueError, match="compiled_dims"):
        dg_moe.fp8_gemm_nt(a, b, d, compiled_dims="xyz")


def test_cpu_layout_values_are_checked_on_every_call():
    _memo._validated.clear()
    k, n = 256, 128
    a = dg_moe.per_token_cast_to_fp8(torch.randn(128, k))
    w = [dg_moe.per_block_cast_to_fp8(torch.randn(n, k)) for _ in range(2)]
    b = (torch.stack([x[0] for x in w]), torch.stack([x[1] for x in w]))
    d = torch.empty(128, n, dtype=torch.bfloat16)
    layout = torch.zeros(128, dtype=torch.int32)
    dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, layout)
    layout[5] = 7  # same metadata, now an out-of-range group id
    with pytest.raises(ValueError, match="grouped_layout"):
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, layout)
    assert not _memo._validated


def test_unhashable_or_malformed_arguments_fall_back_to_the_full_checks():
    _memo._validated.clear()
    a, b, d = _meta_dense()
    with pytest.raises(TypeError, match="tuple"):
        dg_moe.fp8_gemm_nt(a[0], b, d)
    dg_moe.fp8_gemm_nt(a, b, d, recipe=[1, 128, 128])  # a list: no signature, checked in full, valid
    assert not _memo._validated
    with pytest.raises(ValueError, match="recipe"):
        dg_moe.fp8_gemm_nt(a, b, d, recipe=[1, 64, 128])
