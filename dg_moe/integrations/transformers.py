"""dg_moe as a Hugging Face transformers experts implementation named ``"dg_moe"`` (docs/integrations.md).

transformers (>= 5.17) decorates each MoE experts class with ``use_experts_implementation``: the
class's ``forward(hidden_states, top_k_index, top_k_weights)`` looks up
``config._experts_implementation`` in a registry and calls what it finds there with the experts
module as ``self``. There are two registries, one per weight format, and transformers discovers no
plugins, so :func:`register` puts one forward in each:

- ``transformers.integrations.moe.ExpertsInterface`` (BF16/FP16/FP32 experts: ``gate_up_proj``
  [E, 2I, H] with ``[gate | up]`` along 2I, ``down_proj`` [E, H, I]): :func:`bf16_experts_forward`
  quantises both to FP8 per 128x128 block on the first forward and caches them on the module.
  Under the second name, ``"dg_moe_bf16"`` (:data:`IMPLEMENTATION_BF16`), :func:`bf16_experts_bf16_forward`
  runs them through :func:`dg_moe.fused_moe_bf16` instead, nothing quantised.
- ``transformers.integrations.finegrained_fp8.FP8ExpertsInterface`` (``FP8Experts`` of a
  ``FineGrainedFP8Config`` checkpoint: e4m3 ``gate_up_proj`` / ``down_proj`` with per-128x128-block
  ``*_scale_inv``): :func:`fp8_experts_forward` uses them as they are, since transformers' layout is
  ``fused_moe``'s; only UE8M0 scales are expanded to float32, once. It serves both names: FP8
  weights run as stored whichever name the model was given.

Usage::

    from dg_moe.integrations.transformers import register
    register()
    model = AutoModelForCausalLM.from_pretrained(name, experts_implementation="dg_moe")
    # or, on a loaded model: model.set_experts_implementation("dg_moe")
    # BF16 experts kept in BF16 (no FP8 copy): experts_implementation="dg_moe_bf16"

The name is the precision switch because it is transformers' own per-model setting: two models in
one process can each pick theirs, and no global state is involved. "dg_moe" (quantise) stays the
default name of the docs: FP8 is the layer dg_moe is tuned for; "dg_moe_bf16" matches the BF16 model
to ~1e-5 instead of ~2e-3 and needs no second copy of the experts.

Both forwards map the router's output straight to :func:`dg_moe.fused_moe`: ``top_k_index`` are the
expert ids and ``top_k_weights`` the weights the model's router already normalised and scaled
(DeepSeek-V3's ``routed_scaling_factor`` included), so ``fused_moe`` runs with scaling 1.0. A
shared expert stays with the model (DeepSeek-V3 adds it outside the experts module). Importing this
module does not import transformers; :func:`register` does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from dg_moe.moe import fused_moe, fused_moe_bf16, quantize_expert_weights

IMPLEMENTATION = "dg_moe"
"""The name to pass as ``experts_implementation``."""

IMPLEMENTATION_BF16 = "dg_moe_bf16"
"""The name that runs BF16 experts in BF16 (:func:`dg_moe.fused_moe_bf16`) instead of quantising them;
FP8 experts run as under :data:`IMPLEMENTATION`."""

BLOCK = 128
_CACHE_ATTR = "_dg_moe_expert_weights"
_FALLBACK = "use experts_implementation='grouped_mm' (or 'eager') for this model"


class BF16ExpertWeights(NamedTuple):
    """One experts module's weights in ``fused_moe_bf16``'s format: bfloat16 [E, 2I, H] with ``[gate | up]``
    along 2I and bfloat16 [E, H, I], both contiguous."""

    w13: torch.Tensor
    w2: torch.Tensor


class ExpertWeights(NamedTuple):
    """One experts module's weights in ``fused_moe``'s format: e4m3 [E, 2I, H] with ``[gate | up]``
    along 2I, float32 scales [E, 2I/128, H/128]; e4m3 [E, H, I], float32 [E, H/128, I/128]."""

    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor


def register() -> None:
    """Register ``"dg_moe"`` and ``"dg_moe_bf16"`` in transformers' BF16 and FP8 experts registries; calling
    it again is a no-op.

    Call it before ``from_pretrained(..., experts_implementation="dg_moe")`` (or ``"dg_moe_bf16"``),
    ``from_config(..., experts_implementation="dg_moe")`` or ``model.set_experts_implementation("dg_moe")``:
    transformers rejects a name absent from both registries. Raises ImportError when transformers
    (>= 5.17) is not importable.
    """
    try:
        from transformers.integrations.finegrained_fp8 import FP8ExpertsInterface
        from transformers.integrations.moe import ExpertsInterface
    except ImportError as exc:
        raise ImportError(
            "dg_moe.integrations.transformers needs transformers >= 5.17 (its ExpertsInterface and "
            f"FP8ExpertsInterface); install it with pip install 'dg-moe[transformers]' ({exc})"
        ) from exc
    # `register` writes the class-wide mapping, which every instance (the models' module-level
    # ALL_EXPERTS_FUNCTIONS, ALL_FP8_EXPERTS_FUNCTIONS) reads; writing the same entry twice changes nothing.
    # FP8ExpertsInterface declares its own mapping, so the two registrations do not overlap.
    ExpertsInterface.register(IMPLEMENTATION, bf16_experts_forward)
    FP8ExpertsInterface.register(IMPLEMENTATION, fp8_experts_forward)
    ExpertsInterface.register(IMPLEMENTATION_BF16, bf16_experts_bf16_forward)
    FP8ExpertsInterface.register(IMPLEMENTATION_BF16, fp8_experts_forward)


def cached_weights(module: nn.Module) -> ExpertWeights | BF16ExpertWeights | None:
    """The weights the last ``"dg_moe"``/``"dg_moe_bf16"`` forward of ``module`` ran with, None before its
    first one: the quantised copy of BF16 experts, FP8 experts' own tensors (UE8M0 scales expanded to
    float32), or under ``"dg_moe_bf16"`` the BF16 experts' own tensors (:class:`BF16ExpertWeights`)."""
    entries = module.__dict__.get(_CACHE_ATTR)
    return next(reversed(entries.values())).weights if entries else None


def bf16_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``ExpertsInterface`` entry: a BF16 (or FP16/FP32) experts module through ``fused_moe`` in FP8.

    The first call quantises ``gate_up_proj`` and ``down_proj`` per 128x128 block (one float32
    scale per block, as ``dg_moe.per_block_cast_to_fp8``) and caches the FP8 copy on the module:
    about half the experts' BF16 bytes more memory, kept next to the original weights. The copy is
    rebuilt when a weight is replaced, moved or modified in place.

    hidden_states: [T, H] (cast to bf16 for the call, the result back to its dtype);
    top_k_index: [T, k] expert ids; top_k_weights: [T, k], applied as given. Returns [T, H].
    """
    sources = _gated_weights(self, "gate_up_proj", "down_proj")
    return _run(self, sources, _quantise_bf16_experts, hidden_states, top_k_index, top_k_weights)


def bf16_experts_bf16_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``ExpertsInterface`` entry of ``"dg_moe_bf16"``: a BF16 experts module through ``fused_moe_bf16``.

    ``gate_up_proj`` and ``down_proj`` are used in place when they are contiguous bf16 (the usual
    case: no copy, no extra memory); FP16/FP32 experts are cast to BF16 and transposed ones (Aria) made
    contiguous once, and that copy cached and rebuilt as :func:`bf16_experts_forward`'s.
    Arguments and result as :func:`bf16_experts_forward`.
    """
    sources = _gated_weights(self, "gate_up_proj", "down_proj")
    return _run(self, sources, _bf16_experts_weights, hidden_states, top_k_index, top_k_weights)


def fp8_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                        top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``FP8ExpertsInterface`` entry: transformers' ``FP8Experts`` through ``fused_moe``, weights as stored.

    ``FP8Experts`` holds e4m3 ``gate_up_proj`` [E, 2I, H] (``[gate | up]``), ``down_proj`` [E, H, I]
    and one scale per ``block_size`` block in ``*_scale_inv`` [E, N/128, K/128]: exactly
    ``fused_moe``'s layout for block size (128, 128), so float32 scales are passed with no copy;
    UE8M0 scales (``scale_fmt="ue8m0"``) are expanded to float32 (exact) once and cached.
    Arguments and result as :func:`bf16_experts_forward`.
    """
    sources = _gated_weights(self, "gate_up_proj", "gate_up_proj_scale_inv", "down_proj", "down_proj_scale_inv")
    return _run(self, sources, _fp8_experts_weights, hidden_states, top_k_index, top_k_weights)


Weights = ExpertWeights | BF16ExpertWeights


def _run(self: nn.Module, sources: tuple[torch.Tensor, ...], build: Callable[[nn.Module], Weights],
         hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """``fused_moe`` (``fused_moe_bf16`` for BF16 weights) on the weights ``build`` derives from ``sources``
    (cached), for transformers' arguments."""
    if torch.is_grad_enabled() and _needs_gradient(hidden_states, top_k_weights, *sources):
        # fused_moe has no backward: its result would silently cut the gradient of every earlier layer, and of
        # the router and the experts' weights, which need one even when the layers before them are frozen.
        raise RuntimeError(
            f"{type(self).__name__}: experts_implementation='dg_moe' is for inference and has no backward; "
            "run the model under torch.inference_mode() or torch.no_grad() (generate() already does), or "
            "use experts_implementation='grouped_mm' to train"
        )
    weights = _cached(self, sources, build)
    # transformers' expert parallelism marks a slot routed to another rank with an id >= the local expert
    # count (and a zero weight). fused_moe on CUDA skips an id outside [0, E) as it skips its own mark, -1,
    # so the rewrite to -1 (two kernels a layer) is left to CPU, where fused_moe range-checks the ids
    # instead. Without EP every id is below E.
    if top_k_index.device.type != "cuda":
        top_k_index = torch.where(top_k_index < weights.w13.shape[0], top_k_index, -1)
    # transformers passes 2-D bf16 tensors already; a reshape or cast that changes nothing still costs a
    # dispatch (about 1 us each, 4-5 a layer), hence the checks.
    tokens = hidden_states if hidden_states.dim() == 2 else hidden_states.reshape(-1, hidden_states.shape[-1])
    if tokens.dtype != torch.bfloat16:
        tokens = tokens.to(torch.bfloat16)
    num_tokens = tokens.shape[0]
    layer = fused_moe_bf16 if isinstance(weights, BF16ExpertWeights) else fused_moe
    out = layer(tokens, *weights, _token_rows(top_k_index, num_tokens), _token_rows(top_k_weights, num_tokens))
    if out.dtype != hidden_states.dtype:
        out = out.to(hidden_states.dtype)
    return out if hidden_states.dim() == 2 else out.reshape(hidden_states.shape)


def _needs_gradient(*tensors: torch.Tensor) -> bool:
    return any(t.requires_grad for t in tensors)


def _token_rows(t: torch.Tensor, num_tokens: int) -> torch.Tensor:
    return t if t.dim() == 2 and t.shape[0] == num_tokens else t.reshape(num_tokens, -1)


class _Cache(NamedTuple):
    """A conversion's result and what it was built from: the source tensors themselves (weakly, so that a
    tensor freed and replaced by another at the same address still counts as new) and their state."""

    sources: tuple[weakref.ref, ...]
    state: tuple[object, ...]
    weights: Weights

    def matches(self, sources: tuple[torch.Tensor, ...]) -> bool:
        return all(ref() is t for ref, t in zip(self.sources, sources, strict=True)) and self.state == _state(sources)


def _state(tensors: tuple[torch.Tensor, ...]) -> tuple[object, ...]:
    # Storage pointer: `module.to(...)` and `param.data = ...` keep the Parameter and swap its data.
    # Version counter: in-place changes (load_state_dict copies, mul_, ...).
    # Strides: `param.data = param.data.transpose(1, 2)` keeps storage, version and (square) shape, not the values.
    return tuple((t.data_ptr(), _version(t), t.device, t.dtype, tuple(t.shape), t.stride()) for t in tensors)


def _version(t: torch.Tensor) -> int:
    # Tensors created under torch.inference_mode (a model built or loaded there) carry no version counter,
    # nor can they be modified in place outside it; identity and storage pointer still tell a replacement
    # apart. Asked rather than caught: reading their counter raises, at about 10 us per tensor and forward.
    return -1 if t.is_inference() else t._version


def _cached(self: nn.Module, sources: tuple[torch.Tensor, ...], build: Callable[[nn.Module], Weights]) -> Weights:
    """``build(self)``, computed once per state of ``sources`` and kept in a plain attribute of the module.

    A plain attribute rather than a buffer: the copy is derived data, so it must stay out of
    ``state_dict`` and checkpoints, and ``module.to(...)`` changes the sources' state, which rebuilds
    it on the new device.
    """
    # One entry per conversion, the last used last: one BF16 module may run under "dg_moe" (FP8 copies) and
    # "dg_moe_bf16" (its own tensors), and switching names must neither reuse the other's weights nor
    # rebuild a copy that is still current (about 26 ms a layer at Qwen3-30B-A3B sizes on an H100).
    entries: dict[Callable[[nn.Module], Weights], _Cache] = self.__dict__.setdefault(_CACHE_ATTR, {})
    cached = entries.pop(build, None)
    if cached is None or not cached.matches(sources):
        with torch.no_grad():
            cached = _Cache(tuple(weakref.ref(t) for t in sources), _state(sources), build(self))
    entries[build] = cached
    return cached.weights


def _unsupported(self: nn.Module, reason: str) -> NotImplementedError:
    return NotImplementedError(f"{type(self).__name__}: experts_implementation='dg_moe' {reason}; {_FALLBACK}")


def _gated_weights(self: nn.Module, *names: str) -> tuple[torch.Tensor, ...]:
    # Experts without a gate hold up_proj instead of gate_up_proj: say so rather than fail on the name.
    if not getattr(self, "has_gate", True):
        raise _unsupported(self, "needs gated experts (gate_up_proj), this module has up_proj only")
    return tuple(getattr(self, name) for name in names)


def _check_gated_silu(self: nn.Module) -> None:
    """The module computes ``down(SiLU(x @ gate.T) * (x @ up.T))`` per expert, with no bias or post-norm,
    the one expert form ``fused_moe`` computes."""
    from transformers.activations import SiLUActivation
    from transformers.integrations.finegrained_fp8 import FP8Experts
    from transformers.integrations.moe import _default_apply_gate

    if getattr(self, "has_bias", False):
        raise _unsupported(self, "does not support expert biases")
    if getattr(self, "has_post_expert_norm", False):
        raise _unsupported(self, "does not support a post-expert norm")
    if not getattr(self, "is_concatenated", True):
        raise _unsupported(self, "needs [gate | up] concatenated along gate_up_proj's 2I rows, not interleaved")
    if not isinstance(getattr(self, "act_fn", None), (nn.SiLU, SiLUActivation)):
        raise _unsupported(self, f"needs a SiLU-gated expert, this one's activation is {getattr(self, 'act_fn', None)}")
    gate = type(self)._apply_gate
    # FP8Experts' own gate reduces to act_fn(gate) * up when none of its clamps or softcaps is configured.
    plain_fp8_gate = gate is FP8Experts._apply_gate and all(
        getattr(self, name, None) is None for name in ("gate_softcap", "up_softcap", "swiglu_alpha", "limit"))
    if gate is not _default_apply_gate and not plain_fp8_gate:
        raise _unsupported(self, "needs the plain act(gate) * up gate, this module customises _apply_gate")


def _check_sizes(self: nn.Module, w13: torch.Tensor, w2: torch.Tensor) -> None:
    num_experts, two_i, hidden = w13.shape
    inter = two_i // 2
    if hidden % BLOCK or inter % BLOCK or tuple(w2.shape) != (num_experts, hidden, inter):
        raise _unsupported(
            self, f"needs the hidden size H and the experts' intermediate size I to be multiples of {BLOCK} "
                  f"(dg_moe works on 128-column blocks), got gate_up_proj {tuple(w13.shape)} and down_proj "
                  f"{tuple(w2.shape)} (H={hidden}, I={inter})")


def _bf16_experts_sources(self: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    # The checked BF16/FP16/FP32 experts as [E, 2I, H] and [E, H, I] views.
    _check_gated_silu(self)
    gate_up, down = self.gate_up_proj.detach(), self.down_proj.detach()
    if getattr(self, "is_transposed", False):
        # [E, H, 2I] and [E, I, H] (e.g. Aria): the caller's copy makes the transposed view contiguous.
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    _check_sizes(self, gate_up, down)
    return gate_up, down


def _bf16_experts_weights(self: nn.Module) -> BF16ExpertWeights:
    gate_up, down = _bf16_experts_sources(self)
    # No copy for contiguous bf16 weights: the module's own tensors are the layer's.
    return BF16ExpertWeights(gate_up.to(torch.bfloat16).contiguous(), down.to(torch.bfloat16).contiguous())


def _quantise_bf16_experts(self: nn.Module) -> ExpertWeights:
    gate_up, down = _bf16_experts_sources(self)
    w13, w13_scale = quantize_expert_weights(gate_up)
    w2, w2_scale = quantize_expert_weights(down)
    return ExpertWeights(w13, w13_scale, w2, w2_scale)


def _fp8_scales(self: nn.Module, name: str) -> torch.Tensor:
    scale = getattr(self, name).detach()
    if scale.dtype == torch.float32:
        return scale.contiguous()
    if scale.dtype == getattr(torch, "float8_e8m0fnu", None):
        # Powers of two: float32 holds every one of them exactly.
        return scale.float().contiguous()
    raise _unsupported(self, f"needs float32 or UE8M0 weight scales, {name} is {scale.dtype}")


def _fp8_experts_weights(self: nn.Module) -> ExpertWeights:
    _check_gated_silu(self)
    if getattr(self, "activation_scheme", "dynamic") != "dynamic":
        raise _unsupported(self, "quantises activations dynamically (1x128), it cannot apply static activation "
                                 f"scales (activation_scheme={self.activation_scheme!r})")
    block = tuple(self.block_size) if getattr(self, "block_size", None) is not None else None
    if block != (BLOCK, BLOCK):
        raise _unsupported(self, f"needs weights quantised per {BLOCK}x{BLOCK} block, got block_size={block}")
    if getattr(self, "is_transposed", False):
        raise _unsupported(self, "needs [E, N, K] FP8 weights, this module's are transposed")
    gate_up, down = self.gate_up_proj.detach(), self.down_proj.detach()
    for name, weight in (("gate_up_proj", gate_up), ("down_proj", down)):
        if weight.dtype != torch.float8_e4m3fn:
            raise _unsupported(self, f"needs float8_e4m3fn expert weights, {name} is {weight.dtype}")
    _check_sizes(self, gate_up, down)
    return ExpertWeights(gate_up.contiguous(), _fp8_scales(self, "gate_up_proj_scale_inv"), down.contiguous(),
                         _fp8_scales(self, "down_proj_scale_inv"))
