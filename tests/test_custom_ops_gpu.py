"""The MoE blocks of tests/test_custom_ops.py on an SM90 GPU: torch.compile(fullgraph=True) through the
registered ops equal to eager, and the compiled block captured in a CUDA graph and replayed."""

from __future__ import annotations

import pytest
import torch

from .moe_loops import hidden_states, layer, routing
from .test_custom_ops import INTER, TOP_K, E, FusedBlock, H, MaskedMoE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (SM90)")]

NUM_TOKENS = 8


def _inputs(seed: int):
    lay = layer(E, H, INTER, seed, shared_inter=INTER)
    lay = type(lay)(*(t.cuda() for t in lay.routed), type(lay.shared)(*(t.cuda() for t in lay.shared)))
    ids, weights = routing(NUM_TOKENS, TOP_K, E, seed + 1, drop=0.2, dtype=torch.int32)
    return lay, hidden_states(NUM_TOKENS, H, seed + 2).cuda(), ids.cuda(), weights.cuda()


@pytest.mark.parametrize("block", ["masked_ops", "fused_moe"])
def test_compile_fullgraph_and_cuda_graph_replay(block):
    torch._dynamo.reset()
    lay, hidden, ids, weights = _inputs(seed=11)
    module = MaskedMoE(lay, max_m=NUM_TOKENS) if block == "masked_ops" else FusedBlock(lay)
    eager = module(hidden, ids, weights)  # also compiles the kernels (JIT, Triton) before any capture
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(hidden, ids, weights), eager, rtol=0, atol=0)

    # Capture the compiled block once, then replay it on new contents of the same input buffers.
    static = [t.clone() for t in (hidden, ids, weights)]
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compiled(*static)
    _, hidden2, ids2, weights2 = _inputs(seed=23)
    for buffer, value in zip(static, (hidden2, ids2, weights2), strict=True):
        buffer.copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, module(hidden2, ids2, weights2), rtol=0, atol=0)
