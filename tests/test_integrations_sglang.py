"""dg_moe.integrations.sglang against the real SGLang package (0.5.23), on CPU: no mocks.

SGLang pins its own torch, so these tests run in a separate environment (``.ci/sglang``); where SGLang is not
installed (the main venv) the module is skipped. On CPU ``fused_moe`` runs dg_moe's float64 reference.

Covered, through SGLang's own objects: discovery of the ``sglang.srt.plugins`` entry point by
``sglang.srt.plugins.load_plugins``, after which SGLang's server-argument parser accepts
``--moe-runner-backend dg_moe`` (and rejects it before); a whole ``prepare_server_args`` ->
``publish`` -> ``initialize_moe_config`` start-up as a scheduler process does it, then a real ``FusedMoE`` layer
of a block-FP8 ``Fp8Config`` built in one-rank gloo groups: its ``Fp8MoEMethod`` with a ``MoeRunner`` around
``DgMoeRunnerCore``, checkpoint tensors through the layer's own weight loader, ``process_weights_after_loading``,
and ``FusedMoE.forward`` (standard dispatcher, our runner, combine) against a float64 MoE. Also: other backends
keep SGLang's runner, and what dg_moe does not compute is refused.
Not covered: a model forward (SGLang's CPU model runner is not exercised), DeepEP formats, a CUDA device.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("sglang", reason="SGLang is not installed here; .ci/sglang runs these tests in their own venv")

from sglang.srt.arg_groups.choices import MOE_RUNNER_BACKEND_CHOICES  # noqa: E402
from sglang.srt.distributed import init_distributed_environment, initialize_model_parallel  # noqa: E402
from sglang.srt.distributed.parallel_state import (  # noqa: E402
    destroy_distributed_environment,
    destroy_model_parallel,
)
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE  # noqa: E402
from sglang.srt.layers.moe.moe_runner import MoeRunnerConfig  # noqa: E402
from sglang.srt.layers.moe.topk import StandardTopKOutput  # noqa: E402
from sglang.srt.layers.moe.utils import (  # noqa: E402
    MoeRunnerBackend,
    get_moe_runner_backend,
    initialize_moe_config,
    resolve_moe_runner_backend,
)
from sglang.srt.layers.quantization.fp8 import Fp8Config, Fp8MoEMethod  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402
from sglang.srt.runtime_context import SpawnRanks, get_flags, publish  # noqa: E402
from sglang.srt.server_args import prepare_server_args  # noqa: E402

from dg_moe.integrations import sglang as dg_sglang  # noqa: E402
from dg_moe.layout import per_block_cast_to_fp8  # noqa: E402
from dg_moe.moe import fused_moe  # noqa: E402
from dg_moe.reference import dequantize  # noqa: E402
from dg_moe.reference.metrics import calc_diff  # noqa: E402

E, H, INTER, K = 8, 256, 128, 2
# Against float64 on the dequantised weights, the FP8 (1x128) rounding of the tokens and of the intermediate
# activation cost about 5e-4 each on these Gaussian inputs (fused_moe alone measures 0.9e-3 to 1.4e-3 at these
# shapes and seeds): 2e-3 keeps a margin; gate and up swapped measure 0.3.
FLOAT64_BOUND = 2e-3
# Against fused_moe on the same tensors only the BF16 rounding of where the scaling factor is applied differs.
ADAPTER_BOUND = 1e-5
CHECKPOINT_CONFIG = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # A fresh process: SGLang loads plugins once per process, and this one may have registered already.
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_entry_point_makes_dg_moe_a_runner_backend_choice() -> None:
    code = (
        "import argparse\n"
        "from sglang.srt.server_args import ServerArgs\n"
        "def parse():\n"
        "    parser = argparse.ArgumentParser()\n"
        "    ServerArgs.add_cli_args(parser)\n"
        "    return parser.parse_args(['--model-path', 'unused', '--moe-runner-backend', 'dg_moe'])\n"
        "try:\n"
        "    parse()\n"
        "except SystemExit:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('dg_moe accepted before the plugins were loaded')\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "assert parse().moe_runner_backend == 'dg_moe'\n"
        "from sglang.srt.layers.moe.utils import resolve_moe_runner_backend\n"
        "assert resolve_moe_runner_backend('dg_moe').value == 'dg_moe'\n"
        "from sglang.srt.layers.quantization.fp8 import Fp8MoEMethod\n"
        "assert hasattr(Fp8MoEMethod.create_moe_runner, '__wrapped__') and hasattr(Fp8MoEMethod.apply, '__wrapped__')\n"
        "print('registered')\n"
    )
    result = _run(code)
    assert result.returncode == 0 and "registered" in result.stdout, result.stderr[-3000:]


def test_importing_the_adapter_imports_no_sglang() -> None:
    result = _run("import sys, dg_moe.integrations.sglang\nassert 'sglang' not in sys.modules\n")
    assert result.returncode == 0, result.stderr[-3000:]


def test_register_is_idempotent() -> None:
    dg_sglang.register()
    dg_sglang.register()
    assert MOE_RUNNER_BACKEND_CHOICES.count(dg_sglang.BACKEND) == 1
    # One AROUND hook on each method: the wrapper's __wrapped__ is SGLang's own function.
    for name in ("create_moe_runner", "apply"):
        wrapper = getattr(Fp8MoEMethod, name)
        assert hasattr(wrapper, "__wrapped__") and not hasattr(wrapper.__wrapped__, "__wrapped__")


@pytest.fixture
def runner_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """The process-wide runner backend that ``initialize_moe_config`` sets from ``--moe-runner-backend``
    (``resolve_moe_runner_backend`` of the argument), restored afterwards."""
    dg_sglang.register()
    moe = get_flags().moe
    saved = moe.runner_backend
    moe.runner_backend = resolve_moe_runner_backend(request.param)
    yield
    moe.runner_backend = saved


def _checkpoint(seed: int) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per expert, a block-FP8 checkpoint's (e4m3 weight, float32 weight_scale_inv) for gate, up and down."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w1": (INTER, H), "w3": (INTER, H), "w2": (H, INTER)}
    return {shard: [per_block_cast_to_fp8(torch.randn(shape, generator=gen) / 16) for _ in range(E)]
            for shard, shape in shapes.items()}


def _layer(method: Fp8MoEMethod, ckpt: dict, config: MoeRunnerConfig) -> torch.nn.Module:
    """A module with the method's own parameters, filled as SGLang's loader does: gate rows [0, I) of w13, up
    rows [I, 2I). It stands in for ``FusedMoE`` (which needs SGLang's distributed state): ``create_weights``
    reads the two attributes ``FusedMoE`` sets before calling it, its TP size and its runner config."""
    layer = torch.nn.Module()
    layer.moe_tp_size = 1
    layer.moe_runner_config = config
    method.create_weights(layer, num_experts=E, hidden_size=H, intermediate_size_per_partition=INTER,
                          params_dtype=torch.bfloat16, weight_loader=None)
    with torch.no_grad():
        for e in range(E):
            layer.w13_weight[e].copy_(torch.cat([ckpt["w1"][e][0], ckpt["w3"][e][0]]))
            layer.w13_weight_scale_inv[e].copy_(torch.cat([ckpt["w1"][e][1], ckpt["w3"][e][1]]))
            layer.w2_weight[e].copy_(ckpt["w2"][e][0])
            layer.w2_weight_scale_inv[e].copy_(ckpt["w2"][e][1])
    return layer


def _reference(hidden: torch.Tensor, ckpt: dict, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """float64 MoE from the checkpoint's separate gate, up and down tensors, dequantised exactly."""
    x = hidden.double()
    out = torch.zeros_like(x)
    for e in range(E):
        gate, up, down = (dequantize(*ckpt[s][e], 128, 128) for s in ("w1", "w3", "w2"))
        y = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
        out += (weights * (ids == e)).sum(1, keepdim=True).double() * y
    return out


def _runner_config(**overrides: object) -> MoeRunnerConfig:
    return MoeRunnerConfig(num_experts=E, num_local_experts=E, hidden_size=H, intermediate_size_per_partition=INTER,
                           top_k=K, params_dtype=torch.bfloat16, **overrides)


@pytest.mark.parametrize("runner_backend", ["triton"], indirect=True)
def test_other_backends_keep_sglangs_runner(runner_backend: None) -> None:
    method = Fp8MoEMethod(Fp8Config.from_config(CHECKPOINT_CONFIG))
    config = _runner_config()
    method.create_moe_runner(_layer(method, _checkpoint(seed=0), config), config)
    assert method.runner.runner_backend is MoeRunnerBackend.TRITON


@pytest.fixture(scope="module")
def sglang_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What ``sglang.launch_server`` and a scheduler process do before they build a model, on one CPU process:
    plugins, ``--moe-runner-backend dg_moe`` parsed for a block-FP8 Mixtral-shaped config, the configuration
    published, the MoE flags seeded from it, one-rank gloo groups. The runner backend is restored afterwards."""
    model = _fp8_model_dir(tmp_path_factory.mktemp("model"))
    load_plugins()
    args = prepare_server_args(["--model-path", str(model), "--moe-runner-backend", dg_sglang.BACKEND,
                                "--device", "cpu", "--skip-tokenizer-init"])
    publish(args, role="scheduler", ranks=SpawnRanks(world_rank=0))
    moe = get_flags().moe
    saved = moe.runner_backend
    initialize_moe_config()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                 distributed_init_method=f"tcp://127.0.0.1:{port}", backend="gloo")
    initialize_model_parallel()
    yield
    destroy_model_parallel()
    destroy_distributed_environment()
    moe.runner_backend = saved


def _fp8_model_dir(path: Path) -> Path:
    """A config.json that ``prepare_server_args`` accepts: a tiny Mixtral with a block-FP8 quantization config."""
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=512, hidden_size=H, intermediate_size=INTER, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=E,
                           num_experts_per_tok=K).to_dict()
    config["architectures"] = ["MixtralForCausalLM"]
    config["quantization_config"] = CHECKPOINT_CONFIG
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("num_tokens, routed_scaling_factor", [(1, None), (40, 2.5)])
def test_fused_moe_layer_runs_dg_moe(sglang_scheduler: None, num_tokens: int,
                                     routed_scaling_factor: float | None) -> None:
    assert get_moe_runner_backend().value == dg_sglang.BACKEND
    layer = FusedMoE(num_experts=E, hidden_size=H, intermediate_size=INTER, layer_id=0, top_k=K,
                     params_dtype=torch.bfloat16, quant_config=Fp8Config.from_config(CHECKPOINT_CONFIG),
                     prefix="model.layers.0.block_sparse_moe.experts", routed_scaling_factor=routed_scaling_factor)
    method = layer.quant_method
    assert type(method) is Fp8MoEMethod
    assert method.runner.runner_backend.value == dg_sglang.BACKEND
    assert type(method.runner.runner_core) is dg_sglang.DgMoeRunnerCore

    ckpt = _checkpoint(seed=num_tokens)
    params = dict(layer.named_parameters())
    for shard, tensors in ckpt.items():
        target = "w2" if shard == "w2" else "w13"
        for expert, (weight, scale) in enumerate(tensors):
            layer.weight_loader(params[f"{target}_weight"], weight, f"experts.{expert}.{shard}.weight", shard, expert)
            layer.weight_loader(params[f"{target}_weight_scale_inv"], scale,
                                f"experts.{expert}.{shard}.weight_scale_inv", shard, expert)
    method.process_weights_after_loading(layer)
    # The loader put gate in rows [0, I) and up in [I, 2I) of w13, and the weights stayed as loaded.
    assert torch.equal(layer.w13_weight[3, :INTER].view(torch.uint8), ckpt["w1"][3][0].view(torch.uint8))
    assert torch.equal(layer.w13_weight[3, INTER:].view(torch.uint8), ckpt["w3"][3][0].view(torch.uint8))

    gen = torch.Generator().manual_seed(num_tokens + 1)
    hidden = torch.randn(num_tokens, H, generator=gen).bfloat16()
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(num_tokens)]).int()
    weights = torch.softmax(torch.randn(num_tokens, K, generator=gen), dim=-1)
    with torch.inference_mode():
        out = layer.forward(hidden, StandardTopKOutput(weights, ids, torch.zeros(num_tokens, E)))
    assert out.shape == (num_tokens, H) and out.dtype == torch.bfloat16
    rsf = routed_scaling_factor or 1.0
    # Against the checkpoint's separate gate/up/down in float64 (independent of the [gate | up] order) ...
    assert calc_diff(out, _reference(hidden, ckpt, ids, weights) * rsf) < FLOAT64_BOUND
    # ... and, tightly, against fused_moe called directly on SGLang's loaded w13/w2 and block scales: the
    # adapter must add nothing but the routed scaling factor.
    direct = fused_moe(hidden, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight,
                       layer.w2_weight_scale_inv, ids, weights, mode="contiguous").double() * rsf
    assert calc_diff(out, direct) < ADAPTER_BOUND


@pytest.mark.parametrize("runner_backend", [dg_sglang.BACKEND], indirect=True)
def test_dg_moe_refuses_what_it_does_not_compute(runner_backend: None) -> None:
    per_tensor = Fp8MoEMethod(Fp8Config.from_config({"quant_method": "fp8", "activation_scheme": "dynamic"}))
    with pytest.raises(ValueError, match="128x128 block"):
        per_tensor.create_moe_runner(torch.nn.Module(), _runner_config())
    up_first = type("UpFirstFp8MoEMethod", (Fp8MoEMethod,), {"load_up_proj_weight_first": True})
    with pytest.raises(ValueError, match="load_up_proj_weight_first"):
        up_first(Fp8Config.from_config(CHECKPOINT_CONFIG)).create_moe_runner(torch.nn.Module(), _runner_config())
    method = Fp8MoEMethod(Fp8Config.from_config(CHECKPOINT_CONFIG))
    config = _runner_config(swiglu_limit=7.0)
    with pytest.raises(ValueError, match="swiglu_limit"):
        method.create_moe_runner(_layer(method, _checkpoint(seed=3), config), config)
