"""DeepGEMM as a measurement peer: imported when importable, else the reason it is not; and its grouped
GEMMs behind the fused layer's GEMM seam (:func:`layer_gemms`), the layer peer of `dg-moe bench moe`.

dg_moe keeps DeepGEMM's API, so a ``deep_gemm`` that is really dg_moe (an alias some setups install)
would compare dg_moe with itself: that counts as not importable too.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

import dg_moe
from dg_moe.layout import get_mk_alignment_for_contiguous_layout
from dg_moe.moe._gemms import FP8Pair, GroupedGemms


@dataclass(frozen=True)
class DeepGemmStatus:
    """The imported module, or None with the reason."""

    module: ModuleType | None
    version: str | None = None
    path: str | None = None
    reason: str | None = None

    def describe(self) -> dict[str, object]:
        """For the JSON's meta: whether it ran, its version and location, or why not."""
        return {"available": self.module is not None, "version": self.version, "path": self.path,
                "reason": self.reason}

    @property
    def missing(self) -> str:
        """What the DeepGEMM columns show in place of a time."""
        return f"n/a: {self.reason}"


def _is_dg_moe(module: ModuleType) -> bool:
    package_dir = os.path.dirname(os.path.abspath(dg_moe.__file__))
    path = os.path.abspath(getattr(module, "__file__", None) or "")
    return module is dg_moe or path.startswith(package_dir + os.sep)


def load_deep_gemm(disabled: str | None = None) -> DeepGemmStatus:
    """Import ``deep_gemm``; ``disabled`` (e.g. from --no-deepgemm) skips the import and is the reason."""
    if disabled is not None:
        return DeepGemmStatus(None, reason=disabled)
    try:
        module = importlib.import_module("deep_gemm")
    except Exception as err:  # ImportError, OSError from its extension, or whatever its __init__ raises
        first_line = str(err).splitlines()[0] if str(err) else ""
        return DeepGemmStatus(None, reason=f"deep_gemm not importable ({type(err).__name__}: {first_line})")
    path = getattr(module, "__file__", None)
    if _is_dg_moe(module):
        return DeepGemmStatus(None, path=path, reason="deep_gemm resolves to dg_moe itself, not DeepGEMM")
    return DeepGemmStatus(module, version=str(getattr(module, "__version__", "unknown")), path=path)


# DeepGEMM's m_grouped_fp8_gemm_nt_masked (SM90: sm90_m_grouped_fp8_gemm_masked_1d2d) addresses a and d as
# one flattened [G * max_m, ...] tensor map and stores whole BLOCK_M-row tiles at g * max_m + i * BLOCK_M,
# with BLOCK_M 64 or 128 (its heuristic's only candidates for the masked layout); it checks neither. With
# max_m not a multiple of BLOCK_M, group g's last tile overwrites the first rows of group g + 1: the wrong
# outputs seen at T <= 32 with max_m = T. A multiple of 128 keeps every tile inside its group.
DEEPGEMM_MASKED_ROWS_ALIGNMENT = 128


def layer_gemms(module: ModuleType) -> GroupedGemms:
    """DeepGEMM's two grouped FP8 GEMMs behind the fused layer's seam (``dg_moe.moe._gemms``), on buffers it
    accepts: the masked ones hold ``max_m`` rounded up to :data:`DEEPGEMM_MASKED_ROWS_ALIGNMENT` rows per
    expert. ``module``: the imported ``deep_gemm``. Raises RuntimeError where its contiguous layout's group
    alignment differs from the one dg_moe's routing pads to."""
    # m_grouped_fp8_gemm_nt_contiguous(use_psum_layout=True) starts group g at ends[g - 1] rounded up to
    # get_mk_alignment_for_contiguous_layout() (also its only BLOCK_M there), a value set_mk_alignment_for_
    # contiguous_layout may change; dg_moe's routing pads every expert's segment to its own alignment.
    theirs, ours = module.get_mk_alignment_for_contiguous_layout(), get_mk_alignment_for_contiguous_layout()
    if theirs != ours:
        raise RuntimeError(f"deep_gemm.get_mk_alignment_for_contiguous_layout() is {theirs}, but dg_moe's contiguous "
                           f"layout pads each expert's rows to {ours}")

    def contiguous(a: FP8Pair, b: FP8Pair, d: torch.Tensor, ends: torch.Tensor, expected_m: int) -> None:
        module.m_grouped_fp8_gemm_nt_contiguous(a, b, d, ends, use_psum_layout=True,
                                                expected_m_for_psum_layout=expected_m)

    def masked(a: FP8Pair, b: FP8Pair, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int) -> None:
        module.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m)

    return GroupedGemms(contiguous, masked, masked_rows_alignment=DEEPGEMM_MASKED_ROWS_ALIGNMENT)
