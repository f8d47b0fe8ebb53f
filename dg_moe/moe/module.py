"""``FusedMoE``: an ``nn.Module`` holding one MoE layer's FP8 expert weights, running ``fused_moe``, or
its BF16 expert weights (``precision="bf16"``), running ``fused_moe_bf16``.

The weights use vLLM's names and layout (``w13_weight`` [E, 2I, H] with ``[gate | up]`` along 2I,
``w2_weight`` [E, H, I], per-128x128-block float32 ``*_weight_scale_inv``: the dequantisation
scale, which DeepSeek's checkpoints name "scale_inv"), so checkpoint loaders can fill them as
they are. Routing (gate, top-k) stays outside the module, as in vLLM's FusedMoE.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .. import checks as chk
from .fused import Mode, fused_moe, fused_moe_bf16
from .layer_checks import layout_mode, scaling_factor
from .quantize import quantize_expert_weights
from .shared import SharedExpert


def _fp8_parameter(shape: tuple[int, ...], device: torch.device | str | None) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape, dtype=chk.FP8, device=device), requires_grad=False)


def _bf16_parameter(shape: tuple[int, ...], device: torch.device | str | None) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape, dtype=torch.bfloat16, device=device), requires_grad=False)


Precision = Literal["fp8", "bf16"]
PRECISIONS = ("fp8", "bf16")


def _precision(fn: str, value: object) -> Precision:
    if value not in PRECISIONS:
        raise ValueError(
            f"{fn}: precision must be 'fp8' (weights quantised per 128x128 block, fused_moe) or 'bf16' (weights "
            f"kept in BF16, fused_moe_bf16), got {value!r}"
        )
    return value


def _scale_parameter(shape: tuple[int, ...], device: torch.device | str | None) -> nn.Parameter:
    return nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device), requires_grad=False)


def _size(fn: str, name: str, value: object, fp8_k: bool = False) -> int:
    value = chk.positive_int(fn, name, value)
    if fp8_k:
        chk.k_aligned(fn, name, value, pad="the weights")
    return value


class FusedMoE(nn.Module):
    """The experts of one MoE layer, FP8 (recipe 128x128), forward through :func:`fused_moe`; or with
    ``precision="bf16"`` BF16, forward through :func:`fused_moe_bf16` (nothing quantised).

    num_experts: E local experts; hidden_size: H; intermediate_size: I of each routed expert; top_k:
    slots per token (``topk_ids`` must have this many columns). H, I (and Is) multiples of 128.
    shared_intermediate_size: Is of one DeepSeek-style shared expert (None: no shared expert).
    routed_scaling_factor, mode, max_m: passed to :func:`fused_moe` on every forward.
    device: where the (zero-initialised) weights are allocated; load real ones into the parameters,
    or build the layer with :meth:`from_bf16`.
    precision: "fp8" (default) or "bf16". A BF16 layer holds only ``w13_weight`` bf16 [E, 2I, H] and
    ``w2_weight`` bf16 [E, H, I] (no scales) and has no shared expert.

    Parameters (``requires_grad=False``): ``w13_weight`` e4m3 [E, 2I, H], ``w13_weight_scale_inv``
    float32 [E, 2I/128, H/128], ``w2_weight`` e4m3 [E, H, I], ``w2_weight_scale_inv`` float32
    [E, H/128, I/128], and with a shared expert ``shared_w13_weight`` [2Is, H],
    ``shared_w13_weight_scale_inv`` [2Is/128, H/128], ``shared_w2_weight`` [H, Is],
    ``shared_w2_weight_scale_inv`` [H/128, Is/128]. ``module.to(dtype)`` would cast them (FP8 is a
    floating dtype to torch); move the module with ``.to(device)`` only.
    """

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        top_k: int,
        *,
        shared_intermediate_size: int | None = None,
        routed_scaling_factor: float = 1.0,
        mode: Mode = "auto",
        max_m: int | None = None,
        device: torch.device | str | None = None,
        precision: Precision = "fp8",
    ) -> None:
        super().__init__()
        fn = "FusedMoE"
        self.precision = _precision(fn, precision)
        if precision == "bf16" and shared_intermediate_size is not None:
            raise ValueError(
                f"{fn}: a shared expert needs precision='fp8' (fused_moe_bf16 has none); leave "
                "shared_intermediate_size None and add a BF16 shared MLP's output to the layer's yourself"
            )
        e = _size(fn, "num_experts", num_experts)
        h = _size(fn, "hidden_size", hidden_size, fp8_k=True)
        i = _size(fn, "intermediate_size", intermediate_size, fp8_k=True)
        # top_k may exceed the local experts under expert parallelism: slots of other ranks hold -1.
        self.top_k = _size(fn, "top_k", top_k)
        layout_mode(fn, mode)
        if max_m is not None:
            chk.positive_int(fn, "max_m", max_m)
        self.num_experts, self.hidden_size, self.intermediate_size = e, h, i
        self.routed_scaling_factor = scaling_factor(fn, routed_scaling_factor)
        self.mode: Mode = mode
        self.max_m = max_m
        if precision == "bf16":
            self.w13_weight = _bf16_parameter((e, 2 * i, h), device)
            self.w2_weight = _bf16_parameter((e, h, i), device)
            self.shared_intermediate_size = None
            return
        b = chk.BLOCK_K
        self.w13_weight = _fp8_parameter((e, 2 * i, h), device)
        self.w13_weight_scale_inv = _scale_parameter((e, 2 * i // b, h // b), device)
        self.w2_weight = _fp8_parameter((e, h, i), device)
        self.w2_weight_scale_inv = _scale_parameter((e, h // b, i // b), device)
        self.shared_intermediate_size = shared_intermediate_size
        if shared_intermediate_size is not None:
            s = _size(fn, "shared_intermediate_size", shared_intermediate_size, fp8_k=True)
            self.shared_w13_weight = _fp8_parameter((2 * s, h), device)
            self.shared_w13_weight_scale_inv = _scale_parameter((2 * s // b, h // b), device)
            self.shared_w2_weight = _fp8_parameter((h, s), device)
            self.shared_w2_weight_scale_inv = _scale_parameter((h // b, s // b), device)

    @classmethod
    def from_bf16(
        cls,
        w13: torch.Tensor,
        w2: torch.Tensor,
        top_k: int,
        *,
        shared_w13: torch.Tensor | None = None,
        shared_w2: torch.Tensor | None = None,
        routed_scaling_factor: float = 1.0,
        mode: Mode = "auto",
        max_m: int | None = None,
        precision: Precision = "fp8",
    ) -> FusedMoE:
        """A layer whose weights are ``w13``/``w2`` quantised per 128x128 block (``per_block_cast_to_fp8``),
        or with ``precision="bf16"`` copied as BF16 (no shared expert then).

        w13: bf16/fp16/fp32 [E, 2I, H] with ``[gate | up]`` along 2I; w2: [E, H, I]; optional
        shared expert shared_w13 [2Is, H] and shared_w2 [H, Is] (both or neither). The layer lives
        on w13's device.
        """
        fn = "FusedMoE.from_bf16"
        if _precision(fn, precision) == "bf16" and (shared_w13 is not None or shared_w2 is not None):
            raise ValueError(
                f"{fn}: shared_w13/shared_w2 need precision='fp8' (fused_moe_bf16 has no shared expert); drop them "
                "and add the shared MLP's output to the layer's yourself"
            )
        w13 = chk.tensor(fn, "w13", w13, chk.FLOAT_DTYPES, 3, "[E, 2I, H]")
        num_experts, two_i, hidden = w13.shape
        w2 = chk.tensor(fn, "w2", w2, chk.FLOAT_DTYPES, 3, "[E, H, I]")
        chk.shape(fn, "w2", w2, (num_experts, hidden, two_i // 2), f"w13 of shape {tuple(w13.shape)}")
        if (shared_w13 is None) != (shared_w2 is None):
            raise ValueError(f"{fn}: pass both shared_w13 and shared_w2 for a shared expert, or neither")
        shared_inter = None
        if shared_w13 is not None:
            shared_w13 = chk.tensor(fn, "shared_w13", shared_w13, chk.FLOAT_DTYPES, 2, "[2Is, H]")
            shared_w2 = chk.tensor(fn, "shared_w2", shared_w2, chk.FLOAT_DTYPES, 2, "[H, Is]")
            shared_inter = shared_w13.shape[0] // 2
            chk.shape(fn, "shared_w2", shared_w2, (hidden, shared_inter),
                      f"shared_w13 of shape {tuple(shared_w13.shape)}")
        layer = cls(num_experts, hidden, two_i // 2, top_k, shared_intermediate_size=shared_inter,
                    routed_scaling_factor=routed_scaling_factor, mode=mode, max_m=max_m, device=w13.device,
                    precision=precision)
        with torch.no_grad():
            if precision == "bf16":
                layer.w13_weight.copy_(w13)
                layer.w2_weight.copy_(w2)
                return layer
            for prefix, pair in (("w13", w13), ("w2", w2), ("shared_w13", shared_w13), ("shared_w2", shared_w2)):
                if pair is None:
                    continue
                q, sf = quantize_expert_weights(pair)
                getattr(layer, f"{prefix}_weight").copy_(q)
                getattr(layer, f"{prefix}_weight_scale_inv").copy_(sf)
        return layer

    @property
    def shared_expert(self) -> SharedExpert | None:
        """The shared expert's FP8 weights as :func:`fused_moe` takes them, or None."""
        if self.shared_intermediate_size is None:
            return None
        return SharedExpert(self.shared_w13_weight, self.shared_w13_weight_scale_inv,
                            self.shared_w2_weight, self.shared_w2_weight_scale_inv)

    def forward(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *,
                return_overflow: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """bfloat16 [T, H] from hidden bfloat16 [T, H], topk_ids int [T, top_k] (-1: not local) and
        topk_weights float [T, top_k]; with ``return_overflow`` also the int32 [E] entries the masked
        layout dropped. See :func:`fused_moe`."""
        if isinstance(topk_ids, torch.Tensor) and topk_ids.dim() == 2 and topk_ids.shape[1] != self.top_k:
            raise ValueError(
                f"FusedMoE.forward: topk_ids has {topk_ids.shape[1]} slots per token but the layer was built "
                f"with top_k = {self.top_k}; route with k = {self.top_k}"
            )
        if self.precision == "bf16":
            return fused_moe_bf16(hidden, self.w13_weight, self.w2_weight, topk_ids, topk_weights, mode=self.mode,
                                  max_m=self.max_m, routed_scaling_factor=self.routed_scaling_factor,
                                  return_overflow=return_overflow)
        return fused_moe(
            hidden, self.w13_weight, self.w13_weight_scale_inv, self.w2_weight, self.w2_weight_scale_inv,
            topk_ids, topk_weights, mode=self.mode, max_m=self.max_m,
            routed_scaling_factor=self.routed_scaling_factor, shared_expert=self.shared_expert,
            return_overflow=return_overflow,
        )

    def extra_repr(self) -> str:
        shared = self.shared_intermediate_size
        shared = "" if shared is None else f", shared_intermediate_size={shared}"
        return (f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, "
                f"intermediate_size={self.intermediate_size}, top_k={self.top_k}{shared}, "
                f"routed_scaling_factor={self.routed_scaling_factor}, mode={self.mode!r}, max_m={self.max_m}, "
                f"precision={self.precision!r}")
