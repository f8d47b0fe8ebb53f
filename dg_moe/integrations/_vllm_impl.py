"""The vLLM subclasses behind ``dg_moe.integrations.vllm`` (importing this module imports vLLM).

Checked against vLLM 0.33.0's source. Layouts there, for a block-FP8 checkpoint (``Fp8MoEMethod``):

- ``w13_weight`` e4m3 [E, 2I, H]: ``w1`` (gate) loaded into rows [0, I), ``w3`` (up) into [I, 2I), and
  vLLM's SiLU-and-mul computes ``silu(x[:, :I]) * x[:, I:]``: the ``[gate | up]`` order ``fused_moe`` takes.
- ``w2_weight`` e4m3 [E, H, I].
- ``w13_weight_scale_inv`` float32 [E, 2I/128, H/128], ``w2_weight_scale_inv`` float32 [E, H/128, I/128]:
  one dequantisation scale per 128x128 block, ``fused_moe``'s format.

vLLM's "TRITON" FP8 backend leaves these tensors as loaded (``convert_to_fp8_moe_kernel_format`` does
nothing for it), so the MoE method names that backend for the conversion and the quant config; our
experts then read the weights and scales with no copy.
"""

from __future__ import annotations

from typing import Any

import torch
import vllm.model_executor.layers.fused_moe.modular_kernel as mk
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.config import (
    FusedMoEConfig,
    FusedMoEParallelConfig,
    FusedMoEQuantConfig,
)
from vllm.model_executor.layers.fused_moe.oracle.fp8 import Fp8MoeBackend
from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import (
    TopKWeightAndReduceDelegate,
    TopKWeightAndReduceNoOP,
)
from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
from vllm.model_executor.layers.quantization.fp8 import Fp8Config, Fp8MoEMethod
from vllm.model_executor.layers.quantization.utils.quant_utils import (
    QuantKey,
    kFp8Dynamic128Sym,
    kFp8Static128BlockSym,
)
from vllm.platforms import current_platform

from dg_moe.layout import per_token_cast_to_fp8, silu_and_mul_to_fp8_masked
from dg_moe.moe import fused_moe
from dg_moe.moe.hints import expected_rows_per_expert
from dg_moe.ops import m_grouped_fp8_gemm_nt_masked

from .vllm import QUANTIZATION

BLOCK = 128
_FALLBACK = "use --quantization fp8 (vLLM's own FP8 MoE kernels) for this model"


def _supported_device() -> bool:
    # dg_moe's GPU kernels are SM90 (Hopper) only; off CUDA and ROCm (vLLM's CPU platform, or no
    # accelerator at all) fused_moe runs its float64 reference, which is exact but slow.
    if current_platform.is_cuda():
        return current_platform.is_device_capability_family(90)
    return not current_platform.is_rocm()


class _DgMoeExpertsBase(mk.FusedMoEExpertsModular):
    """What both activation formats share: the one quantisation scheme, gated SiLU and 128x128 block scales."""

    def __init__(self, moe_config: FusedMoEConfig, quant_config: FusedMoEQuantConfig,
                 max_num_tokens: int | None = None, num_dispatchers: int | None = None) -> None:
        super().__init__(moe_config=moe_config, quant_config=quant_config, max_num_tokens=max_num_tokens,
                         num_dispatchers=num_dispatchers)
        if quant_config.quant_dtype != torch.float8_e4m3fn or list(quant_config.block_shape or ()) != [BLOCK, BLOCK]:
            raise ValueError(
                f"{type(self).__name__} needs e4m3 weights with one scale per {BLOCK}x{BLOCK} block, got "
                f"quant_dtype={quant_config.quant_dtype}, block_shape={quant_config.block_shape}; {_FALLBACK}"
            )
        if quant_config.per_act_token_quant or quant_config.per_out_ch_quant:
            raise ValueError(f"{type(self).__name__} quantises activations per 1x{BLOCK} group only; {_FALLBACK}")

    @staticmethod
    def _supports_current_device() -> bool:
        return _supported_device()

    @staticmethod
    def _supports_no_act_and_mul() -> bool:
        return False

    @staticmethod
    def _supports_quant_scheme(weight_key: QuantKey | None, activation_key: QuantKey | None) -> bool:
        return (weight_key, activation_key) == (kFp8Static128BlockSym, kFp8Dynamic128Sym)

    @staticmethod
    def _supports_activation(activation: MoEActivation) -> bool:
        # fused_moe computes silu(gate) * up on [gate | up] halves: no clamp, alpha or interleaving.
        return activation == MoEActivation.SILU

    @staticmethod
    def _supports_shape(hidden_dim: int) -> bool:
        return hidden_dim % BLOCK == 0

    def _scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        w1_scale, w2_scale = self.w1_scale, self.w2_scale
        if w1_scale is None or w2_scale is None or w1_scale.dtype != torch.float32 or w2_scale.dtype != torch.float32:
            raise ValueError(f"{type(self).__name__} needs float32 block scales for w13 and w2; {_FALLBACK}")
        return w1_scale, w2_scale

    def _check_activation(self, activation: MoEActivation) -> None:
        if activation != MoEActivation.SILU:
            raise ValueError(f"{type(self).__name__} computes SiLU-gated experts only, got {activation}; {_FALLBACK}")


class DgMoeExperts(_DgMoeExpertsBase):
    """vLLM's standard activation format (tokens [T, H]) through ``dg_moe.fused_moe``'s contiguous path.

    ``expects_unquantized_inputs`` makes vLLM's prepare step pass the BF16 tokens on (its dispatch, if any,
    then carries BF16) and ``fused_moe`` quantises them 1x128 itself; the result is the top-k weighted sum,
    so the finalize step has nothing left to reduce (``TopKWeightAndReduceNoOP``).
    """

    @staticmethod
    def activation_format() -> mk.FusedMoEActivationFormat:
        return mk.FusedMoEActivationFormat.Standard

    @staticmethod
    def _supports_parallel_config(moe_parallel_config: FusedMoEParallelConfig) -> bool:
        # The FlashInfer NVLink all-to-alls hand the experts pre-permuted buffers, not tokens with their ids.
        return not (moe_parallel_config.use_fi_nvl_two_sided_kernels
                    or moe_parallel_config.use_fi_nvl_one_sided_kernels)

    @property
    def expects_unquantized_inputs(self) -> bool:
        return True

    def finalize_weight_and_reduce_impl(self) -> mk.TopKWeightAndReduce:
        return TopKWeightAndReduceNoOP()

    def workspace_shapes(self, M: int, N: int, K: int, topk: int, global_num_experts: int,
                         local_num_experts: int, expert_tokens_meta: mk.ExpertTokensMetadata | None,
                         activation: MoEActivation) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        # fused_moe allocates its own buffers: vLLM only needs to provide the reduced output.
        return (0,), (0,), (M, K)

    def apply(self, output: torch.Tensor, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: MoEActivation,
              global_num_experts: int, expert_map: torch.Tensor | None, a1q_scale: torch.Tensor | None,
              a2_scale: torch.Tensor | None, workspace13: torch.Tensor, workspace2: torch.Tensor,
              expert_tokens_meta: mk.ExpertTokensMetadata | None, apply_router_weight_on_input: bool) -> None:
        """Write ``sum_s w[t, s] * expert_{ids[t, s]}(x[t])`` for the local experts into ``output`` [T, H].

        hidden_states: the BF16/FP16 tokens [T, H] (unquantised: see the class docstring); w1, w2 the
        layer's ``w13_weight`` and ``w2_weight``; topk_ids global expert ids, mapped to local ones through
        ``expert_map`` (-1: another rank's expert, skipped) under expert parallelism.
        """
        self._check_activation(activation)
        if hidden_states.dtype == torch.float8_e4m3fn:
            raise ValueError(f"{type(self).__name__} expects the unquantised tokens, got e4m3 ones from "
                             "the prepare step")
        w1_scale, w2_scale = self._scales()
        ids = _local_ids(topk_ids, expert_map)
        if apply_router_weight_on_input:
            # The prepare step already multiplied the tokens by their (top-1) weight.
            topk_weights = torch.ones_like(topk_weights)
        out = fused_moe(hidden_states.to(torch.bfloat16), w1, w1_scale, w2, w2_scale, ids, topk_weights,
                        mode="contiguous")
        output.copy_(out)


class DgMoeBatchedExperts(_DgMoeExpertsBase):
    """vLLM's batched activation format ([E, M, H] plus per-expert counts) through dg_moe's masked GEMMs.

    The prepare step (DeepEP low-latency, or vLLM's ``BatchedPrepareAndFinalize``) has already quantised
    and grouped the tokens; this class runs ``m_grouped_fp8_gemm_nt_masked`` (w13),
    ``silu_and_mul_to_fp8_masked`` and ``m_grouped_fp8_gemm_nt_masked`` (w2) and leaves the top-k weighting
    and the combine to the finalize step (``TopKWeightAndReduceDelegate``), as vLLM's batched DeepGEMM
    experts do.
    """

    @staticmethod
    def activation_format() -> mk.FusedMoEActivationFormat:
        return mk.FusedMoEActivationFormat.BatchedExperts

    @staticmethod
    def _supports_parallel_config(moe_parallel_config: FusedMoEParallelConfig) -> bool:
        return True

    def finalize_weight_and_reduce_impl(self) -> mk.TopKWeightAndReduce:
        return TopKWeightAndReduceDelegate()

    def workspace_shapes(self, M: int, N: int, K: int, topk: int, global_num_experts: int,
                         local_num_experts: int, expert_tokens_meta: mk.ExpertTokensMetadata | None,
                         activation: MoEActivation) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        assert self.max_num_tokens is not None and self.num_dispatchers is not None
        rows = self.max_num_tokens * self.num_dispatchers
        # workspace13 holds the first GEMM's [gate | up] output; the activation allocates its FP8 result.
        return (local_num_experts, rows, N), (0,), (local_num_experts, rows, K)

    def apply(self, output: torch.Tensor, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: MoEActivation,
              global_num_experts: int, expert_map: torch.Tensor | None, a1q_scale: torch.Tensor | None,
              a2_scale: torch.Tensor | None, workspace13: torch.Tensor, workspace2: torch.Tensor,
              expert_tokens_meta: mk.ExpertTokensMetadata | None, apply_router_weight_on_input: bool) -> None:
        """Write each local expert's output rows into ``output`` [E, M, H] (rows past its count untouched).

        hidden_states: e4m3 [E, M, H] with ``a1q_scale`` float32 [E, M, H/128] (1x128 groups), or BF16
        [E, M, H] (quantised here); ``expert_tokens_meta.expert_num_tokens`` int [E], each expert's rows.
        """
        self._check_activation(activation)
        if expert_tokens_meta is None or expert_tokens_meta.expert_num_tokens is None:
            raise ValueError(f"{type(self).__name__} needs the per-expert token counts of the batched format")
        w1_scale, w2_scale = self._scales()
        num_experts, max_m, hidden = hidden_states.shape
        two_i = w1.shape[1]
        if hidden_states.dtype == torch.float8_e4m3fn:
            if a1q_scale is None or a1q_scale.dtype != torch.float32:
                raise ValueError(f"{type(self).__name__} needs float32 1x{BLOCK} activation scales with e4m3 "
                                 f"tokens, got {None if a1q_scale is None else a1q_scale.dtype}")
            tokens = (hidden_states, a1q_scale.view(num_experts, max_m, hidden // BLOCK))
        else:
            q, sf = per_token_cast_to_fp8(hidden_states.reshape(-1, hidden).to(torch.bfloat16))
            tokens = (q.view(num_experts, max_m, hidden), sf.view(num_experts, max_m, hidden // BLOCK))
        masked_m = expert_tokens_meta.expert_num_tokens.to(torch.int32).contiguous()
        # A hint for the kernel's tile choice only: balanced routing of every dispatcher's tokens.
        hint = min(max_m, expected_rows_per_expert(topk_ids.shape[0] * (self.num_dispatchers or 1),
                                                   topk_ids.shape[1], max(global_num_experts, 1)))
        gate_up = workspace13.view(num_experts, max_m, two_i)
        m_grouped_fp8_gemm_nt_masked(tokens, (w1, w1_scale), gate_up, masked_m, hint)
        act = silu_and_mul_to_fp8_masked(gate_up, masked_m)
        m_grouped_fp8_gemm_nt_masked(act, (w2, w2_scale), output, masked_m, hint)


def _local_ids(topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    """Global expert ids to this rank's: ``expert_map[id]`` (-1 for another rank's expert), or as given."""
    if expert_map is None:
        return topk_ids
    local = expert_map[topk_ids.clamp(min=0).long()]
    return torch.where(topk_ids >= 0, local, -1)


class DgMoeFp8MoEMethod(Fp8MoEMethod):
    """``Fp8MoEMethod`` with dg_moe's experts inside vLLM's ``FusedMoEKernel``.

    vLLM picks the prepare/finalize object (no EP, naive DP, DeepEP high-throughput or low-latency) from
    the parallel config; its activation format picks :class:`DgMoeExperts` or :class:`DgMoeBatchedExperts`.
    Weights load exactly as for ``Fp8MoEMethod`` and are used as loaded.
    """

    def __init__(self, quant_config: Fp8Config, layer: RoutedExperts) -> None:
        super().__init__(quant_config, layer)
        if not self.block_quant or list(self.moe_block_shape or ()) != [BLOCK, BLOCK]:
            raise ValueError(
                f"{QUANTIZATION} needs a checkpoint quantised per {BLOCK}x{BLOCK} block (weight_block_size "
                f"[{BLOCK}, {BLOCK}], also after tensor-parallel sharding), got weight_block_size="
                f"{self.weight_block_size}, block shape in use {self.moe_block_shape}; {_FALLBACK}"
            )
        batched = self.moe.moe_parallel_config.use_batched_activation_format
        # The conversion and the quant config vLLM derives from the backend leave its layout as loaded for
        # these two (the layout our experts read); selection already happened in super().__init__.
        self.fp8_backend = Fp8MoeBackend.BATCHED_TRITON if batched else Fp8MoeBackend.TRITON
        self.experts_cls = DgMoeBatchedExperts if batched else DgMoeExperts
        fmt = self.experts_cls.activation_format()
        supported, reason = self.experts_cls.is_supported_config(
            self.experts_cls, self.moe, kFp8Static128BlockSym, kFp8Dynamic128Sym, fmt)
        if not supported:
            raise ValueError(f"{QUANTIZATION}: {self.experts_cls.__name__} {reason}; {_FALLBACK}")


class DgMoeFp8Config(Fp8Config):
    """vLLM's ``Fp8Config`` whose routed experts run on dg_moe; every other layer is ``Fp8Config``'s."""

    @classmethod
    def get_name(cls) -> str:
        return QUANTIZATION

    @classmethod
    def get_min_capability(cls) -> int:
        # dg_moe's kernels are SM90; the experts' device check refuses other GPUs with the reason.
        return 90

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        # A checkpoint says quant_method "fp8"; vLLM accepts another --quantization only when a config claims
        # the checkpoint. Claim it only when the user asked for dg_moe_fp8, never for a plain fp8 run.
        if user_quant == QUANTIZATION and "fp8" in str(hf_quant_cfg.get("quant_method", "")):
            return QUANTIZATION
        return None

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        method = super().get_quant_method(layer, prefix)
        # Fp8Config hands skipped layers an unquantised method and mxfp4-stored experts an MXFP4 one: only
        # its own FP8 MoE method is replaced.
        if isinstance(layer, RoutedExperts) and type(method) is Fp8MoEMethod:
            return DgMoeFp8MoEMethod(self, layer)
        return method
