"""dg_moe as vLLM's fused-MoE experts, through a quantization config named ``"dg_moe_fp8"`` (docs/integrations.md).

vLLM (0.33) has no registry for MoE kernels. What it does offer without patching:

- plugins: every process calls ``vllm.plugins.load_general_plugins()``, which runs each function declared
  under the ``vllm.general_plugins`` entry-point group (pyproject.toml declares :func:`register` there);
- quantization configs: ``register_quantization_config(name)`` adds a ``QuantizationConfig`` subclass under
  a name that ``--quantization`` accepts.

:func:`register` registers :class:`DgMoeFp8Config` (a subclass of vLLM's ``Fp8Config``) as ``"dg_moe_fp8"``.
For a block-FP8 checkpoint (``quant_method: fp8``, ``weight_block_size: [128, 128]``) it behaves as
``Fp8Config`` except for the routed experts: their ``DgMoeFp8MoEMethod`` (a subclass of ``Fp8MoEMethod``)
builds vLLM's own ``FusedMoEKernel`` and prepare/finalize object, with one of our experts classes
inside (subclasses of vLLM's ``FusedMoEExpertsModular``):

- :class:`DgMoeExperts`, the standard activation format (tokens [T, H]: no EP, naive DP, DeepEP
  high-throughput): ``dg_moe.fused_moe`` on its contiguous path;
- :class:`DgMoeBatchedExperts`, the batched format ([E, max_tokens, H] plus per-expert counts: DeepEP
  low-latency, vLLM's batched reference dispatch): dg_moe's masked grouped GEMMs.

Usage::

    pip install -e ".[vllm]"          # the entry point makes vLLM load register() in every process
    vllm serve <block-FP8 MoE checkpoint> --quantization dg_moe_fp8

The classes subclass vLLM's, so they live in ``dg_moe.integrations._vllm_impl``, which imports vLLM;
this module reaches them through a module ``__getattr__``, so importing it does not import vLLM.
"""

from __future__ import annotations

import importlib
from typing import Any

from dg_moe.integrations import lazy_exports

QUANTIZATION = "dg_moe_fp8"
"""The name to pass as ``--quantization`` (``quantization=`` of ``vllm.LLM``)."""

_EXPORTS = ("DgMoeBatchedExperts", "DgMoeExperts", "DgMoeFp8Config", "DgMoeFp8MoEMethod")


def register() -> None:
    """Register :class:`DgMoeFp8Config` with vLLM as ``"dg_moe_fp8"``; calling it again is a no-op.

    vLLM runs this in each of its processes through the ``vllm.general_plugins`` entry point; a script
    that builds vLLM objects itself may call it directly. Raises ImportError when vLLM (>= 0.33) is not
    importable.
    """
    try:
        from vllm.model_executor.layers.quantization import register_quantization_config
    except ImportError as exc:
        raise ImportError(
            "dg_moe.integrations.vllm needs vLLM >= 0.33 (register_quantization_config); install it with "
            f"pip install 'dg-moe[vllm]' ({exc})"
        ) from exc
    # vLLM appends the name to QUANTIZATION_METHODS only when it is new and otherwise rebinds it, here to
    # the same module-level class: a second call changes nothing.
    register_quantization_config(QUANTIZATION)(_impl().DgMoeFp8Config)


def _impl() -> Any:
    return importlib.import_module("dg_moe.integrations._vllm_impl")


__getattr__, __dir__ = lazy_exports(__name__, "dg_moe.integrations._vllm_impl", _EXPORTS)
