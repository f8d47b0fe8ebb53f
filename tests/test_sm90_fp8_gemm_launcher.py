"""The FP8 GEMM launcher's tool-facing pieces on the CPU (no GPU: the entry and the stream are stand-ins)."""

from __future__ import annotations

import itertools

import torch

from dg_moe import device as dg_device
from dg_moe.kernels.sm90_fp8_gemm import GemmType, launcher

from .host_transfers import HostTransfers


def test_bound_launch_passes_kernel_args_and_reads_the_stream_per_call(monkeypatch):
    streams = itertools.count(100)
    monkeypatch.setattr(dg_device, "stream_handle", lambda device: next(streams))
    a = (torch.zeros(4, 256, dtype=torch.float8_e4m3fn), torch.ones(2, 4))
    b = (torch.zeros(3, 64, 256, dtype=torch.float8_e4m3fn), torch.ones(3, 1, 2))
    d = torch.empty(4, 64, dtype=torch.bfloat16)
    layout = torch.zeros(4, dtype=torch.int32)
    calls = []
    launch = launcher.bound_launch(lambda *args: calls.append(args), GemmType.CONTIGUOUS, a, b, d, layout, 132)
    assert calls == []  # nothing runs until called
    launch()
    launch()
    first = launcher.kernel_args(GemmType.CONTIGUOUS, a, b, d, layout, 132, 100)
    assert calls == [first, first[:-1] + (101,)]


def test_kernel_operands_expand_packed_ue8m0_scales_on_the_device():
    """Packed UE8M0 scales (DeepEP's use_ue8m0 dispatch) are expanded on every launch, the masked GEMM's
    included: nothing there may be built from host data, whose copy would synchronise the stream and break
    CUDA-graph capture. Meta tensors stand for CUDA ones."""
    g, max_m, n, k = 2, 8, 256, 1024
    meta = torch.device("meta")
    a = (torch.empty(g, max_m, k, dtype=torch.float8_e4m3fn, device=meta),
         torch.empty(g, k // 512, max_m, dtype=torch.int32, device=meta).transpose(1, 2))
    b = (torch.empty(g, n, k, dtype=torch.float8_e4m3fn, device=meta),
         torch.empty(g, n // 128, k // 512, dtype=torch.int32, device=meta))
    with HostTransfers() as seen:
        (_, sfa), (_, sfb) = launcher.kernel_operands(GemmType.MASKED, a, b)
    assert seen.calls == []
    assert sfa.dtype == sfb.dtype == torch.float32
    assert sfa.shape == (g, max_m, k // 128) and sfa.stride() == (k // 128 * max_m, 1, max_m)
    assert sfb.shape == (g, n // 128, k // 128) and sfb.is_contiguous()


def test_kernel_operands_pass_kernel_layout_float32_scales_through():
    """The masked GEMM allocates nothing when its scales are float32 in the kernel's layout (as the routing
    ops and DeepEP's float32 dispatch give them): the launch reads them in place."""
    g, max_m, n, k = 2, 6, 256, 1024
    meta = torch.device("meta")
    aligned = 8  # align(max_m, 4): 16-byte aligned scale columns
    sfa = torch.empty(g, k // 128, aligned, device=meta).transpose(1, 2)[:, :max_m]
    sfb = torch.empty(g, n // 128, k // 128, device=meta)
    a = (torch.empty(g, max_m, k, dtype=torch.float8_e4m3fn, device=meta), sfa)
    b = (torch.empty(g, n, k, dtype=torch.float8_e4m3fn, device=meta), sfb)
    (_, sfa_used), (_, sfb_used) = launcher.kernel_operands(GemmType.MASKED, a, b)
    assert sfa_used is sfa and sfb_used is sfb
