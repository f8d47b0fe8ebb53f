"""The public ops as torch library ops in namespace ``dg_moe`` (``torch.ops.dg_moe.<name>``), for torch.compile.

Dynamo cannot trace the ops' Python: the argument checks read values of CPU tensors (group ids, prefix
sums), the CUDA path launches through ctypes and Triton, and a kernel's launch plan lives in a
process-wide memo. A registered op is opaque instead: the compiler sees its schema, what it mutates and a
fake implementation that gives the outputs' shapes, dtypes and strides without touching data, and calls
the real implementation (checks included) when the compiled graph runs.

Eager calls never come here: each public function runs its direct path unless
``torch.compiler.is_compiling()`` (about 0.1 us a call), and only while Dynamo traces does it call
``torch.ops.dg_moe.<name>`` instead. Operands given as ``(tensor, scales)`` pairs are flattened into two
tensor arguments (``a, sfa, b, sfb``; a routing op's ``hidden`` into ``hidden, hidden_scales``, None for
BF16 rows), the shared expert of ``fused_moe`` into four optional tensors, and a recipe tuple into an
``int[]?``. The GEMMs write ``d`` in place and return nothing (``mutates_args=("d",)``); ``c``, which they
only read, may be ``d`` itself, an aliasing that functionalisation resolves on the mutated ``d``. Every
other op returns new tensors and mutates nothing.

:func:`register` runs once, from ``dg_moe/__init__.py`` beside the kernel registrations. Not registered: the
quantisers and scale-layout helpers (``per_token_cast_to_fp8``, ``transform_sf_into_required_layout``, ...),
plain PyTorch with metadata-only checks, which Dynamo traces as they are; and
``deepep_low_latency_to_masked``, which returns its input tensors themselves (a registered op may not
return an alias of an input) and whose storage-offset check Dynamo cannot trace: call it outside the
compiled region (it computes nothing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import reference as ref
from .layout import _kernels
from .layout.activation import silu_contiguous, silu_masked
from .layout.deepep import route_contiguous
from .layout.routing_contiguous import _capacity
from .layout.routing_masked import route_masked
from .layout.unpermute import reduce_contiguous, reduce_masked
from .moe.fused import counted_overflow, fused_moe_bf16_layer, fused_moe_layer
from .moe.shared import SharedExpert
from .ops import contiguous, dense, k_grouped, masked

NAMESPACE = "dg_moe"

Tensor = torch.Tensor
_NAMES: list[str] = []
_registered = False


def register() -> None:
    """Register every public GEMM, the MoE layout ops, ``fused_moe`` and ``fused_moe_bf16`` under
    ``torch.ops.dg_moe`` (once)."""
    global _registered
    if _registered:
        return
    _registered = True
    _register_gemms()
    _register_layout()
    _register_moe()


def registered_ops() -> tuple[str, ...]:
    """Names of the ops :func:`register` defines, in registration order."""
    return tuple(_NAMES)



def _define(name: str, impl: Callable, fake: Callable, mutates_args: tuple[str, ...] = ()) -> None:
    # The op's schema comes from impl's annotations (so impl must not use string annotations of
    # unresolvable names); fake receives the same arguments, FakeTensors for the tensors.
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=mutates_args)
    op.register_fake(fake)
    _NAMES.append(name)


def _writes_d(*_args: object) -> None:
    # Fake implementation of every GEMM: d is the caller's, so there is no output to make.
    return None


def _recipe(recipe: list[int] | None) -> tuple[int, ...] | None:
    # The schema's int[]? arrives as a list; the ops compare recipes as tuples.
    return None if recipe is None else tuple(recipe)


# ---- GEMMs: D written in place --------------------------------------------------------------------------


def _fp8_dense(name: str) -> None:
    # Layout letters of D = op(A) @ op(B): A is given transposed for "t", B for "n" (dg_moe.ops.dense).
    a_t, b_t = name[-2] == "t", name[-1] == "n"
    ref_fn = getattr(ref, name)

    def impl(a: Tensor, sfa: Tensor, b: Tensor, sfb: Tensor, d: Tensor, c: Tensor | None, recipe: list[int] | None,
             compiled_dims: str, disable_ue8m0_cast: bool) -> None:
        dense._fp8_dense(name, ref_fn, (a, sfa), (b, sfb), d, c, _recipe(recipe), compiled_dims, disable_ue8m0_cast,
                         a_t, b_t)

    _define(name, impl, _writes_d, ("d",))


def _bf16_dense(name: str) -> None:
    a_t, b_t = name[-2] == "t", name[-1] == "n"
    ref_fn = getattr(ref, name)

    def impl(a: Tensor, b: Tensor, d: Tensor, c: Tensor | None, compiled_dims: str) -> None:
        dense._bf16_dense(name, ref_fn, a, b, d, c, compiled_dims, a_t, b_t)

    _define(name, impl, _writes_d, ("d",))


def _m_grouped_fp8_gemm_nt_contiguous(a: Tensor, sfa: Tensor, b: Tensor, sfb: Tensor, d: Tensor,
                                      grouped_layout: Tensor, recipe: list[int] | None, compiled_dims: str,
                                      disable_ue8m0_cast: bool, use_psum_layout: bool,
                                      expected_m_for_psum_layout: int | None) -> None:
    contiguous._fp8_contiguous("m_grouped_fp8_gemm_nt_contiguous", ref.m_grouped_fp8_gemm_nt_contiguous, (a, sfa),
                               (b, sfb), d, grouped_layout, _recipe(recipe), compiled_dims, disable_ue8m0_cast,
                               use_psum_layout, expected_m_for_psum_layout, False,
                               expected_m_for_psum_layout=expected_m_for_psum_layout)


def _m_grouped_fp8_gemm_nn_contiguous(a: Tensor, sfa: Tensor, b: Tensor, sfb: Tensor, d: Tensor,
                                      grouped_layout: Tensor, recipe: list[int] | None, compiled_dims: str,
                                      disable_ue8m0_cast: bool, use_psum_layout: bool) -> None:
    contiguous._fp8_contiguous("m_grouped_fp8_gemm_nn_contiguous", ref.m_grouped_fp8_gemm_nn_contiguous, (a, sfa),
                               (b, sfb), d, grouped_layout, _recipe(recipe), compiled_dims, disable_ue8m0_cast,
                               use_psum_layout, None, True)


def _m_grouped_bf16_gemm_nt_contiguous(a: Tensor, b: Tensor, d: Tensor, grouped_layout: Tensor, compiled_dims: str,
                                       use_psum_layout: bool, expected_m_for_psum_layout: int | None) -> None:
    contiguous._bf16_contiguous("m_grouped_bf16_gemm_nt_contiguous", ref.m_grouped_bf16_gemm_nt_contiguous, a, b, d,
                                grouped_layout, compiled_dims, use_psum_layout, expected_m_for_psum_layout, False,
                                expected_m_for_psum_layout=expected_m_for_psum_layout)


def _m_grouped_bf16_gemm_nn_contiguous(a: Tensor, b: Tensor, d: Tensor, grouped_layout: Tensor, compiled_dims: str,
                                       use_psum_layout: bool) -> None:
    contiguous._bf16_contiguous("m_grouped_bf16_gemm_nn_contiguous", ref.m_grouped_bf16_gemm_nn_contiguous, a, b, d,
                                grouped_layout, compiled_dims, use_psum_layout, None, True)


def _m_grouped_fp8_gemm_nt_masked(a: Tensor, sfa: Tensor, b: Tensor, sfb: Tensor, d: Tensor, masked_m: Tensor,
                                  expected_m: int, recipe: list[int] | None, compiled_dims: str,
                                  disable_ue8m0_cast: bool) -> None:
    masked._fp8_masked((a, sfa), (b, sfb), d, masked_m, expected_m, _recipe(recipe), compiled_dims,
                       disable_ue8m0_cast)


def _m_grouped_bf16_gemm_nt_masked(a: Tensor, b: Tensor, d: Tensor, masked_m: Tensor, expected_m: int,
                                   compiled_dims: str) -> None:
    masked._bf16_masked(a, b, d, masked_m, expected_m, compiled_dims)


def _k_grouped_fp8_gemm_tn_contiguous(a: Tensor, sfa: Tensor, b: Tensor, sfb: Tensor, d: Tensor, ks_cpu: list[int],
                                      grouped_layout: Tensor, c: Tensor | None, recipe: list[int],
                                      compiled_dims: str, use_psum_layout: bool) -> None:
    k_grouped._fp8_k_grouped((a, sfa), (b, sfb), d, ks_cpu, grouped_layout, c, _recipe(recipe), compiled_dims,
                             use_psum_layout)


def _k_grouped_bf16_gemm_tn_contiguous(a: Tensor, b: Tensor, d: Tensor, ks_cpu: list[int], grouped_layout: Tensor,
                                       c: Tensor | None, compiled_dims: str, use_psum_layout: bool) -> None:
    k_grouped._bf16_k_grouped(a, b, d, ks_cpu, grouped_layout, c, compiled_dims, use_psum_layout)


def _register_gemms() -> None:
    for layout in ("nt", "nn", "tn", "tt"):
        _fp8_dense(f"fp8_gemm_{layout}")
        _bf16_dense(f"bf16_gemm_{layout}")
    for impl in (_m_grouped_fp8_gemm_nt_contiguous, _m_grouped_fp8_gemm_nn_contiguous,
                 _m_grouped_bf16_gemm_nt_contiguous, _m_grouped_bf16_gemm_nn_contiguous,
                 _m_grouped_fp8_gemm_nt_masked, _m_grouped_bf16_gemm_nt_masked,
                 _k_grouped_fp8_gemm_tn_contiguous, _k_grouped_bf16_gemm_tn_contiguous):
        _define(impl.__name__.lstrip("_"), impl, _writes_d, ("d",))


# ---- MoE layout ops: new tensors, shapes from the arguments' shapes alone ---------------------------------


def _rows(hidden: Tensor, hidden_scales: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
    return hidden if hidden_scales is None else (hidden, hidden_scales)


def _mn_major_scales(groups: int, rows: int, num_blocks: int, device: torch.device) -> Tensor:
    # float32 [groups, rows, num_blocks] with the MN-major strides (num_blocks * A, 1, A) the ops return.
    storage, _ = _kernels.mn_major_storage(groups, rows, num_blocks, device, pad=False)
    return _kernels.mn_major_view(storage, rows)


def _contiguous_layout_fake(hidden: Tensor, topk_ids: Tensor, num_experts: int) -> tuple[Tensor, ...]:
    (num_tokens, h), top_k = hidden.shape, topk_ids.shape[1]
    m_cap = _capacity(num_tokens, top_k, num_experts)
    device = hidden.device
    return (torch.empty(m_cap, h, dtype=torch.float8_e4m3fn, device=device),
            _mn_major_scales(1, m_cap, h // 128, device)[0],
            torch.empty(m_cap, dtype=torch.int32, device=device),
            torch.empty(num_experts, dtype=torch.int32, device=device),
            torch.empty(num_tokens, top_k, dtype=torch.int32, device=device))


def _route_to_contiguous(hidden: Tensor, hidden_scales: Tensor | None, topk_ids: Tensor, num_experts: int,
                         use_ue8m0: bool, zero_padding: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # Returns ContiguousLayout's fields: a, sfa, grouped_layout, grouped_layout_psum, inverse.
    return tuple(route_contiguous("route_to_contiguous", _rows(hidden, hidden_scales), topk_ids, num_experts,
                                  use_ue8m0, zero_padding=zero_padding))


def _route_to_contiguous_fake(hidden: Tensor, hidden_scales: Tensor | None, topk_ids: Tensor, num_experts: int,
                              use_ue8m0: bool, zero_padding: bool) -> tuple[Tensor, ...]:
    return _contiguous_layout_fake(hidden, topk_ids, num_experts)


def _deepep_normal_to_contiguous(recv_x: Tensor, recv_x_scales: Tensor | None, recv_topk_idx: Tensor,
                                 num_local_experts: int, use_ue8m0: bool
                                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(route_contiguous("deepep_normal_to_contiguous", _rows(recv_x, recv_x_scales), recv_topk_idx,
                                  num_local_experts, use_ue8m0,
                                  names=("recv_x", "recv_topk_idx", "num_local_experts")))


def _deepep_normal_to_contiguous_fake(recv_x: Tensor, recv_x_scales: Tensor | None, recv_topk_idx: Tensor,
                                      num_local_experts: int, use_ue8m0: bool) -> tuple[Tensor, ...]:
    return _contiguous_layout_fake(recv_x, recv_topk_idx, num_local_experts)


def _route_to_masked(hidden: Tensor, hidden_scales: Tensor | None, topk_ids: Tensor, num_experts: int, max_m: int,
                     use_ue8m0: bool, zero_padding: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    # Returns MaskedLayout's fields: a, sfa, masked_m, inverse, overflow.
    return tuple(route_masked(_rows(hidden, hidden_scales), topk_ids, num_experts, max_m, use_ue8m0, zero_padding))


def _route_to_masked_fake(hidden: Tensor, hidden_scales: Tensor | None, topk_ids: Tensor, num_experts: int,
                          max_m: int, use_ue8m0: bool, zero_padding: bool) -> tuple[Tensor, ...]:
    (num_tokens, h), top_k, device = hidden.shape, topk_ids.shape[1], hidden.device
    return (torch.empty(num_experts, max_m, h, dtype=torch.float8_e4m3fn, device=device),
            _mn_major_scales(num_experts, max_m, h // 128, device),
            torch.empty(num_experts, dtype=torch.int32, device=device),
            torch.empty(num_tokens, top_k, dtype=torch.int32, device=device),
            torch.empty(num_experts, dtype=torch.int32, device=device))


def _silu_and_mul_to_fp8_contiguous(x: Tensor, grouped_layout: Tensor, use_psum_layout: bool, use_ue8m0: bool,
                                    zero_padding: bool) -> tuple[Tensor, Tensor]:
    return silu_contiguous(x, grouped_layout, use_psum_layout, use_ue8m0, zero_padding)


def _silu_and_mul_to_fp8_contiguous_fake(x: Tensor, grouped_layout: Tensor, use_psum_layout: bool, use_ue8m0: bool,
                                         zero_padding: bool) -> tuple[Tensor, Tensor]:
    rows, inter = x.shape[0], x.shape[1] // 2
    return (torch.empty(rows, inter, dtype=torch.float8_e4m3fn, device=x.device),
            _mn_major_scales(1, rows, inter // 128, x.device)[0])


def _silu_and_mul_to_fp8_masked(x: Tensor, masked_m: Tensor, use_ue8m0: bool, zero_padding: bool
                                ) -> tuple[Tensor, Tensor]:
    return silu_masked(x, masked_m, use_ue8m0, zero_padding)


def _silu_and_mul_to_fp8_masked_fake(x: Tensor, masked_m: Tensor, use_ue8m0: bool, zero_padding: bool
                                     ) -> tuple[Tensor, Tensor]:
    experts, max_m, inter = x.shape[0], x.shape[1], x.shape[2] // 2
    return (torch.empty(experts, max_m, inter, dtype=torch.float8_e4m3fn, device=x.device),
            _mn_major_scales(experts, max_m, inter // 128, x.device))


def _unpermute_reduce_contiguous(y: Tensor, inverse: Tensor, topk_weights: Tensor) -> Tensor:
    return reduce_contiguous("unpermute_reduce_contiguous", y, inverse, topk_weights, "topk_weights")


def _unpermute_reduce_masked(y: Tensor, inverse: Tensor, topk_weights: Tensor) -> Tensor:
    return reduce_masked(y, inverse, topk_weights)


def _deepep_normal_reduce(y: Tensor, inverse: Tensor, recv_topk_weights: Tensor) -> Tensor:
    return reduce_contiguous("deepep_normal_reduce", y, inverse, recv_topk_weights, "recv_topk_weights")


def _reduce_fake(y: Tensor, inverse: Tensor, weights: Tensor) -> Tensor:
    # bfloat16 [T, H], one row per token of the inverse map.
    return torch.empty(inverse.shape[0], y.shape[-1], dtype=torch.bfloat16, device=y.device)


def _register_layout() -> None:
    for impl, fake in ((_route_to_contiguous, _route_to_contiguous_fake),
                       (_route_to_masked, _route_to_masked_fake),
                       (_deepep_normal_to_contiguous, _deepep_normal_to_contiguous_fake),
                       (_silu_and_mul_to_fp8_contiguous, _silu_and_mul_to_fp8_contiguous_fake),
                       (_silu_and_mul_to_fp8_masked, _silu_and_mul_to_fp8_masked_fake),
                       (_unpermute_reduce_contiguous, _reduce_fake),
                       (_unpermute_reduce_masked, _reduce_fake),
                       (_deepep_normal_reduce, _reduce_fake)):
        _define(impl.__name__.lstrip("_"), impl, fake)


# ---- the fused MoE layer ---------------------------------------------------------------------------------


def _fused_moe(hidden: Tensor, w13: Tensor, w13_scale: Tensor, w2: Tensor, w2_scale: Tensor, topk_ids: Tensor,
               topk_weights: Tensor, mode: str, max_m: int | None, routed_scaling_factor: float,
               shared_w13: Tensor | None, shared_w13_scale: Tensor | None, shared_w2: Tensor | None,
               shared_w2_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    # Returns (bfloat16 [T, H], int32 [E] overflow, zeros on the contiguous path); fused_moe drops the
    # overflow unless asked for it.
    shared = (shared_w13, shared_w13_scale, shared_w2, shared_w2_scale)
    shared_expert = None if all(t is None for t in shared) else SharedExpert(*shared)
    out, overflow = fused_moe_layer(hidden, w13, w13_scale, w2, w2_scale, topk_ids, topk_weights, mode, max_m,
                                    routed_scaling_factor, shared_expert)
    return out, counted_overflow(overflow, w13.shape[0], hidden.device)


def _fused_moe_fake(hidden: Tensor, w13: Tensor, w13_scale: Tensor, w2: Tensor, w2_scale: Tensor, topk_ids: Tensor,
                    topk_weights: Tensor, mode: str, max_m: int | None, routed_scaling_factor: float,
                    *shared: Tensor | None) -> tuple[Tensor, Tensor]:
    return (torch.empty(hidden.shape, dtype=torch.bfloat16, device=hidden.device),
            torch.empty(w13.shape[0], dtype=torch.int32, device=hidden.device))


def _fused_moe_bf16(hidden: Tensor, w13: Tensor, w2: Tensor, topk_ids: Tensor, topk_weights: Tensor, mode: str,
                    max_m: int | None, routed_scaling_factor: float) -> tuple[Tensor, Tensor]:
    # As _fused_moe: the overflow always comes back (zeros on the contiguous path).
    out, overflow = fused_moe_bf16_layer(hidden, w13, w2, topk_ids, topk_weights, mode, max_m,
                                         routed_scaling_factor)
    return out, counted_overflow(overflow, w13.shape[0], hidden.device)


def _fused_moe_bf16_fake(hidden: Tensor, w13: Tensor, w2: Tensor, topk_ids: Tensor, topk_weights: Tensor, mode: str,
                         max_m: int | None, routed_scaling_factor: float) -> tuple[Tensor, Tensor]:
    return (torch.empty(hidden.shape, dtype=torch.bfloat16, device=hidden.device),
            torch.empty(w13.shape[0], dtype=torch.int32, device=hidden.device))


def _register_moe() -> None:
    _define("fused_moe", _fused_moe, _fused_moe_fake)
    _define("fused_moe_bf16", _fused_moe_bf16, _fused_moe_bf16_fake)
