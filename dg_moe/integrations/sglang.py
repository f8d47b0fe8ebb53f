"""dg_moe as SGLang's MoE runner backend ``"dg_moe"`` (``--moe-runner-backend dg_moe``; docs/integrations.md).

SGLang (0.5.23) offers, without patching its source:

- plugins: every process (``launch_server`` before it parses the arguments, the engine, each scheduler)
  calls ``sglang.srt.plugins.load_plugins()``, which runs each function declared under the
  ``sglang.srt.plugins`` entry-point group (pyproject.toml declares :func:`register` there);
- ``add_moe_runner_backend_choices``: extends the choices ``--moe-runner-backend`` accepts;
- ``register_moe_runner_core``: makes the name a runner backend and gives ``MoeRunner`` a factory for its core;
- ``HookRegistry``: plugin hooks on SGLang functions, applied by ``load_plugins``.

The runner core alone is not enough: ``Fp8MoEMethod.create_moe_runner`` builds a ``MoeRunner`` only for the
backends it knows, so :func:`register` also puts two AROUND hooks on ``Fp8MoEMethod`` (``create_moe_runner``
and ``apply``) that take over only when the chosen backend is ``dg_moe``: the method then builds a
``MoeRunner`` whose core is :class:`DgMoeRunnerCore` and passes it the layer's FP8 weights and 128x128 block
scales, which ``dg_moe.fused_moe`` runs on its contiguous path.

Usage::

    pip install -e ".[sglang]"       # the entry point makes SGLang load register() in every process
    python -m sglang.launch_server --model-path <block-FP8 MoE checkpoint> --moe-runner-backend dg_moe

The SGLang subclasses live in ``dg_moe.integrations._sglang_impl``, which imports SGLang; this module reaches
them through a module ``__getattr__``, so importing it does not import SGLang.
"""

from __future__ import annotations

import importlib
from typing import Any

from dg_moe.integrations import lazy_exports

BACKEND = "dg_moe"
"""The name to pass as ``--moe-runner-backend`` (``moe_runner_backend=`` of ``sglang.Engine``)."""

_EXPORTS = ("DgMoeQuantInfo", "DgMoeRunnerCore")


def register() -> None:
    """Register ``"dg_moe"`` as an SGLang MoE runner backend and direct ``Fp8MoEMethod`` to it; idempotent.

    SGLang runs this in each of its processes through the ``sglang.srt.plugins`` entry point; a script that
    builds SGLang objects itself may call it directly (before it parses server arguments). Raises ImportError
    when SGLang (>= 0.5.23) is not importable.
    """
    try:
        impl = _impl()
    except ImportError as exc:
        raise ImportError(
            "dg_moe.integrations.sglang needs SGLang >= 0.5.23 (register_moe_runner_core); install it with "
            f"pip install 'dg-moe[sglang]' ({exc})"
        ) from exc
    impl.register_once()


def _impl() -> Any:
    return importlib.import_module("dg_moe.integrations._sglang_impl")


__getattr__, __dir__ = lazy_exports(__name__, "dg_moe.integrations._sglang_impl", _EXPORTS)
