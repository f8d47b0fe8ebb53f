"""Device dispatch: CPU runs the reference, meta does nothing, CUDA checks the architecture and then
needs a registered kernel. There is no GPU here: only the CUDA device's architecture is simulated
(``dg_moe.device._device_properties``); the dispatch code itself runs unmodified."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

import dg_moe.device as device
import dg_moe.ops as ops
import dg_moe.reference as R
from dg_moe import kernels
from dg_moe.errors import KernelNotAvailableError, UnsupportedArchitectureError
from dg_moe.kernels.sm90_bf16_gemm import launcher as bf16_launcher
from dg_moe.kernels.sm90_fp8_gemm import launcher as gemm_launcher
from dg_moe.kernels.sm90_fp8_wgrad import launcher as wgrad_launcher
from dg_moe.ops import _memo, dispatch
from dg_moe.reference.common import RECIPE_1D1D, RECIPE_1D2D

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def gpu_arch(monkeypatch):
    """Make ``cuda:0`` report the given (major, minor) and name."""

    def set_arch(major: int, minor: int, name: str) -> None:
        props = SimpleNamespace(major=major, minor=minor, name=name, multi_processor_count=132)
        monkeypatch.setattr(device, "_device_properties", lambda index: props)

    return set_arch


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.mark.parametrize("major,minor,name", [(8, 0, "NVIDIA A100-SXM4-80GB"), (10, 0, "NVIDIA B200"),
                                              (8, 9, "NVIDIA L40S"), (12, 0, "NVIDIA RTX PRO 6000")])
def test_non_sm90_gpu_is_refused_with_its_architecture(gpu_arch, major, minor, name):
    gpu_arch(major, minor, name)
    reference = Recorder()
    with pytest.raises(UnsupportedArchitectureError) as info:
        dispatch.run_op("fp8_gemm_nt", CUDA0, reference, 1, 2)
    msg = str(info.value)
    assert "fp8_gemm_nt" in msg and name in msg and f"sm_{major}{minor}" in msg and "SM90" in msg
    assert reference.calls == []


def test_sm90_without_kernel_raises_kernel_not_available(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    reference = Recorder()
    with pytest.raises(KernelNotAvailableError) as info:
        dispatch.run_op("fp8_gemm_tt", CUDA0, reference, 1)
    assert str(info.value) == (
        "fp8_gemm_tt: the SM90 kernel is not available yet in this version of dg_moe; "
        "run on CPU tensors for the reference implementation"
    )
    assert isinstance(info.value, NotImplementedError)
    assert reference.calls == []


def test_sm90_runs_the_registered_kernel(gpu_arch, monkeypatch):
    gpu_arch(9, 0, "NVIDIA H200")
    # An empty table: the BF16 family registers bf16_gemm_nt itself, and unregistering must not drop that.
    monkeypatch.setattr(dispatch, "_KERNELS", {})
    kernel, reference = Recorder(), Recorder()
    dispatch.register_kernel("bf16_gemm_nt", kernel)
    try:
        assert dispatch.registered_kernel("bf16_gemm_nt") is kernel
        dispatch.run_op("bf16_gemm_nt", CUDA0, reference, "a", "b", c=None)
        dispatch.run_op("bf16_gemm_nt", CUDA0, reference, "a", "b", empty=True)
    finally:
        dispatch.unregister_kernel("bf16_gemm_nt")
    assert kernel.calls == [(("a", "b"), {"c": None})]  # the empty call skipped the kernel
    assert reference.calls == []
    assert dispatch.registered_kernel("bf16_gemm_nt") is None


def test_sm90_empty_problem_needs_no_kernel(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    dispatch.run_op("fp8_gemm_nt", CUDA0, Recorder(), empty=True)  # no KernelNotAvailableError


def test_cpu_runs_reference_and_meta_runs_nothing():
    reference = Recorder()
    dispatch.run_op("fp8_gemm_nt", torch.device("cpu"), reference, 1, x=2)
    dispatch.run_op("fp8_gemm_nt", torch.device("meta"), reference, 3)
    assert reference.calls == [((1,), {"x": 2})]


def _fp8_inputs(device_, m=3, n=130, k=256):
    torch.manual_seed(0)
    a = R.quantize_blockwise(torch.randn(m, k), 1, 128)
    b = R.quantize_blockwise(torch.randn(n, k), 128, 128)
    return (a[0].to(device_), a[1].to(device_)), (b[0].to(device_), b[1].to(device_))


def test_public_ops_validate_then_skip_on_meta():
    a, b = _fp8_inputs("meta")
    d = torch.empty(3, 130, dtype=torch.bfloat16, device="meta")
    ops.fp8_gemm_nt(a, b, d)  # shape propagation only: validated, nothing computed
    with pytest.raises(ValueError, match="sfb"):
        ops.fp8_gemm_nt(a, (b[0], b[1][:1]), d)


def test_public_op_on_cpu_is_the_reference_writer():
    a, b = _fp8_inputs("cpu")
    d_op = torch.full((3, 130), float("nan"), dtype=torch.bfloat16)
    d_ref = d_op.clone()
    ops.fp8_gemm_nt(a, b, d_op)
    R.fp8_gemm_nt(a, b, d_ref, recipe=(1, 128, 128))
    assert torch.equal(d_op, d_ref)


def test_sm90_zero_k_fills_d_without_a_kernel(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    d = torch.full((2, 3), float("nan"))
    c = torch.randn(2, 3)
    dispatch.run_op("fp8_gemm_nt", CUDA0, Recorder(), trivial=dispatch.no_products(d, c))
    assert torch.equal(d, c)
    dispatch.run_op("fp8_gemm_nt", CUDA0, Recorder(), trivial=dispatch.no_products(d, None))
    assert torch.equal(d, torch.zeros(2, 3))
    dispatch.no_products(c, c)()  # d aliasing c: nothing to do


def test_a_recipes_kernel_takes_its_calls_and_the_default_the_rest(gpu_arch, monkeypatch):
    """A kernel registered for a recipe serves the calls of that recipe, with its own planner; calls of
    other recipes, or none, go to the default; without either a call raises KernelNotAvailableError."""
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(dispatch, "_KERNELS", {})
    monkeypatch.setattr(_memo, "_plans", {})
    default, wgrad, reference = Recorder(), Recorder(), Recorder()
    default_plan, wgrad_plan = (lambda *tensors: True), (lambda *tensors: True)
    dispatch.register_kernel("fp8_gemm_nt", wgrad, lambda *args: wgrad_plan, recipe=RECIPE_1D1D)
    with pytest.raises(KernelNotAvailableError, match="fp8_gemm_nt: the SM90 kernel is not available"):
        dispatch.run_op("fp8_gemm_nt", CUDA0, reference, "bf16 call", recipe=RECIPE_1D2D)
    dispatch.register_kernel("fp8_gemm_nt", default, lambda *args: default_plan)
    assert dispatch.registered_kernel("fp8_gemm_nt", RECIPE_1D1D) is wgrad
    assert dispatch.registered_kernel("fp8_gemm_nt", RECIPE_1D2D) is default
    assert dispatch.registered_kernel("fp8_gemm_nt") is default

    dispatch.run_op("fp8_gemm_nt", CUDA0, reference, "fp32 call", recipe=RECIPE_1D1D, plan_key=("fp32",))
    dispatch.run_op("fp8_gemm_nt", CUDA0, reference, "bf16 call", recipe=RECIPE_1D2D, plan_key=("bf16",))
    dispatch.run_op("fp8_gemm_nt", CUDA0, reference, "call without a recipe")
    assert wgrad.calls == [(("fp32 call",), {})]  # the recipe is dispatch's, not passed on
    assert default.calls == [(("bf16 call",), {}), (("call without a recipe",), {})]
    assert _memo.plan(("fp32",)) is wgrad_plan and _memo.plan(("bf16",)) is default_plan
    assert reference.calls == []

    dispatch.unregister_kernel("fp8_gemm_nt", RECIPE_1D1D)
    assert dispatch.registered_kernel("fp8_gemm_nt", RECIPE_1D1D) is default
    dispatch.unregister_kernel("fp8_gemm_nt")
    assert dispatch.registered_kernel("fp8_gemm_nt", RECIPE_1D1D) is None


@pytest.mark.parametrize("out_dtype,gran_n,recipe", [(torch.bfloat16, 128, RECIPE_1D2D),
                                                     (torch.float32, 1, RECIPE_1D1D)])
def test_the_dense_op_dispatches_on_the_recipe_it_resolved(monkeypatch, out_dtype, gran_n, recipe):
    """``fp8_gemm_nt`` without a recipe infers it from d's dtype and hands it to run_op for the kernel choice."""
    from dg_moe.ops import dense

    seen = []
    monkeypatch.setattr(dense, "run_op", lambda *args, **kwargs: seen.append(kwargs["recipe"]))
    a = R.quantize_blockwise(torch.randn(3, 256), 1, 128)
    b = R.quantize_blockwise(torch.randn(130, 256), gran_n, 128)
    ops.fp8_gemm_nt(a, b, torch.empty(3, 130, dtype=out_dtype))
    assert seen == [recipe]


def test_the_bf16_ops_dispatch_without_a_recipe(monkeypatch):
    """The BF16 ops have no FP8 recipe: they call run_op without one, so they take the op's default kernel."""
    from dg_moe.ops import contiguous, dense, masked

    seen = []
    for module in (dense, contiguous, masked):
        monkeypatch.setattr(module, "run_op", lambda op, *args, **kwargs: seen.append((op, kwargs.get("recipe"))))
    a, b = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(2, 16, 64, dtype=torch.bfloat16)
    ops.bf16_gemm_nt(a, b[0], torch.empty(4, 16, dtype=torch.bfloat16))
    rows = torch.randn(256, 64, dtype=torch.bfloat16)  # each group's rows fill a 128-row tile
    ops.m_grouped_bf16_gemm_nt_contiguous(rows, b, torch.empty(256, 16, dtype=torch.bfloat16),
                                          torch.arange(2, dtype=torch.int32).repeat_interleave(128))
    ops.m_grouped_bf16_gemm_nt_masked(a.view(2, 2, 64), b, torch.empty(2, 2, 16, dtype=torch.bfloat16),
                                      torch.tensor([2, 1], dtype=torch.int32), 2)
    assert seen == [("bf16_gemm_nt", None), ("m_grouped_bf16_gemm_nt_contiguous", None),
                    ("m_grouped_bf16_gemm_nt_masked", None)]


# (op, the recipe its public function resolves; None for the BF16 ops, which have none) of every op a
# kernel family registers.
_ROUTES = [("fp8_gemm_nt", RECIPE_1D2D), ("fp8_gemm_nt", RECIPE_1D1D),
           ("m_grouped_fp8_gemm_nt_contiguous", RECIPE_1D2D), ("m_grouped_fp8_gemm_nt_masked", RECIPE_1D2D),
           ("k_grouped_fp8_gemm_tn_contiguous", RECIPE_1D1D), ("bf16_gemm_nt", None),
           ("m_grouped_bf16_gemm_nt_contiguous", None), ("m_grouped_bf16_gemm_nt_masked", None)]
_FAMILY_KERNELS = {
    "sm90_fp8_gemm": (gemm_launcher, ("fp8_gemm_nt_kernel", "m_grouped_fp8_gemm_nt_contiguous_kernel",
                                      "m_grouped_fp8_gemm_nt_masked_kernel")),
    "sm90_fp8_wgrad": (wgrad_launcher, ("fp8_gemm_nt_kernel", "k_grouped_fp8_gemm_tn_contiguous_kernel")),
    "sm90_bf16_gemm": (bf16_launcher, ("bf16_gemm_nt_kernel", "m_grouped_bf16_gemm_nt_contiguous_kernel",
                                       "m_grouped_bf16_gemm_nt_masked_kernel")),
}


def _routing(register_in_order) -> dict[tuple, list[str]]:
    """Which family's kernel runs each route's call on a simulated SM90 after ``register_in_order()``
    registered the families (their kernels replaced by recorders) into an empty dispatch table."""
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dispatch, "_KERNELS", {})
        for family, (module, names) in _FAMILY_KERNELS.items():
            for name in names:
                patch.setattr(module, name, lambda *args, tag=f"{family}.{name}": calls.append(tag))
        register_in_order()
        routing = {}
        for op, recipe in _ROUTES:
            calls.clear()
            dispatch.run_op(op, CUDA0, Recorder(), recipe=recipe)
            routing[(op, recipe)] = list(calls)
    return routing


def test_kernel_families_route_the_same_in_any_registration_order(gpu_arch):
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    before = dict(dispatch._KERNELS)

    def in_order(*launchers):
        def register():
            for launcher in launchers:
                launcher.register()
        return register

    routing = _routing(kernels.register_all)
    for order in itertools.permutations((gemm_launcher, wgrad_launcher, bf16_launcher)):
        assert _routing(in_order(*order)) == routing, [launcher.__name__ for launcher in order]
    assert routing == {
        ("fp8_gemm_nt", RECIPE_1D2D): ["sm90_fp8_gemm.fp8_gemm_nt_kernel"],
        ("fp8_gemm_nt", RECIPE_1D1D): ["sm90_fp8_wgrad.fp8_gemm_nt_kernel"],
        ("m_grouped_fp8_gemm_nt_contiguous", RECIPE_1D2D): ["sm90_fp8_gemm.m_grouped_fp8_gemm_nt_contiguous_kernel"],
        ("m_grouped_fp8_gemm_nt_masked", RECIPE_1D2D): ["sm90_fp8_gemm.m_grouped_fp8_gemm_nt_masked_kernel"],
        ("k_grouped_fp8_gemm_tn_contiguous", RECIPE_1D1D): ["sm90_fp8_wgrad.k_grouped_fp8_gemm_tn_contiguous_kernel"],
        ("bf16_gemm_nt", None): ["sm90_bf16_gemm.bf16_gemm_nt_kernel"],
        ("m_grouped_bf16_gemm_nt_contiguous", None): ["sm90_bf16_gemm.m_grouped_bf16_gemm_nt_contiguous_kernel"],
        ("m_grouped_bf16_gemm_nt_masked", None): ["sm90_bf16_gemm.m_grouped_bf16_gemm_nt_masked_kernel"],
    }
    assert dispatch._KERNELS == before  # the real registrations are back


def test_a_recipe_no_family_serves_gets_the_default_kernels_error(gpu_arch, monkeypatch):
    """Without the weight-gradient family, an fp8_gemm_nt call with recipe (1, 1, 128) reaches the default
    (1, 128, 128) kernel, which refuses it before any launch."""
    gpu_arch(9, 0, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(dispatch, "_KERNELS", {})
    gemm_launcher.register()
    a, b = (torch.empty(0), torch.empty(0)), (torch.empty(0), torch.empty(0))
    with pytest.raises(KernelNotAvailableError, match=r"does not support recipe \(1, 1, 128\)"):
        dispatch.run_op("fp8_gemm_nt", CUDA0, Recorder(), a, b, torch.empty(0), None, RECIPE_1D1D, "nk", False,
                        recipe=RECIPE_1D1D)
