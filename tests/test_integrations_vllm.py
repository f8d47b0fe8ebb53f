"""dg_moe.integrations.vllm against the real vLLM package (0.33), on CPU: no mocks.

vLLM pins its own torch, so these tests run in a separate environment (``.ci/vllm``); where vLLM is
not installed (the main venv) the module is skipped. On CPU ``fused_moe`` and the masked grouped GEMMs
run dg_moe's float64 references.

Covered: discovery of the ``vllm.general_plugins`` entry point by ``vllm.plugins.load_general_plugins``;
a real ``RoutedExperts`` layer built with ``DgMoeFp8Config``: its ``DgMoeFp8MoEMethod``, checkpoint
tensors loaded through vLLM's own weight loader (``w1``/``w3``/``w2`` shards and block scales),
``process_weights_after_loading`` building vLLM's ``FusedMoEKernel`` around ``DgMoeExperts``, and the
method's ``apply``; the batched-format experts inside a ``FusedMoEKernel`` with vLLM's
``BatchedPrepareAndFinalize``. vLLM's own activation quantiser is a Triton kernel that cannot run on
CPU, so the batched test builds the dispatched (FP8, 1x128 scales) buffers with dg_moe's quantiser
and hands them to the experts and then to vLLM's finalize.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/vllm runs these tests in their own venv")

from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.distributed import init_distributed_environment, initialize_model_parallel  # noqa: E402
from vllm.distributed.parallel_state import (  # noqa: E402
    destroy_distributed_environment,
    destroy_model_parallel,
)
from vllm.model_executor.layers.fused_moe import modular_kernel as mk  # noqa: E402
from vllm.model_executor.layers.fused_moe.activation import MoEActivation  # noqa: E402
from vllm.model_executor.layers.fused_moe.config import (  # noqa: E402
    FusedMoEConfig,
    FusedMoEParallelConfig,
    RoutingMethodType,
)
from vllm.model_executor.layers.fused_moe.expert_map_manager import ExpertMapManager  # noqa: E402
from vllm.model_executor.layers.fused_moe.oracle.fp8 import (  # noqa: E402
    Fp8MoeBackend,
    make_fp8_moe_quant_config,
)
from vllm.model_executor.layers.fused_moe.prepare_finalize.batched import BatchedPrepareAndFinalize  # noqa: E402
from vllm.model_executor.layers.fused_moe.prepare_finalize.no_dp_ep import (  # noqa: E402
    MoEPrepareAndFinalizeNoDPEPModular,
)
from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts  # noqa: E402
from vllm.model_executor.layers.quantization import (  # noqa: E402
    QUANTIZATION_METHODS,
    get_quantization_config,
)
from vllm.v1.worker.workspace import init_workspace_manager  # noqa: E402

from dg_moe.integrations import vllm as dg_vllm  # noqa: E402
from dg_moe.layout import per_block_cast_to_fp8, per_token_cast_to_fp8  # noqa: E402
from dg_moe.moe import reference_moe  # noqa: E402
from dg_moe.reference import dequantize  # noqa: E402
from dg_moe.reference.metrics import calc_diff  # noqa: E402

E, H, INTER, K = 8, 256, 128, 2
BOUND = 1e-3
CHECKPOINT_CONFIG = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


@pytest.fixture(scope="module")
def vllm_cpu() -> Iterator[VllmConfig]:
    """What vLLM's worker sets up before it builds a model, on one CPU process: the current config, a
    one-rank gloo group for the (trivial) tensor and expert parallel groups, the MoE workspace manager."""
    config = VllmConfig(device_config=DeviceConfig(device="cpu"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                     distributed_init_method=f"tcp://127.0.0.1:{port}", backend="gloo")
        initialize_model_parallel(1, 1)
        init_workspace_manager(torch.device("cpu"))
        dg_vllm.register()
        yield config
        destroy_model_parallel()
        destroy_distributed_environment()


def _moe_config(num_tokens: int) -> FusedMoEConfig:
    return FusedMoEConfig(num_experts=E, experts_per_token=K, hidden_dim=H, intermediate_size=INTER,
                          num_local_experts=E, num_logical_experts=E, activation=MoEActivation.SILU, device="cpu",
                          routing_method=RoutingMethodType.Renormalize,
                          moe_parallel_config=FusedMoEParallelConfig.make_no_parallel(), in_dtype=torch.bfloat16,
                          max_num_tokens=num_tokens)


def _checkpoint(seed: int) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per expert, a block-FP8 checkpoint's (e4m3 weight, float32 weight_scale_inv) for gate, up and down."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w1": (INTER, H), "w3": (INTER, H), "w2": (H, INTER)}
    return {shard: [per_block_cast_to_fp8(torch.randn(shape, generator=gen) / 16) for _ in range(E)]
            for shard, shape in shapes.items()}


def _routing(num_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, H, generator=gen).bfloat16()
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(num_tokens)]).int()
    weights = torch.softmax(torch.randn(num_tokens, K, generator=gen), dim=-1)
    return hidden, ids, weights


def _reference(hidden: torch.Tensor, ckpt: dict, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """float64 MoE from the checkpoint's separate gate, up and down tensors, dequantised exactly: it does not
    rely on the [gate | up] order of vLLM's w13 that the adapter depends on."""
    x = hidden.double()
    out = torch.zeros_like(x)
    for e in range(E):
        gate, up, down = (dequantize(*ckpt[s][e], 128, 128) for s in ("w1", "w3", "w2"))
        y = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
        out += (weights * (ids == e)).sum(1, keepdim=True).double() * y
    return out


def _load(layer: RoutedExperts, ckpt: dict) -> None:
    """Each checkpoint tensor through vLLM's own MoE weight loader, as its model loader calls it."""
    params = dict(layer.named_parameters())
    for shard, tensors in ckpt.items():
        target = "w2" if shard == "w2" else "w13"
        for expert, (weight, scale) in enumerate(tensors):
            layer.weight_loader(params[f"{target}_weight"], weight, f"experts.{expert}.{shard}.weight", shard, expert)
            layer.weight_loader(params[f"{target}_weight_scale_inv"], scale,
                                f"experts.{expert}.{shard}.weight_scale_inv", shard, expert)


def test_entry_point_is_loaded_by_vllms_plugin_loader() -> None:
    # A fresh process: vLLM loads plugins once per process, and this one may have registered already.
    code = (
        "from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS as q\n"
        "assert 'dg_moe_fp8' not in q\n"
        "import vllm.plugins\n"
        "vllm.plugins.load_general_plugins()\n"
        "from vllm.model_executor.layers.quantization import get_quantization_config\n"
        "from dg_moe.integrations._vllm_impl import DgMoeFp8Config\n"
        "assert 'dg_moe_fp8' in q and get_quantization_config('dg_moe_fp8') is DgMoeFp8Config\n"
        "print('registered')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "registered" in result.stdout, result.stderr[-3000:]


def test_engine_args_resolve_dg_moe_fp8_for_an_fp8_checkpoint(tmp_path) -> None:
    # `vllm serve <model> --quantization dg_moe_fp8` up to the quantization config: EngineArgs loads the
    # plugins, ModelConfig checks the checkpoint's "fp8" against the requested name, VllmConfig builds the
    # config instance. A fresh process, so that EngineArgs' own plugin loading is what registers the name.
    code = (
        "import json, sys\n"
        "from transformers import MixtralConfig\n"
        "config = MixtralConfig(vocab_size=512, hidden_size=256, intermediate_size=128, num_hidden_layers=2,\n"
        "                       num_attention_heads=4, num_key_value_heads=2, num_local_experts=8).to_dict()\n"
        "config['architectures'] = ['MixtralForCausalLM']\n"
        f"config['quantization_config'] = {CHECKPOINT_CONFIG!r}\n"
        "json.dump(config, open(sys.argv[1] + '/config.json', 'w'))\n"
        "from vllm.config import LoadConfig, VllmConfig\n"
        "from vllm.engine.arg_utils import EngineArgs\n"
        "for asked, expected in (('dg_moe_fp8', 'DgMoeFp8Config'), (None, 'Fp8Config')):\n"
        "    args = EngineArgs(model=sys.argv[1], quantization=asked, skip_tokenizer_init=True)\n"
        "    model = args.create_model_config()\n"
        "    quant = VllmConfig.get_quantization_config(model, LoadConfig())\n"
        "    assert type(quant).__name__ == expected, (asked, model.quantization, type(quant))\n"
        "print('resolved')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "resolved" in result.stdout, result.stderr[-3000:]


def test_importing_the_adapter_imports_no_vllm() -> None:
    code = "import sys, dg_moe.integrations.vllm\nassert 'vllm' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_register_is_idempotent(vllm_cpu: VllmConfig) -> None:
    dg_vllm.register()
    dg_vllm.register()
    assert QUANTIZATION_METHODS.count(dg_vllm.QUANTIZATION) == 1
    assert get_quantization_config(dg_vllm.QUANTIZATION) is dg_vllm.DgMoeFp8Config


def test_config_claims_fp8_checkpoints_only_when_asked() -> None:
    cls = dg_vllm.DgMoeFp8Config
    assert cls.override_quantization_method(CHECKPOINT_CONFIG, "dg_moe_fp8") == "dg_moe_fp8"
    assert cls.override_quantization_method(CHECKPOINT_CONFIG, None) is None
    assert cls.override_quantization_method(CHECKPOINT_CONFIG, "fp8") is None
    config = cls.from_config(CHECKPOINT_CONFIG)
    assert type(config) is cls and config.get_name() == "dg_moe_fp8" and config.weight_block_size == [128, 128]


@pytest.mark.parametrize("num_tokens", [1, 40])
def test_routed_experts_layer_runs_dg_moe(vllm_cpu: VllmConfig, num_tokens: int) -> None:
    config = dg_vllm.DgMoeFp8Config.from_config(CHECKPOINT_CONFIG)
    moe = _moe_config(num_tokens)
    maps = ExpertMapManager(max_num_batched_tokens=num_tokens, top_k=K, global_num_experts=E, num_redundant_experts=0,
                            num_expert_group=None, moe_parallel_config=moe.moe_parallel_config,
                            placement_strategy="linear", enable_eplb=False)
    layer = RoutedExperts("model.layers.0.mlp.experts", torch.bfloat16, moe, config, maps)
    method = layer.quant_method
    assert type(method) is dg_vllm.DgMoeFp8MoEMethod
    assert method.experts_cls is dg_vllm.DgMoeExperts and method.fp8_backend == Fp8MoeBackend.TRITON

    ckpt = _checkpoint(seed=num_tokens)
    _load(layer, ckpt)
    method.process_weights_after_loading(layer)
    kernel = method.moe_kernel
    assert isinstance(kernel, mk.FusedMoEKernel)
    assert type(kernel.prepare_finalize) is MoEPrepareAndFinalizeNoDPEPModular
    assert type(kernel.fused_experts) is dg_vllm.DgMoeExperts
    # The loader put gate in rows [0, I) and up in [I, 2I) of w13; the method left the layout as loaded.
    assert torch.equal(layer.w13_weight[3, :INTER].view(torch.uint8), ckpt["w1"][3][0].view(torch.uint8))
    assert torch.equal(layer.w13_weight[3, INTER:].view(torch.uint8), ckpt["w3"][3][0].view(torch.uint8))
    assert kernel.fused_experts.w1_scale is layer.w13_weight_scale_inv

    hidden, ids, weights = _routing(num_tokens, seed=num_tokens + 1)
    with torch.inference_mode():
        out = method.apply(layer, hidden, weights, ids, None, None)
    assert out.shape == (num_tokens, H) and out.dtype == torch.bfloat16
    assert calc_diff(out, _reference(hidden, ckpt, ids, weights)) < BOUND


def test_standard_experts_skip_other_ranks_experts(vllm_cpu: VllmConfig) -> None:
    # Expert parallelism without an all-to-all: vLLM passes global ids and an expert_map (-1: another rank's).
    num_tokens, local = 40, E // 2
    ckpt = _checkpoint(seed=7)
    w13 = torch.stack([torch.cat([ckpt["w1"][e][0], ckpt["w3"][e][0]]) for e in range(E)])
    s13 = torch.stack([torch.cat([ckpt["w1"][e][1], ckpt["w3"][e][1]]) for e in range(E)])
    w2 = torch.stack([ckpt["w2"][e][0] for e in range(E)])
    s2 = torch.stack([ckpt["w2"][e][1] for e in range(E)])
    rank_experts = slice(local, E)  # rank 1 of 2 holds global experts 4..7
    quant = make_fp8_moe_quant_config(Fp8MoeBackend.TRITON, w1_scale=s13[rank_experts].contiguous(),
                                      w2_scale=s2[rank_experts].contiguous(), a1_scale=None, a2_scale=None,
                                      block_shape=[128, 128])
    experts = dg_vllm.DgMoeExperts(_moe_config(num_tokens), quant)
    kernel = mk.FusedMoEKernel(MoEPrepareAndFinalizeNoDPEPModular(), experts)
    expert_map = torch.full((E,), -1, dtype=torch.int32)
    expert_map[local:] = torch.arange(local, dtype=torch.int32)
    hidden, ids, weights = _routing(num_tokens, seed=8)
    with torch.inference_mode():
        out = kernel.apply(hidden, w13[rank_experts].contiguous(), w2[rank_experts].contiguous(), weights, ids,
                           activation=MoEActivation.SILU, global_num_experts=E, expert_map=expert_map,
                           apply_router_weight_on_input=False)
    local_ids = torch.where(ids >= local, ids - local, -1)
    ref = reference_moe(hidden, (w13[rank_experts], s13[rank_experts]), (w2[rank_experts], s2[rank_experts]),
                        local_ids, weights)
    assert calc_diff(out, ref) < BOUND


def test_batched_experts_inside_vllms_batched_kernel(vllm_cpu: VllmConfig) -> None:
    num_tokens = 24
    ckpt = _checkpoint(seed=11)
    w13 = torch.stack([torch.cat([ckpt["w1"][e][0], ckpt["w3"][e][0]]) for e in range(E)])
    s13 = torch.stack([torch.cat([ckpt["w1"][e][1], ckpt["w3"][e][1]]) for e in range(E)])
    w2 = torch.stack([ckpt["w2"][e][0] for e in range(E)])
    s2 = torch.stack([ckpt["w2"][e][1] for e in range(E)])
    quant = make_fp8_moe_quant_config(Fp8MoeBackend.BATCHED_TRITON, w1_scale=s13, w2_scale=s2, a1_scale=None,
                                      a2_scale=None, block_shape=[128, 128])
    prepare_finalize = BatchedPrepareAndFinalize(max_num_tokens=num_tokens, num_local_experts=E, num_dispatchers=1,
                                                 rank=0)
    experts = dg_vllm.DgMoeBatchedExperts(_moe_config(num_tokens), quant, max_num_tokens=num_tokens,
                                          num_dispatchers=1)
    kernel = mk.FusedMoEKernel(prepare_finalize, experts)
    assert kernel.fused_experts is experts and not kernel.is_monolithic

    hidden, ids, weights = _routing(num_tokens, seed=12)
    # The batched layout vLLM's prepare builds: expert e's tokens, in token order, in rows [0, count[e]),
    # quantised 1x128 (its quantiser is Triton, so dg_moe's stands in; both round e4m3 with amax/448 scales).
    q, sf = per_token_cast_to_fp8(hidden)
    a1q = torch.zeros(E, num_tokens, H, dtype=torch.float8_e4m3fn)
    a1q_scale = torch.zeros(E, num_tokens, H // 128)
    counts = torch.zeros(E, dtype=torch.int32)
    for e in range(E):
        rows = (ids == e).any(1).nonzero().flatten()
        counts[e] = rows.numel()
        a1q.view(torch.uint8)[e, :rows.numel()] = q.view(torch.uint8)[rows]
        a1q_scale[e, :rows.numel()] = sf[rows]
    meta = mk.ExpertTokensMetadata(expert_num_tokens=counts, expert_num_tokens_cpu=None)
    shapes = experts.workspace_shapes(num_tokens, 2 * INTER, H, K, E, E, meta, MoEActivation.SILU)
    workspace13, workspace2, fused_out = (torch.empty(s, dtype=torch.bfloat16) for s in shapes)
    output = torch.empty(num_tokens, H, dtype=torch.bfloat16)
    with torch.inference_mode():
        experts.apply(fused_out, a1q, w13, w2, weights, ids, MoEActivation.SILU, E, None, a1q_scale, None,
                      workspace13, workspace2, meta, False)
        kernel.prepare_finalize.finalize(output, fused_out, weights, ids, False,
                                         experts.finalize_weight_and_reduce_impl())
    ref = reference_moe((q, sf), (w13, s13), (w2, s2), ids, weights)
    assert calc_diff(output, ref) < BOUND
