"""The cases of `dg-moe bench gemm`: shapes, row counts and the work each one does (pure, no GPU).

Dense: DeepSeek-V3's six (N, K) at a decode, a small-batch and a prefill M. Contiguous (prefill MoE):
4, 8 and 32 experts, rows per expert jittered 0.7-1.3x and each expert's segment padded to 128 rows.
Masked (decode MoE): the expected rows per expert of decode batches, the group counts DeepEP's
low-latency layout gives them, counts jittered the same way. Every random draw is seeded by the case,
so every run (and every warm-up process) builds the same problem.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..kernels.sm90_fp8_gemm.variants import DEEPSEEK_V3_NK
from ..layout.math import align
from ..reference.common import MK_ALIGNMENT

FAMILIES = ("dense", "contiguous", "masked", "eager")

DENSE_NK = DEEPSEEK_V3_NK  # attention projections, shared and dense MLPs
DENSE_MS = (64, 128, 4096)
# DeepSeek-V3's expert GEMMs: gate/up (N = 2 x 2048, K = hidden) and down (N = hidden, K = 2048).
MOE_NK = ((4096, 7168), (7168, 2048))
CONTIGUOUS_GROUPS = ((4, 8192), (8, 4096), (32, 256))  # (experts, mean rows per expert)
MASKED_GROUPS = ((32, 1), (32, 4), (32, 16), (16, 32), (8, 64), (16, 128), (4, 256), (1, 1024))
QUICK_NK = (4096, 7168)
"""--quick keeps only the cases of this (N, K): one weight shape, every M."""

# The calls each family times. FORMS pairs each dg_moe form with DeepGEMM's call of the same problem
# (ratio = DeepGEMM time / dg_moe time); PEERS names the cuBLAS or torch call beside them.
FORMS = {
    "dense": {"dg_moe": "deepgemm"},
    "contiguous": {"dg_moe_psum": "deepgemm_psum", "dg_moe_rows": "deepgemm_rows"},
    "masked": {"dg_moe": "deepgemm"},
}
PEERS = {"dense": "cublas_blockwise", "contiguous": "grouped_mm_bf16", "masked": "bmm_bf16"}


def call_labels(family: str) -> list[str]:
    """Every call a case of ``family`` times, in table order: dg_moe's forms, DeepGEMM's, the peer."""
    forms = FORMS[family]
    return [*forms, *forms.values(), PEERS[family]]


JITTER = (0.7, 1.3)
"""Rows per group are drawn uniformly in this range times the mean (DeepGEMM's tests draw the same)."""


def jittered_counts(groups: int, mean: int, seed: int, minimum: int = 0) -> list[int]:
    """``groups`` row counts uniform in JITTER x ``mean``, rounded, at least ``minimum``; seeded."""
    gen = torch.Generator().manual_seed(seed)
    low, high = JITTER
    scale = torch.rand(groups, generator=gen, dtype=torch.float64) * (high - low) + low
    return [max(minimum, round(float(s) * mean)) for s in scale]


def operand_bytes(groups: int, rows: int, n: int, k: int) -> int:
    """What a GEMM must move at least: ``groups`` weight matrices [N, K] with their 128x128 block scales,
    and ``rows`` A rows (with their 1x128 scales) read and D rows (BF16) written, each exactly once."""
    k_blocks = math.ceil(k / 128)
    weights = groups * (n * k + math.ceil(n / 128) * k_blocks * 4)
    return weights + rows * (k + k_blocks * 4 + n * 2)


@dataclass(frozen=True)
class DenseCase:
    """D[M, N] = A[M, K] @ B[N, K]^T."""

    m: int
    n: int
    k: int

    family = "dense"

    @property
    def label(self) -> str:
        return f"M={self.m} N={self.n} K={self.k}"

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    @property
    def bytes_moved(self) -> int:
        return operand_bytes(1, self.m, self.n, self.k)

    def describe(self) -> dict[str, int]:
        """The shape, and the work the roofline chart prices it by (dg_moe.bench.plot)."""
        return {**asdict(self), "flops": self.flops, "bytes": self.bytes_moved}


@dataclass(frozen=True)
class ContiguousCase:
    """``groups`` experts' rows in one [M_sum, K] buffer, each expert's segment 128-row aligned."""

    groups: int
    rows_per_group: int
    n: int
    k: int

    family = "contiguous"

    @property
    def label(self) -> str:
        return f"G={self.groups} rows/g={self.rows_per_group} N={self.n} K={self.k}"

    @property
    def counts(self) -> list[int]:
        return jittered_counts(self.groups, self.rows_per_group, seed=self.groups * 100_000 + self.rows_per_group)

    @property
    def starts(self) -> list[int]:
        """First row of each group: the previous group's end rounded up to MK_ALIGNMENT."""
        out, row = [], 0
        for count in self.counts:
            out.append(row)
            row += align(count, MK_ALIGNMENT)
        return out

    @property
    def ends(self) -> list[int]:
        """Exclusive end row of each group: the psum layout's grouped_layout."""
        return [start + count for start, count in zip(self.starts, self.counts, strict=True)]

    @property
    def m_sum(self) -> int:
        return sum(align(c, MK_ALIGNMENT) for c in self.counts)

    @property
    def valid_rows(self) -> int:
        return sum(self.counts)

    @property
    def m_indices(self) -> list[int]:
        """The per-row layout: each row's group, -1 on the padding rows."""
        ids = [-1] * self.m_sum
        for g, (start, count) in enumerate(zip(self.starts, self.counts, strict=True)):
            ids[start:start + count] = [g] * count
        return ids

    @property
    def per_row_hint(self) -> int:
        """dg_moe's rows hint for the per-row layout (no expected_m there): M_sum / G."""
        return max(1, self.m_sum // self.groups)

    @property
    def flops(self) -> int:
        return 2 * self.valid_rows * self.n * self.k

    @property
    def bytes_moved(self) -> int:
        """Every expert's weights, the valid rows of A and D: the padding rows are no compulsory traffic."""
        return operand_bytes(self.groups, self.valid_rows, self.n, self.k)

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "counts": self.counts, "m_sum": self.m_sum, "valid_rows": self.valid_rows,
                "expected_m_for_psum_layout": self.rows_per_group, "flops": self.flops, "bytes": self.bytes_moved}


@dataclass(frozen=True)
class MaskedCase:
    """``groups`` experts, each with its own [max_m, K] slot of which masked_m[g] rows are valid."""

    groups: int
    expected_m: int
    n: int
    k: int

    family = "masked"

    @property
    def label(self) -> str:
        return f"G={self.groups} expected_m={self.expected_m} N={self.n} K={self.k}"

    @property
    def max_m(self) -> int:
        """Room for the largest draw, rounded up to 128 rows: DeepGEMM's masked kernel stores whole
        BLOCK_M-row tiles (64 or 128) at ``group * max_m`` in a flattened view of d, so with a max_m
        that is not a multiple of its BLOCK_M a tile's store would spill into the next group's rows.
        dg_moe accepts any max_m."""
        return align(math.ceil(self.expected_m * JITTER[1]), MK_ALIGNMENT)

    @property
    def counts(self) -> list[int]:
        counts = jittered_counts(self.groups, self.expected_m, seed=self.groups * 1000 + self.expected_m, minimum=1)
        return [min(c, self.max_m) for c in counts]

    @property
    def valid_rows(self) -> int:
        return sum(self.counts)

    @property
    def bytes_moved(self) -> int:
        """What the kernel must move at least: every weight, the valid A rows and D rows, their scales."""
        return operand_bytes(self.groups, self.valid_rows, self.n, self.k)

    @property
    def flops(self) -> int:
        return 2 * self.valid_rows * self.n * self.k

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "max_m": self.max_m, "masked_m": self.counts, "valid_rows": self.valid_rows,
                "flops": self.flops, "bytes": self.bytes_moved}


Case = DenseCase | ContiguousCase | MaskedCase

EAGER_CASE = DenseCase(128, 2112, 7168)
"""The eager line's call: a decode-sized dense GEMM, where host time per call is most of the cost."""


def family_cases(family: str, quick: bool = False) -> list[Case]:
    """The cases of one family in run order (``eager`` is a single case)."""
    if family == "dense":
        cases: list[Case] = [DenseCase(m, n, k) for m in DENSE_MS for n, k in DENSE_NK]
    elif family == "contiguous":
        cases = [ContiguousCase(g, rows, n, k) for g, rows in CONTIGUOUS_GROUPS for n, k in MOE_NK]
    elif family == "masked":
        cases = [MaskedCase(g, rows, n, k) for g, rows in MASKED_GROUPS for n, k in MOE_NK]
    elif family == "eager":
        return [EAGER_CASE]
    else:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return [c for c in cases if (c.n, c.k) == QUICK_NK] if quick else cases


def parse_families(text: str) -> list[str]:
    """``dense,masked`` -> ["dense", "masked"] in the canonical order; raises ValueError on unknown names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"--family: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FAMILIES)}")
    return [f for f in FAMILIES if f in names]
