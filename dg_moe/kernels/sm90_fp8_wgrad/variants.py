"""The weight-gradient GEMM's compiled variants: the layouts, the template arguments of one variant, and
those DeepSeek-V3's weight gradients need (for the CI compile check)."""

from __future__ import annotations

import enum

from .heuristic import WgradConfig, choose_config
from .host_constants import template_args as host_template_args

FAMILY = "sm90_fp8_wgrad"
"""The JIT family: kernel dg_moe/csrc/kernels/sm90_fp8_wgrad.cuh, host entry dg_moe/csrc/launch/sm90_fp8_wgrad.cu."""


class WgradType(enum.Enum):
    """The kernel's problem layouts; each value names its ``dg_moe::sm90_fp8_wgrad::WgradType`` enumerator."""

    NORMAL = "Normal"  # one [M, K] x [N, K] problem
    K_GROUPED = "KGrouped"  # groups back to back along K, the device array holds each group's K
    K_GROUPED_PSUM = "KGroupedPsum"  # the same, the device array holds the running sums

    @property
    def cpp(self) -> str:
        """The C++ enumerator, fully qualified."""
        return f"dg_moe::sm90_fp8_wgrad::WgradType::{self.value}"


def config_for(wgrad_type: WgradType, m: int, n: int, k_per_group: int, num_groups: int, num_sms: int,
               bf16: bool = False) -> WgradConfig:
    """The cost model's configuration for one call shape of ``wgrad_type``: [m, n] outputs, ``num_groups`` of
    them over ``k_per_group`` (mean) K rows each, FP8 or (``bf16``) BF16 operands; K-grouped layouts take
    the K-grouped rule (heuristic.SHARED_B_BLOCK_N)."""
    if not isinstance(wgrad_type, WgradType):
        raise TypeError(f"config_for: wgrad_type must be a WgradType ({', '.join(t.name for t in WgradType)}), "
                        f"got {wgrad_type!r}")
    return choose_config(m, n, k_per_group, num_groups, num_sms, bf16, k_grouped=wgrad_type != WgradType.NORMAL)


def template_args(wgrad_type: WgradType, config: WgradConfig, n: int) -> dict[str, int | str]:
    """The JIT template arguments of one variant: N, the tiling, layout and operand type (``config.bf16``),
    then the host constants (:mod:`.host_constants`) that the launch file static_asserts. M and K are
    run-time: in a weight gradient K is the token count, which changes with every batch."""
    operands = "Bf16" if config.bf16 else "Fp8"
    return {
        "SHAPE_N": n, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "NUM_STAGES": config.num_stages,
        "WGRAD_TYPE": wgrad_type.cpp, "OPERANDS": f"dg_moe::sm90_fp8_wgrad::Operands::{operands}",
        "SHARE_B": int(config.share_b),
        **host_template_args(config),
    }


# (M, N) of DeepSeek-V3's weight gradients: dense projections dW[out, in] (q_a/kv_a down-projections,
# q_b, o, the shared and dense MLP), and per-expert (2 * moe_intermediate, hidden), (hidden, moe_intermediate).
DEEPSEEK_V3_DENSE_MN = ((2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048),
                        (36864, 7168), (7168, 18432))
DEEPSEEK_V3_EXPERT_MN = ((4096, 7168), (7168, 2048))
TOKENS = (4096, 8192)
EXPERT_GROUPS = (8, 32)


def deepseek_v3_variants(num_sms: int = 132) -> list[dict[str, int | str]]:
    """Template arguments of every variant the heuristic picks for DeepSeek-V3's weight gradients (dense
    at 4096 and 8192 tokens, K-grouped over 8 and 32 local experts, both layout forms), each once."""
    found: dict[tuple, dict[str, int | str]] = {}

    def add(wgrad_type: WgradType, m: int, n: int, k: int, groups: int) -> None:
        args = template_args(wgrad_type, config_for(wgrad_type, m, n, k, groups, num_sms), n)
        found.setdefault(tuple(sorted(args.items())), args)

    for m, n in DEEPSEEK_V3_DENSE_MN:
        for tokens in TOKENS:
            add(WgradType.NORMAL, m, n, tokens, 1)
    for m, n in DEEPSEEK_V3_EXPERT_MN:
        for groups in EXPERT_GROUPS:
            for tokens in TOKENS:
                for wgrad_type in (WgradType.K_GROUPED, WgradType.K_GROUPED_PSUM):
                    add(wgrad_type, m, n, tokens * 8 // groups, groups)
    return list(found.values())
