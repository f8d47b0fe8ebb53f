"""sm90_scale on an SM90 GPU: bit-exact against torch, edge tiles, streams, fresh-process load time."""

from __future__ import annotations

import pytest
import torch

from dg_moe.jit.selftest import scale

pytestmark = pytest.mark.gpu

ALPHA = 1.3377  # not a power of two: the bf16 rounding of the fp32 product matters


@pytest.fixture(scope="module", autouse=True)
def _sm90(sm90: None) -> None:
    """Every test here needs an SM90 GPU (conftest's `sm90`)."""


def _random(m: int, n: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    # Values away from zero so that a tile left unwritten or zero-filled cannot pass.
    x = torch.rand(m, n, device="cuda", generator=generator) * 8 + 0.25
    sign = torch.randint(0, 2, (m, n), device="cuda", generator=generator) * 2 - 1
    return (x * sign).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "m, n",
    [(1, 8), (1, 4104), (129, 8), (129, 4104), (31, 136), (33, 64), (4096, 4096), (20000, 24)],
)
def test_scale_matches_torch_exactly(dtype: torch.dtype, m: int, n: int, cuda_gen: torch.Generator) -> None:
    x = _random(m, n, dtype, cuda_gen)
    out = torch.full_like(x, float("nan"))
    result = scale(x, ALPHA, out=out)
    torch.cuda.synchronize()
    assert result is out
    expected = x * ALPHA
    mismatches = (out != expected).sum().item()
    assert mismatches == 0, f"{mismatches} of {out.numel()} elements differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_scale_in_place_and_allocating(dtype: torch.dtype, cuda_gen: torch.Generator) -> None:
    x = _random(257, 264, dtype, cuda_gen)
    expected = x * -0.75
    fresh = scale(x, -0.75)
    assert torch.equal(fresh, expected)
    same = scale(x, -0.75, out=x)
    torch.cuda.synchronize()
    assert same is x and torch.equal(x, expected)


def test_scale_on_side_stream_and_empty(cuda_gen: torch.Generator) -> None:
    x = _random(1000, 520, torch.bfloat16, cuda_gen)
    out = torch.full_like(x, float("nan"))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        scale(x, ALPHA, out=out)
    stream.synchronize()
    assert torch.equal(out, x * ALPHA)
    empty = torch.empty(0, 8, device="cuda", dtype=torch.bfloat16)
    assert scale(empty, 2.0).shape == (0, 8)


def test_scale_is_deterministic_and_graph_capturable(cuda_gen: torch.Generator) -> None:
    x = _random(300, 1032, torch.float32, cuda_gen)
    out = torch.full_like(x, float("nan"))
    scale(x, ALPHA, out=out)  # compile and load outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        scale(x, ALPHA, out=out)
    out.fill_(float("nan"))
    x.copy_(_random(300, 1032, torch.float32, cuda_gen))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, x * ALPHA)


def test_fresh_process_load_time(capsys: pytest.CaptureFixture[str]) -> None:
    from dg_moe.jit.loadtime import fresh_process_load_ms

    results = fresh_process_load_ms(runs=5)
    times = sorted(r["ms"] for r in results)
    assert all(r["stats"]["compiles"] == 0 for r in results)
    with capsys.disabled():
        print(f"\nsm90_scale cached-kernel load in a fresh process: median {times[2]:.2f} ms, all {times}")
