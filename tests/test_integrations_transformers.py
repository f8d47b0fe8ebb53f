"""The transformers adapter: experts_implementation "dg_moe" against "eager" on tiny random models (CPU).

Qwen3-MoE, DeepSeek-V3 and Mixtral are built with ``from_config`` (nothing is downloaded). On CPU
``fused_moe`` runs its float64 reference, so the comparison checks the adapter's mapping (weight
layouts, routing ids and weights, both registries) against transformers' own experts code, with FP8
rounding the only difference left.

Measured with these seeds (global similarity, ``calc_diff``), over the three families and both batches:

- FP8 experts (FineGrainedFP8, 128x128 blocks, float32 or UE8M0 scales) against eager on the same
  weights dequantised to BF16: logits 3.5e-5 to 1.7e-4; the first experts module's output 0.93e-3
  to 1.04e-3, which is the FP8 (1x128) rounding of the tokens and of the intermediate activation,
  absent from the BF16 eager path.
- BF16 experts (quantised by the adapter per 128x128 block) against eager on the BF16 weights: logits
  0.6e-4 to 2.5e-4; the first experts module's output 1.9e-3 to 2.1e-3, that activation rounding plus
  the weights' own FP8 rounding (the ~2e-3 distance of the FP8 layer to the BF16 one that
  `dg-moe demo` reports). Each FP8 rounding of an operand costs about 5e-4 (e4m3's 3-bit mantissa).

- BF16 experts kept in BF16 ("dg_moe_bf16", ``fused_moe_bf16``) against eager on the BF16 weights: logits
  0.85e-5 to 8.5e-5; the first experts module's output 1.0e-5 to 1.6e-5: no FP8 rounding left, only the
  BF16 roundings of the intermediates, which eager makes too, in places of its own.

The bounds keep a margin of 2x (experts modules) and 4x or more (logits) over those numbers. Wrong
mappings, tried on the BF16 path, land far above the experts-module bound: gate and up swapped 7e-2
(small with this init, where SiLU is nearly linear and the gate almost symmetric), each token's top-k
weights permuted 2e-2 to 3e-2, expert ids shifted by one 2.5e-2 to 0.9. The logits alone miss some of
them (permuted weights move Qwen3-MoE's by 4e-4 only), hence the experts-module check.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed; pip install -e '.[test]' brings it")

from transformers import (  # noqa: E402
    AriaTextConfig,
    AutoModelForCausalLM,
    DeepseekV3Config,
    FineGrainedFP8Config,
    MixtralConfig,
    PreTrainedModel,
    Qwen3MoeConfig,
)
from transformers.integrations.finegrained_fp8 import (  # noqa: E402
    ALL_FP8_EXPERTS_FUNCTIONS,
    Fp8Dequantize,
    FP8Experts,
    Fp8Quantize,
    replace_with_fp8_linear,
)
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS  # noqa: E402
from transformers.models.aria.modeling_aria import AriaExperts  # noqa: E402
from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer  # noqa: E402

import dg_moe.integrations.transformers as adapter  # noqa: E402
from dg_moe.moe import quantize_expert_weights  # noqa: E402
from dg_moe.reference.metrics import calc_diff  # noqa: E402

FP8_LOGITS_BOUND = 1e-3  # the bound for FP8 experts
FP8_EXPERTS_BOUND = 2e-3
BF16_LOGITS_BOUND = 1e-3
BF16_EXPERTS_BOUND = 4e-3
# "dg_moe_bf16" measured on CPU over the three families and both batches: the first experts module 1.0e-5
# to 1.6e-5, logits 0.85e-5 to 8.5e-5 (Mixtral contiguous the top). Both sides round gate_up, the activation
# and the experts' outputs to BF16 (eager also SiLU's result before the product), about 1e-6 each at this
# width: no FP8 rounding is left. Margins over those numbers as above (2.5x, 4.7x).
BF16_KEPT_EXPERTS_BOUND = 4e-5
BF16_KEPT_LOGITS_BOUND = 4e-4

HIDDEN, INTER, EXPERTS, VOCAB = 256, 128, 8, 512
_COMMON = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256}


def _qwen3_moe() -> Qwen3MoeConfig:
    return Qwen3MoeConfig(**_COMMON, num_hidden_layers=2, head_dim=64, intermediate_size=256,
                          moe_intermediate_size=INTER, num_experts=EXPERTS, num_experts_per_tok=2, norm_topk_prob=True)


def _deepseek_v3() -> DeepseekV3Config:
    # Layer 0 dense, layers 1-2 MoE with a shared expert; top-8 over 2 groups; the router applies the scaling 2.5.
    return DeepseekV3Config(**_COMMON, num_hidden_layers=3, first_k_dense_replace=1, intermediate_size=256,
                            moe_intermediate_size=INTER, n_routed_experts=EXPERTS, num_experts_per_tok=8, n_group=2,
                            topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5, q_lora_rank=64,
                            kv_lora_rank=64, qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=64)


def _mixtral() -> MixtralConfig:
    return MixtralConfig(**_COMMON, num_hidden_layers=2, head_dim=64, intermediate_size=INTER,
                         num_local_experts=EXPERTS, num_experts_per_tok=2)


FAMILIES = {"qwen3_moe": _qwen3_moe, "deepseek_v3": _deepseek_v3, "mixtral": _mixtral}
# 32 tokens run fused_moe's masked path, 160 its contiguous one (mode "auto", threshold 128).
BATCHES = {"masked": (2, 16), "contiguous": (2, 80)}


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    adapter.register()


def _build(family: str, **kwargs: object) -> PreTrainedModel:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(FAMILIES[family](), dtype=torch.bfloat16, **kwargs).eval()


def _tokens(shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(1))


def _experts_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for name, m in model.named_modules() if name.endswith(".experts")]


def _forward(model: PreTrainedModel, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits and each experts module's output, in call order."""
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _args, out: outputs.append(out)) for m in _experts_modules(model)]
    try:
        with torch.inference_mode():
            logits = model(tokens).logits
    finally:
        for hook in hooks:
            hook.remove()
    return logits, outputs


def _fp8_model_pair(family: str, scale_fmt: str) -> tuple[PreTrainedModel, PreTrainedModel]:
    """An FP8 model built the way transformers builds one for a FineGrainedFP8Config checkpoint, and its reference.

    ``replace_with_fp8_linear`` swaps the experts for ``FP8Experts`` (the other layers stay BF16: the
    pattern skips every module whose name does not end in ".experts") and transformers' ``Fp8Quantize``
    fills their weights and scales. Transformers' own FP8 experts forward needs a GPU kernel
    (DeepGEMM or the hub's Triton finegrained-fp8), and its quantiser refuses to run without a GPU,
    so the reference is the BF16 model whose experts hold the same weights dequantised by
    ``Fp8Dequantize``, run by "eager".
    """
    reference = _build(family, experts_implementation="eager")
    config = FineGrainedFP8Config(scale_fmt=scale_fmt)
    quantizer = FineGrainedFP8HfQuantizer(config)
    quantize, dequantize = Fp8Quantize(quantizer), Fp8Dequantize(quantizer)
    fp8 = copy.deepcopy(reference)
    replace_with_fp8_linear(fp8, modules_to_not_convert=[r"(?!.*\.experts$).*"], quantization_config=config,
                            pre_quantized=True)
    with torch.no_grad():
        for name, experts in fp8.named_modules():
            if not isinstance(experts, FP8Experts):
                continue
            source = reference.get_submodule(name)
            experts.to_empty(device="cpu")
            for proj in ("gate_up_proj", "down_proj"):
                scale = f"{proj}_scale_inv"
                quantized = quantize.convert({proj: getattr(source, proj)})
                getattr(experts, proj).copy_(quantized[proj])
                getattr(experts, scale).copy_(quantized[scale])
                pair = {proj: [quantized[proj]], scale: [quantized[scale]]}
                getattr(source, proj).copy_(dequantize.convert(pair)[proj][0])
    fp8.set_experts_implementation(adapter.IMPLEMENTATION)
    return reference, fp8


@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
@pytest.mark.parametrize("scale_fmt", ["float", "ue8m0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fp8_experts_match_eager_on_dequantised_weights(family: str, scale_fmt: str, batch: tuple[int, int]):
    reference, fp8 = _fp8_model_pair(family, scale_fmt)
    tokens = _tokens(batch)
    logits, experts_out = _forward(fp8, tokens)
    ref_logits, ref_experts_out = _forward(reference, tokens)

    # The first experts module sees the same input in both models; later ones inherit earlier differences.
    assert calc_diff(experts_out[0], ref_experts_out[0]) < FP8_EXPERTS_BOUND
    assert calc_diff(logits, ref_logits) < FP8_LOGITS_BOUND
    for experts in _experts_modules(fp8):
        assert isinstance(experts, FP8Experts)
        used = adapter.cached_weights(experts)
        # transformers' FP8 layout is fused_moe's: the checkpoint tensors are used in place.
        assert used.w13.data_ptr() == experts.gate_up_proj.data_ptr()
        assert used.w2.data_ptr() == experts.down_proj.data_ptr()
        if scale_fmt == "float":
            assert used.w13_scale.data_ptr() == experts.gate_up_proj_scale_inv.data_ptr()
            assert used.w2_scale.data_ptr() == experts.down_proj_scale_inv.data_ptr()
        else:
            assert experts.gate_up_proj_scale_inv.dtype == torch.float8_e8m0fnu
            assert torch.equal(used.w13_scale, experts.gate_up_proj_scale_inv.float())
            assert torch.equal(used.w2_scale, experts.down_proj_scale_inv.float())


def _against_eager(family: str, batch: tuple[int, int], implementation: str) -> tuple[object, float, float]:
    """A model built on ``implementation``, and the global differences of its first layer's experts output
    and of its logits from the same model's eager experts."""
    model = _build(family, experts_implementation=implementation)
    tokens = _tokens(batch)
    logits, experts_out = _forward(model, tokens)
    model.set_experts_implementation("eager")
    ref_logits, ref_experts_out = _forward(model, tokens)
    return model, calc_diff(experts_out[0], ref_experts_out[0]), calc_diff(logits, ref_logits)


@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_experts_match_eager(family: str, batch: tuple[int, int]):
    model, experts_diff, logits_diff = _against_eager(family, batch, adapter.IMPLEMENTATION)
    assert experts_diff < BF16_EXPERTS_BOUND
    assert logits_diff < BF16_LOGITS_BOUND
    for experts in _experts_modules(model):
        used = adapter.cached_weights(experts)
        assert used.w13.dtype == torch.float8_e4m3fn
        assert tuple(used.w13_scale.shape) == (EXPERTS, 2 * INTER // 128, HIDDEN // 128)
        assert tuple(used.w2_scale.shape) == (EXPERTS, HIDDEN // 128, INTER // 128)


@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_experts_kept_in_bf16_match_eager(family: str, batch: tuple[int, int]):
    model, experts_diff, logits_diff = _against_eager(family, batch, adapter.IMPLEMENTATION_BF16)
    assert experts_diff < BF16_KEPT_EXPERTS_BOUND
    assert logits_diff < BF16_KEPT_LOGITS_BOUND
    for experts in _experts_modules(model):
        used = adapter.cached_weights(experts)
        # Contiguous bf16 experts are the layer's weights as they are: no copy.
        assert isinstance(used, adapter.BF16ExpertWeights)
        assert used.w13.data_ptr() == experts.gate_up_proj.data_ptr()
        assert used.w2.data_ptr() == experts.down_proj.data_ptr()


def test_bf16_quantised_copy_is_cached_and_follows_the_weights():
    model = _build("qwen3_moe", experts_implementation=adapter.IMPLEMENTATION)
    tokens = _tokens(BATCHES["masked"])
    experts = _experts_modules(model)[0]
    assert adapter.cached_weights(experts) is None
    _forward(model, tokens)
    first = adapter.cached_weights(experts)
    _forward(model, tokens)
    assert adapter.cached_weights(experts) is first
    with torch.no_grad():
        experts.down_proj.mul_(2)
    _forward(model, tokens)
    second = adapter.cached_weights(experts)
    assert second is not first
    # Doubling a block doubles its amax: the same e4m3 values under twice the scale.
    assert torch.equal(second.w2.view(torch.uint8), first.w2.view(torch.uint8))
    assert torch.equal(second.w2_scale, 2 * first.w2_scale)
    assert torch.equal(second.w13.view(torch.uint8), first.w13.view(torch.uint8))
    experts.down_proj = torch.nn.Parameter(experts.down_proj.detach() / 2)
    _forward(model, tokens)
    assert torch.equal(adapter.cached_weights(experts).w2_scale, first.w2_scale)
    # The copy stays out of the checkpoint.
    assert not any("dg_moe" in key for key in model.state_dict())


def test_quantised_copy_follows_weights_given_new_strides():
    # `param.data = param.data.transpose(1, 2)` keeps the storage, the version counter and, for a square
    # gate_up_proj (2I = H here), the shape: only the strides tell that every index now holds another value.
    assert 2 * INTER == HIDDEN
    model = _build("qwen3_moe", experts_implementation=adapter.IMPLEMENTATION)
    tokens = _tokens(BATCHES["masked"])
    experts = _experts_modules(model)[0]
    _forward(model, tokens)
    first = adapter.cached_weights(experts)
    experts.gate_up_proj.data = experts.gate_up_proj.data.transpose(1, 2)
    _forward(model, tokens)
    used = adapter.cached_weights(experts)
    assert used is not first
    w13, _ = quantize_expert_weights(experts.gate_up_proj.detach())
    assert torch.equal(used.w13.view(torch.uint8), w13.view(torch.uint8))


def test_switching_implementation_on_one_model_rebuilds_the_weights():
    """"dg_moe" (FP8 copies) and "dg_moe_bf16" (the BF16 tensors as they are) on one model, switched back and
    forth: each forward runs its own implementation's weights, with the outputs of a model that only ever
    ran that one (the cache once matched on the source tensors alone, so the second name reused the first's)."""
    tokens = _tokens(BATCHES["masked"])
    alone = {}
    for name in (adapter.IMPLEMENTATION, adapter.IMPLEMENTATION_BF16):
        alone[name] = _forward(_build("qwen3_moe", experts_implementation=name), tokens)[0]
    assert not torch.equal(alone[adapter.IMPLEMENTATION], alone[adapter.IMPLEMENTATION_BF16])
    model = _build("qwen3_moe", experts_implementation=adapter.IMPLEMENTATION)
    experts = _experts_modules(model)[0]
    used = {}
    for name in (adapter.IMPLEMENTATION, adapter.IMPLEMENTATION_BF16, adapter.IMPLEMENTATION,
                 adapter.IMPLEMENTATION_BF16):
        model.set_experts_implementation(name)
        logits = _forward(model, tokens)[0]
        assert torch.equal(logits, alone[name]), name
        weights = adapter.cached_weights(experts)
        assert isinstance(weights, adapter.BF16ExpertWeights) == (name == adapter.IMPLEMENTATION_BF16)
        # Switching back finds the name's own conversion still current: no second quantised copy.
        assert used.setdefault(name, weights) is weights


def test_model_built_under_inference_mode_keeps_its_copy():
    # Weights created under inference_mode have no version counter; the cache key reads -1 for them
    # without raising (an exception per weight and forward cost about 10 us each).
    with torch.inference_mode():
        model = _build("qwen3_moe", experts_implementation=adapter.IMPLEMENTATION)
    tokens = _tokens(BATCHES["masked"])
    experts = _experts_modules(model)[0]
    assert experts.down_proj.is_inference()
    logits, _ = _forward(model, tokens)
    first = adapter.cached_weights(experts)
    _forward(model, tokens)
    assert adapter.cached_weights(experts) is first
    model.set_experts_implementation("eager")
    ref_logits, _ = _forward(model, tokens)
    assert calc_diff(logits, ref_logits) < BF16_LOGITS_BOUND


def test_transposed_bf16_experts_match_eager():
    # Aria stores its experts transposed ([E, H, 2I], [E, I, H]), the layout grouped_mm consumes.
    config = AriaTextConfig(hidden_size=HIDDEN, intermediate_size=INTER, moe_num_experts=EXPERTS, moe_topk=2)
    torch.manual_seed(0)
    experts = AriaExperts(config).to(torch.bfloat16)
    if not getattr(experts, "is_transposed", False):
        pytest.skip("this transformers stores Aria's experts untransposed (transposed experts came after 5.17); "
                    "the untransposed layout is what the model-level tests check")
    with torch.no_grad():
        experts.gate_up_proj.normal_(0, 0.05)
        experts.down_proj.normal_(0, 0.05)
    hidden = torch.randn(40, HIDDEN).bfloat16()
    top_k_index = torch.rand(40, EXPERTS).topk(2, dim=1).indices
    top_k_weights = torch.rand(40, 2).softmax(dim=1)
    outputs = {}
    for implementation in (adapter.IMPLEMENTATION, "eager"):
        config._experts_implementation = implementation
        with torch.inference_mode():
            outputs[implementation] = experts(hidden, top_k_index, top_k_weights)
    assert calc_diff(outputs[adapter.IMPLEMENTATION], outputs["eager"]) < BF16_EXPERTS_BOUND


def test_slots_of_other_expert_parallel_ranks_are_skipped():
    # transformers' expert parallelism marks a slot whose expert lives on another rank with id E (>= the
    # local expert count) and weight 0. The reference is eager with those slots pointed at expert 0
    # with weight 0 instead (the same sum), since eager only learned to skip id E after 5.17.
    model = _build("mixtral", experts_implementation="eager")
    experts = _experts_modules(model)[0]
    hidden = torch.randn(24, HIDDEN).bfloat16()
    top_k_index = torch.rand(24, EXPERTS).topk(2, dim=1).indices
    top_k_index[::3, 1] = EXPERTS
    top_k_weights = torch.rand(24, 2).softmax(dim=1)
    top_k_weights[::3, 1] = 0.0
    local_index = torch.where(top_k_index == EXPERTS, 0, top_k_index)
    with torch.inference_mode():
        model.set_experts_implementation(adapter.IMPLEMENTATION)
        got = experts(hidden, top_k_index, top_k_weights)
        model.set_experts_implementation("eager")
        want = experts(hidden, local_index, top_k_weights)
    assert calc_diff(got, want) < BF16_EXPERTS_BOUND


def test_register_is_idempotent():
    adapter.register()
    bf16_names, fp8_names = set(ALL_EXPERTS_FUNCTIONS), set(ALL_FP8_EXPERTS_FUNCTIONS)
    adapter.register()
    assert set(ALL_EXPERTS_FUNCTIONS) == bf16_names and set(ALL_FP8_EXPERTS_FUNCTIONS) == fp8_names
    assert ALL_EXPERTS_FUNCTIONS[adapter.IMPLEMENTATION] is adapter.bf16_experts_forward
    assert ALL_FP8_EXPERTS_FUNCTIONS[adapter.IMPLEMENTATION] is adapter.fp8_experts_forward
    assert ALL_EXPERTS_FUNCTIONS[adapter.IMPLEMENTATION_BF16] is adapter.bf16_experts_bf16_forward
    assert ALL_FP8_EXPERTS_FUNCTIONS[adapter.IMPLEMENTATION_BF16] is adapter.fp8_experts_forward


def test_user_steps_in_a_fresh_process():
    # README's steps: transformers rejects the name until register() runs; then from_config (like
    # from_pretrained) takes it. A fresh process, since registration is process-wide.
    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, MixtralConfig
        from dg_moe.integrations.transformers import register

        config = MixtralConfig(**{_COMMON!r}, num_hidden_layers=1, head_dim=64, intermediate_size={INTER},
                               num_local_experts={EXPERTS}, num_experts_per_tok=2)
        try:
            AutoModelForCausalLM.from_config(config, experts_implementation="dg_moe")
        except ValueError as exc:
            assert "dg_moe" in str(exc), exc
        else:
            raise AssertionError("transformers took 'dg_moe' before register()")
        register()
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, experts_implementation="dg_moe")
        with torch.inference_mode():
            assert torch.isfinite(model(torch.arange(8)[None]).logits).all()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_experts_other_than_silu_gated_are_refused():
    config = _qwen3_moe()
    config.hidden_act = "gelu_pytorch_tanh"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                             experts_implementation=adapter.IMPLEMENTATION).eval()
    with pytest.raises(NotImplementedError, match="SiLU-gated.*grouped_mm"):
        _forward(model, _tokens(BATCHES["masked"]))


def test_forward_that_needs_a_gradient_is_refused():
    model = _build("qwen3_moe", experts_implementation=adapter.IMPLEMENTATION)
    with pytest.raises(RuntimeError, match="no backward"):
        model(_tokens(BATCHES["masked"]))


@pytest.mark.parametrize("trainable", ["experts", "router"])
@pytest.mark.parametrize("implementation", [adapter.IMPLEMENTATION, adapter.IMPLEMENTATION_BF16])
def test_forward_that_needs_a_gradient_behind_frozen_layers_is_refused(implementation: str, trainable: str):
    # Layers before the experts frozen: hidden_states needs no gradient, but the experts' weights (or the router's,
    # through top_k_weights) do. eager gives them one; fused_moe has no backward and once dropped it silently.
    model = _build("qwen3_moe", experts_implementation=implementation)
    experts = _experts_modules(model)[0]
    hidden = torch.randn(16, HIDDEN).bfloat16()
    top_k_index = torch.rand(16, EXPERTS).topk(2, dim=1).indices
    top_k_weights = torch.rand(16, 2).softmax(dim=1)
    if trainable == "router":
        experts.requires_grad_(False)
        top_k_weights.requires_grad_(True)
    with pytest.raises(RuntimeError, match="no backward"):
        experts(hidden, top_k_index, top_k_weights)
