"""The FP8 GEMM launcher's tool-facing pieces on the CPU (no GPU: the entry and the stream are stand-ins)."""

from __future__ import annotations

import itertools

import torch

from dg_moe import device as dg_device
from dg_moe.kernels.sm90_fp8_gemm import GemmType, launcher


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
