"""DecodeGraphRunner's argument checks (the replays themselves run in tests/test_moe_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from dg_moe.moe import DecodeGraphRunner, FusedMoE


def test_needs_a_fused_moe_layer():
    with pytest.raises(TypeError, match="FusedMoE"):
        DecodeGraphRunner(torch.nn.Linear(4, 4))


def test_needs_the_layer_on_cuda():
    layer = FusedMoE(4, 128, 128, 2)
    with pytest.raises(ValueError, match=r"CUDA device.*layer\.cuda\(\)"):
        DecodeGraphRunner(layer)
