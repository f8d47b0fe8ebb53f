"""The fused MoE layer: routed FP8 (or BF16, ``fused_moe_bf16``) experts over the contiguous (prefill)
or masked (decode) layout, an optional shared expert, an ``nn.Module`` holding the weights, and the
expert-parallel layer over ``torch.distributed`` (docs/moe-layer.md)."""

from .decode_graph import DecodeGraphRunner
from .expert_parallel import expert_parallel_moe
from .fused import AUTO_MASKED_MAX_TOKENS, Mode, fused_moe, fused_moe_bf16, select_mode
from .masked import default_max_m
from .module import FusedMoE
from .quantize import quantize_expert_weights
from .reference import reference_moe
from .shared import SharedExpert

__all__ = [
    "AUTO_MASKED_MAX_TOKENS",
    "DecodeGraphRunner",
    "FusedMoE",
    "Mode",
    "SharedExpert",
    "default_max_m",
    "expert_parallel_moe",
    "fused_moe",
    "fused_moe_bf16",
    "quantize_expert_weights",
    "reference_moe",
    "select_mode",
]
