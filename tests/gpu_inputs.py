"""Random FP8 operands for the GPU kernel tests (never zeros; fresh per call), and the output check."""

from __future__ import annotations

import torch

from dg_moe import layout
from dg_moe.reference import calc_diff

FP8_SIMILARITY_LIMIT = 1e-3
BF16_SIMILARITY_LIMIT = 1e-5


def fp8_activations(rows: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 [rows, k] with row-major FP32 scales [rows, k/128] from a random BF16 matrix."""
    x = torch.randn(rows, k, device="cuda", generator=generator, dtype=torch.float32)
    x = x * (torch.rand(rows, 1, device="cuda", generator=generator) * 4 + 0.25)
    return layout.per_token_cast_to_fp8(x.to(torch.bfloat16))


def fp8_weights(groups: int, n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 [groups, n, k] with per-128x128-block FP32 scales [groups, ceil(n/128), k/128]."""
    pairs = [
        layout.per_block_cast_to_fp8(
            torch.randn(n, k, device="cuda", generator=generator, dtype=torch.float32).to(torch.bfloat16)
        )
        for _ in range(groups)
    ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def assert_matches(out: torch.Tensor, ref: torch.Tensor, limit: float = FP8_SIMILARITY_LIMIT) -> None:
    """Rows the reference marks NaN must still hold the NaN poison; the rest must match it within the
    global similarity ``limit`` (1e-3 for FP8 kernels, 1e-5 for BF16 ones: dg_moe/reference/metrics.py)."""
    written = ~torch.isnan(ref)
    assert torch.equal(torch.isnan(out.float()), ~written), "a row that must be written was not, or vice versa"
    if bool(written.any()):
        diff = calc_diff(out.double()[written], ref[written])
        assert diff < limit, f"global similarity error {diff:.2e} >= {limit}"
