"""The per-expert row-count hint the grouped GEMMs' config heuristic takes."""

from __future__ import annotations

from ..layout import ceil_div


def expected_rows_per_expert(num_tokens: int, top_k: int, num_experts: int) -> int:
    """Rows an expert receives under balanced routing, ``ceil(T*k / E)``, at least 1.

    Only the kernel configuration depends on it (BLOCK_M and the like), never the result.
    """
    return max(1, ceil_div(num_tokens * top_k, num_experts))


def masked_rows_hint(num_tokens: int, top_k: int, num_experts: int, max_m: int) -> int:
    """The ``expected_m`` the masked path passes its GEMMs: balanced rows per expert, at most ``max_m``."""
    return min(max_m, expected_rows_per_expert(num_tokens, top_k, num_experts))
