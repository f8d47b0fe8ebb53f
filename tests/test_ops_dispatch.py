"""Device dispatch: CPU runs the reference, meta does nothing, CUDA checks the architecture and then
needs a registered kernel. There is no GPU here: only the CUDA device's architecture is simulated
(``dg_moe.device._device_properties``); the dispatch code itself runs unmodified."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import dg_moe.device as device
import dg_moe.ops as ops
import dg_moe.reference as R
from dg_moe.errors import KernelNotAvailableError, UnsupportedArchitectureError
from dg_moe.ops import dispatch

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def gpu_arch(monkeypatch):
    """Make ``cuda:0`` report the given (major, minor) and name."""

    def set_arch(major: int, minor: int, name: str) -> None:
        props = SimpleNamespace(major=major, minor=minor, name=name, multi_processor_count=132)
        monkeypatch.setattr(device, "_device_properties", lambda index: props)

    return set_arch


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.mark.parametrize("major,minor,name", [(8, 0, "NVIDIA A100-SXM4-80GB"), (10, 0, "NVIDIA B200"),
                                              (8, 9, "NVIDIA L40S"), (12, 0, "NVIDIA RTX PRO 6000")])
def test_non_sm90_gpu_is_refused_with_its_architecture(gpu_arch, major, minor, name):
    gpu_arch(major, minor, name)
    reference = Recorder()
    with pytest.raises(UnsupportedArchitectureError) as info:
        dispatch.run_op("fp8_gemm_nt", CUDA0, reference, 1, 2)
    msg = str(info.value)
    assert "fp8_gemm_nt" in msg and name in msg and f"sm_{major}{minor}" in msg and "SM90" in msg
    assert reference.calls == []


def test_sm90_without_kernel_raises_kernel_not_available(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    reference = Recorder()
    with pytest.raises(KernelNotAvailableError) as info:
        dispatch.run_op("k_grouped_bf16_gemm_tn_contiguous", CUDA0, reference, 1)
    assert str(info.value) == (
        "k_grouped_bf16_gemm_tn_contiguous: the SM90 kernel is not available yet in this version of dg_moe; "
        "run on CPU tensors for the reference implementation"
    )
    assert isinstance(info.value, NotImplementedError)
    assert reference.calls == []


def test_sm90_runs_the_registered_kernel(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H200")
    kernel, reference = Recorder(), Recorder()
    dispatch.register_kernel("bf16_gemm_nt", kernel)
    try:
        assert dispatch.registered_kernel("bf16_gemm_nt") is kernel
        dispatch.run_op("bf16_gemm_nt", CUDA0, reference, "a", "b", c=None)
        dispatch.run_op("bf16_gemm_nt", CUDA0, reference, "a", "b", empty=True)
    finally:
        dispatch.unregister_kernel("bf16_gemm_nt")
    assert kernel.calls == [(("a", "b"), {"c": None})]  # the empty call skipped the kernel
    assert reference.calls == []
    assert dispatch.registered_kernel("bf16_gemm_nt") is None


def test_sm90_empty_problem_needs_no_kernel(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    dispatch.run_op("fp8_gemm_nt", CUDA0, Recorder(), empty=True)  # no KernelNotAvailableError


def test_cpu_runs_reference_and_meta_runs_nothing():
    reference = Recorder()
    dispatch.run_op("fp8_gemm_nt", torch.device("cpu"), reference, 1, x=2)
    dispatch.run_op("fp8_gemm_nt", torch.device("meta"), reference, 3)
    assert reference.calls == [((1,), {"x": 2})]


def _fp8_inputs(device_, m=3, n=130, k=256):
    torch.manual_seed(0)
    a = R.quantize_blockwise(torch.randn(m, k), 1, 128)
    b = R.quantize_blockwise(torch.randn(n, k), 128, 128)
    return (a[0].to(device_), a[1].to(device_)), (b[0].to(device_), b[1].to(device_))


def test_public_ops_validate_then_skip_on_meta():
    a, b = _fp8_inputs("meta")
    d = torch.empty(3, 130, dtype=torch.bfloat16, device="meta")
    ops.fp8_gemm_nt(a, b, d)  # shape propagation only: validated, nothing computed
    with pytest.raises(ValueError, match="sfb"):
        ops.fp8_gemm_nt(a, (b[0], b[1][:1]), d)


def test_public_op_on_cpu_is_the_reference_writer():
    a, b = _fp8_inputs("cpu")
    d_op = torch.full((3, 130), float("nan"), dtype=torch.bfloat16)
    d_ref = d_op.clone()
    ops.fp8_gemm_nt(a, b, d_op)
    R.fp8_gemm_nt(a, b, d_ref, recipe=(1, 128, 128))
    assert torch.equal(d_op, d_ref)


def test_sm90_zero_k_fills_d_without_a_kernel(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    d = torch.full((2, 3), float("nan"))
    c = torch.randn(2, 3)
    dispatch.run_op("fp8_gemm_nt", CUDA0, Recorder(), trivial=dispatch.no_products(d, c))
    assert torch.equal(d, c)
    dispatch.run_op("fp8_gemm_nt", CUDA0, Recorder(), trivial=dispatch.no_products(d, None))
    assert torch.equal(d, torch.zeros(2, 3))
    dispatch.no_products(c, c)()  # d aliasing c: nothing to do
