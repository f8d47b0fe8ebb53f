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


def test_run_op_files_the_planners_launch_under_the_signature(monkeypatch):
    """After a CUDA kernel ran, its planner's launch is kept under the call's signature; nothing is kept
    for an op without a planner, nor off CUDA."""
    from dg_moe.ops import dispatch

    monkeypatch.setattr(dispatch._device, "require_sm90", lambda device, op: None)
    monkeypatch.setattr(_memo, "_plans", {})
    ran, planned = [], []

    def launch(*tensors):
        return True

    def planner(*args, **kwargs):
        planned.append((args, kwargs))
        return launch

    dispatch.register_kernel("test_op", lambda *args, **kwargs: ran.append(args), planner)
    try:
        dispatch.run_op("test_op", torch.device("cuda"), None, 1, 2, flag=True, plan_key=("sig",))
        assert ran == [(1, 2)] and planned == [((1, 2), {"flag": True})]
        assert _memo.plan(("sig",)) is launch
        dispatch.run_op("test_op", torch.device("cpu"), lambda *a, **k: None, 1, 2, flag=True, plan_key=("cpu",))
        assert _memo.plan(("cpu",)) is None
        dispatch.register_kernel("test_op", lambda *args, **kwargs: None)
        dispatch.run_op("test_op", torch.device("cuda"), None, 1, plan_key=("other",))
        assert _memo.plan(("other",)) is None
        # A planner with no plan for a signature is asked once; the kept plan then declines.
        asked = []
        dispatch.register_kernel("test_op", lambda *args, **kwargs: None, lambda *a, **k: asked.append(a))
        for _ in range(3):
            dispatch.run_op("test_op", torch.device("cuda"), None, 1, plan_key=("none",))
        assert len(asked) == 1 and _memo.plan(("none",))(1) is False
    finally:
        dispatch.unregister_kernel("test_op")


@pytest.mark.parametrize("declines", [False, True])
def test_a_planned_call_launches_the_plan_or_takes_the_full_path(monkeypatch, declines):
    """An op whose signature holds a plan calls it with the signature's tensors and stops there; a plan
    that declines (device or SM setting changed) sends the call through validation and dispatch."""
    monkeypatch.setattr(_memo, "_plans", {})
    a, b, d = _meta_dense()
    calls = []

    def launch(*tensors):
        calls.append(tensors)
        return not declines

    signature = _memo.key("fp8_gemm_nt", lambda: (a[0], a[1], b[0], b[1], d, None),
                          (False, None, "nk", False, False, False))
    _memo.remember_plan(signature, launch)
    _memo._validated.clear()
    dg_moe.fp8_gemm_nt(a, b, d)
    assert calls == [(a[0], a[1], b[0], b[1], d, None)]
    assert (len(_memo._validated) == 1) is declines
