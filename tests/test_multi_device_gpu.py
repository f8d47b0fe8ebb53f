"""The SM90 GEMMs on a GPU other than the current one (several GPUs in one process, as with
transformers' device_map="auto"): each launch must go to the tensors' device, with that device's
stream and its own shared-memory attribute and occupancy query."""

from __future__ import annotations

import pytest
import torch

import dg_moe
from dg_moe import reference

from .gpu_inputs import assert_matches, fp8_activations, fp8_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs in this process"),
]


def _inputs_on(device: int, seed: int):
    """Dense and masked operands made on GPU 0, then moved to ``device``."""
    with torch.cuda.device(0):
        gen = torch.Generator(device="cuda:0").manual_seed(seed)
        a = fp8_activations(129, 7168, gen)
        b = fp8_weights(1, 2112, 7168, gen)
        groups, max_m = 4, 64
        am = fp8_activations(groups * max_m, 7168, gen)
        bm = fp8_weights(groups, 4096, 7168, gen)
    a = tuple(t.to(device) for t in a)
    b = (b[0][0].to(device), b[1][0].to(device))
    am = (am[0].view(groups, max_m, 7168).to(device), am[1].view(groups, max_m, 56).to(device))
    bm = tuple(t.to(device) for t in bm)
    masked_m = torch.tensor([0, 1, 33, max_m], dtype=torch.int32, device=device)
    return a, b, am, bm, masked_m


@pytest.mark.parametrize("current,target", [(0, 1), (1, 0)])
def test_gemms_on_a_device_that_is_not_current(current, target):
    a, b, am, bm, masked_m = _inputs_on(target, seed=17 + target)
    d = torch.full((129, 2112), float("nan"), device=target, dtype=torch.bfloat16)
    dm = torch.full((4, 64, 4096), float("nan"), device=target, dtype=torch.bfloat16)
    with torch.cuda.device(current):
        dg_moe.fp8_gemm_nt(a, b, d)
        dg_moe.m_grouped_fp8_gemm_nt_masked(am, bm, dm, masked_m, expected_m=32)
        assert torch.cuda.current_device() == current
    torch.cuda.synchronize(target)
    assert_matches(d, reference.ref_fp8_gemm_nt(a, b))
    assert_matches(dm, reference.ref_m_grouped_fp8_gemm_nt_masked(am, bm, masked_m))
