"""The SGLang pieces behind ``dg_moe.integrations.sglang`` (importing this module imports SGLang).

Checked against SGLang 0.5.23's source. Layouts there, for a block-FP8 checkpoint (``Fp8MoEMethod``):

- ``w13_weight`` e4m3 [E, 2I, H]: ``FusedMoE``'s weight loader puts ``w1`` (gate) in rows [0, I) and ``w3``
  (up) in [I, 2I) (unless the method sets ``load_up_proj_weight_first``, which ``Fp8MoEMethod`` does not):
  the ``[gate | up]`` order ``fused_moe`` takes.
- ``w2_weight`` e4m3 [E, H, I].
- ``w13_weight_scale_inv`` float32 [E, 2I/128, H/128], ``w2_weight_scale_inv`` float32 [E, H/128, I/128]:
  one dequantisation scale per 128x128 block, ``fused_moe``'s format.

The standard dispatcher hands the runner BF16 tokens [T, H] and top-k ids already mapped to this rank's
experts (-1 for another rank's), which ``fused_moe`` skips.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sglang.srt.arg_groups.choices import MOE_RUNNER_BACKEND_CHOICES, add_moe_runner_backend_choices
from sglang.srt.layers.moe.moe_runner import MoeRunner, MoeRunnerConfig, register_moe_runner_core
from sglang.srt.layers.moe.moe_runner.base import DispatchMoeRunnerCore, MoeQuantInfo
from sglang.srt.layers.moe.token_dispatcher.base import CombineInput, DispatchOutput
from sglang.srt.layers.moe.token_dispatcher.standard import StandardCombineInput
from sglang.srt.layers.moe.topk import TopKOutputChecker
from sglang.srt.layers.moe.utils import MoeRunnerBackendLike, get_moe_runner_backend, resolve_moe_runner_backend
from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from dg_moe.moe import fused_moe

from .sglang import BACKEND

BLOCK = 128
_FALLBACK = "use another --moe-runner-backend (e.g. auto) for this model"
_FP8_MOE_METHOD = "sglang.srt.layers.quantization.fp8.Fp8MoEMethod"

_registered = False


@dataclass
class DgMoeQuantInfo(MoeQuantInfo):
    """The expert weights ``fused_moe`` reads: e4m3 w13 [E, 2I, H] / w2 [E, H, I] and their float32 128x128
    block scales, as ``Fp8MoEMethod`` loaded them (no copy)."""

    w13_weight: torch.Tensor
    w13_scale: torch.Tensor
    w2_weight: torch.Tensor
    w2_scale: torch.Tensor


class DgMoeRunnerCore(DispatchMoeRunnerCore):
    """SGLang's standard dispatch output (tokens [T, H] with local top-k ids) through ``dg_moe.fused_moe``.

    A ``DispatchMoeRunnerCore``, so ``MoeRunner.run`` hands it the dispatch output itself (no pre/post permute
    functions to register); it returns the top-k weighted sum, the combine input the standard dispatcher expects.
    """

    def __init__(self, config: MoeRunnerConfig) -> None:
        super().__init__(config)
        _check_config(config)

    @property
    def runner_backend(self) -> MoeRunnerBackendLike:
        return resolve_moe_runner_backend(BACKEND)

    def run_from_dispatch(self, dispatch_output: DispatchOutput, quant_info: MoeQuantInfo,
                          runner_config: MoeRunnerConfig, hooks: Any = None) -> CombineInput:
        """``out[t] = rsf * sum_s w[t, s] * expert_{ids[t, s]}(x[t])`` for this rank's experts, as
        ``StandardCombineInput`` [T, H] in the tokens' dtype."""
        if not dispatch_output.format.is_standard():
            # DeepEP's formats (normal: pre-permuted FP8 tokens; low-latency: [E, M, H] per-expert buffers) are
            # not mapped onto dg_moe's layouts yet.
            raise NotImplementedError(f"--moe-runner-backend {BACKEND} runs the standard dispatch format only, got "
                                      f"{dispatch_output.format.value}; use --moe-a2a-backend none or {_FALLBACK}")
        if hooks is not None:
            raise NotImplementedError(f"--moe-runner-backend {BACKEND} does not run MoE LoRA; {_FALLBACK}")
        if not isinstance(quant_info, DgMoeQuantInfo):
            raise TypeError(f"{type(self).__name__} needs a DgMoeQuantInfo, got {type(quant_info).__name__}")
        if dispatch_output.hidden_states_scale is not None:
            raise ValueError(f"{type(self).__name__} expects unquantised tokens, got pre-quantised ones with scales")
        _check_config(runner_config)
        topk_output = dispatch_output.topk_output
        if not TopKOutputChecker.format_is_standard(topk_output):
            raise NotImplementedError(f"--moe-runner-backend {BACKEND} takes SGLang's standard top-k output (ids and "
                                      f"weights), got {type(topk_output).__name__}; {_FALLBACK}")
        hidden = dispatch_output.hidden_states
        topk_weights, topk_ids = topk_output.topk_weights, topk_output.topk_ids
        if runner_config.apply_router_weight_on_input:
            # As SGLang's Triton runner: the (top-1) weight scales the token before the experts.
            if topk_ids.shape[1] != 1:
                raise ValueError("apply_router_weight_on_input needs top-1 routing")
            hidden = hidden * topk_weights.to(hidden.dtype)
            topk_weights = torch.ones_like(topk_weights)
        rsf = runner_config.routed_scaling_factor
        out = fused_moe(hidden.to(torch.bfloat16), quant_info.w13_weight, quant_info.w13_scale, quant_info.w2_weight,
                        quant_info.w2_scale, topk_ids, topk_weights, mode="contiguous",
                        routed_scaling_factor=1.0 if rsf is None else float(rsf))
        return StandardCombineInput(hidden_states=out.to(dispatch_output.hidden_states.dtype))


def _check_config(config: MoeRunnerConfig) -> None:
    """Refuse what fused_moe does not compute: it is ``silu(gate) * up`` on split halves, summed over top-k."""
    unsupported = []
    if config.activation != "silu" or not config.is_gated:
        unsupported.append(f"activation {config.activation!r} (gated={config.is_gated})")
    for name in ("gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit", "swiglu_limit"):
        if getattr(config, name) is not None:
            unsupported.append(name)
    if config.no_combine:
        unsupported.append("no_combine")
    if unsupported:
        raise ValueError(f"--moe-runner-backend {BACKEND} computes SiLU-gated experts summed over top-k only; this "
                         f"layer needs {', '.join(unsupported)}; {_FALLBACK}")


def _is_dg_moe(backend: MoeRunnerBackendLike | None) -> bool:
    return backend is not None and backend.value == BACKEND


def _create_moe_runner(original: Callable[..., Any], method: Any, layer: torch.nn.Module,
                       moe_runner_config: MoeRunnerConfig) -> Any:
    """AROUND hook of ``Fp8MoEMethod.create_moe_runner``: with ``--moe-runner-backend dg_moe``, the layer's runner
    is a ``MoeRunner`` around :class:`DgMoeRunnerCore` (``Fp8MoEMethod`` would otherwise build none for an
    unknown backend and fail in ``apply``); any other backend goes to SGLang's own method."""
    backend = get_moe_runner_backend()
    if not _is_dg_moe(backend):
        return original(method, layer, moe_runner_config)
    block = list(method.weight_block_size or ())
    if not method.block_quant or block != [BLOCK, BLOCK] or method.use_mxfp8 or method.is_fp4_expert:
        raise ValueError(f"--moe-runner-backend {BACKEND} needs FP8 experts quantised per {BLOCK}x{BLOCK} block "
                         f"(weight_block_size [{BLOCK}, {BLOCK}]), got weight_block_size={method.weight_block_size}, "
                         f"mxfp8={method.use_mxfp8}, fp4 experts={method.is_fp4_expert}; {_FALLBACK}")
    if getattr(method, "load_up_proj_weight_first", False):
        # Its weight loader would store w13 as [up | gate]: fused_moe would take up for gate, silently.
        raise ValueError(f"--moe-runner-backend {BACKEND} reads w13 as [gate | up], but this quantisation method "
                         f"loads it [up | gate] (load_up_proj_weight_first); {_FALLBACK}")
    method.moe_runner_config = moe_runner_config
    method.runner = MoeRunner(backend, moe_runner_config)
    # As SGLang's own branch records it: this method owns its runner (process_weights_after_loading reads it).
    method._owns_moe_runner = True
    return None


def _apply(original: Callable[..., Any], method: Any, layer: torch.nn.Module, dispatch_output: DispatchOutput) -> Any:
    """AROUND hook of ``Fp8MoEMethod.apply``: a layer whose runner is dg_moe's runs it on the weights as loaded."""
    runner = getattr(method, "runner", None)
    if runner is None or not _is_dg_moe(runner.runner_backend):
        return original(method, layer, dispatch_output)
    if getattr(layer, "use_intel_amx_backend", False):
        # SGLang's CPU backend repacks the weights for AMX after loading: not the layout fused_moe reads.
        raise ValueError(f"--moe-runner-backend {BACKEND} cannot read AMX-packed weights; {_FALLBACK}")
    quant_info = DgMoeQuantInfo(w13_weight=layer.w13_weight, w13_scale=layer.w13_weight_scale_inv,
                                w2_weight=layer.w2_weight, w2_scale=layer.w2_weight_scale_inv)
    return runner.run(dispatch_output, quant_info)


def register_once() -> None:
    """What ``dg_moe.integrations.sglang.register`` does; a second call in a process changes nothing
    (``register_moe_runner_core`` refuses a name twice, and a hook registered twice would wrap twice)."""
    global _registered
    if _registered:
        return
    if BACKEND not in MOE_RUNNER_BACKEND_CHOICES:
        add_moe_runner_backend_choices([BACKEND])
    register_moe_runner_core(BACKEND, DgMoeRunnerCore)
    HookRegistry.register(f"{_FP8_MOE_METHOD}.create_moe_runner", _create_moe_runner, HookType.AROUND)
    HookRegistry.register(f"{_FP8_MOE_METHOD}.apply", _apply, HookType.AROUND)
    # load_plugins() applies hooks after running every plugin; a direct call (a script, a test) has no such step.
    # Already-patched targets are skipped, so applying here too is harmless inside load_plugins().
    HookRegistry.apply_hooks()
    _registered = True
