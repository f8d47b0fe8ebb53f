"""The NVRTC backend's launcher on an SM90 GPU: every GEMM layout gives, bit for bit, what the nvcc-built
host entry gives, writes every valid element of a NaN-poisoned output and nothing else, replays from a
CUDA graph, and reports driver errors as CudaError naming the entry point."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

import dg_moe
from dg_moe import layout, reference
from dg_moe.errors import CudaError
from dg_moe.kernels.sm90_fp8_gemm import launcher
from dg_moe.ops import _memo

from .gpu_inputs import assert_matches, fp8_activations, fp8_weights
from .test_sm90_fp8_gemm_gpu import _contiguous_inputs, _poisoned, _random_counts

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_sm90(sm90: None) -> None:
    pass


@pytest.fixture
def under(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable[[], torch.Tensor]], torch.Tensor]:
    """``under(backend, run)``: ``run()`` with DG_MOE_JIT_BACKEND set and the launcher's bound entries
    and the ops' launch plans forgotten (each holds the backend it was made under)."""

    def run_under(backend: str, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        monkeypatch.setenv("DG_MOE_JIT_BACKEND", backend)
        monkeypatch.setattr(launcher, "_entries", {})
        monkeypatch.setattr(_memo, "_plans", {})
        return run()

    return run_under


def _same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return torch.equal(x.view(torch.int16), y.view(torch.int16))


def _both_backends(under, run: Callable[[], torch.Tensor], ref: torch.Tensor) -> None:
    """Two calls per backend (the second through the op's launch plan), each into a fresh NaN-filled
    output: all four outputs bitwise equal, and right against the reference."""
    outs = {backend: [under(backend, run) for _ in range(2)] for backend in ("nvcc", "nvrtc")}
    assert_matches(outs["nvrtc"][0], ref)
    for backend, (first, second) in outs.items():
        assert _same_bits(first, second), f"{backend}: a repeated call differs"
    assert _same_bits(outs["nvcc"][0], outs["nvrtc"][0]), "nvrtc differs from nvcc"


def _kernel_layout(x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    # Scales already MN-major and TMA-aligned: the ops then plan their launches (no copy per call).
    return x[0], layout.get_mn_major_tma_aligned_tensor(x[1])


@pytest.mark.parametrize("m,n,k", [(129, 2112, 7168), (4096, 4096, 7168)])  # 64-row tiles; 256-row pairs
def test_normal(under, m, n, k, cuda_gen):
    a = _kernel_layout(fp8_activations(m, k, cuda_gen))
    b = fp8_weights(1, n, k, cuda_gen)
    b = (b[0][0], b[1][0])

    def run() -> torch.Tensor:
        d = _poisoned(m, n)
        dg_moe.fp8_gemm_nt(a, b, d)
        return d

    _both_backends(under, run, reference.ref_fp8_gemm_nt(a, b))


@pytest.mark.parametrize("psum", [False, True], ids=["per-row", "psum"])
@pytest.mark.parametrize("groups,n,k,rows", [(4, 4096, 7168, 1024), (8, 7168, 2048, 300)])  # B shared; not
def test_contiguous(under, psum, groups, n, k, rows, cuda_gen):
    counts = _random_counts(groups, rows * groups, cuda_gen)
    a, per_row, ends = _contiguous_inputs(counts, k, cuda_gen)
    a = _kernel_layout(a)
    b = fp8_weights(groups, n, k, cuda_gen)

    def run() -> torch.Tensor:
        d = _poisoned(a[0].shape[0], n)
        dg_moe.m_grouped_fp8_gemm_nt_contiguous(a, b, d, ends if psum else per_row, use_psum_layout=psum)
        return d

    _both_backends(under, run, reference.ref_m_grouped_fp8_gemm_nt_contiguous(a, b, per_row))


def _masked_inputs(groups: int, max_m: int, k: int, cuda_gen: torch.Generator):
    x = fp8_activations(groups * max_m, k, cuda_gen)
    a = (x[0].view(groups, max_m, k), layout.get_mn_major_tma_aligned_tensor(x[1].view(groups, max_m, k // 128)))
    masked_m = torch.randint(0, max_m + 1, (groups,), device="cuda", generator=cuda_gen, dtype=torch.int32)
    masked_m[:3] = torch.tensor([0, 1, max_m], dtype=torch.int32, device="cuda")
    return a, masked_m


@pytest.mark.parametrize("groups,max_m,n,k,expected_m", [(8, 129, 4096, 7168, 64), (16, 32, 7168, 2048, 16)])
def test_masked(under, groups, max_m, n, k, expected_m, cuda_gen):
    a, masked_m = _masked_inputs(groups, max_m, k, cuda_gen)
    b = fp8_weights(groups, n, k, cuda_gen)

    def run() -> torch.Tensor:
        d = _poisoned(groups, max_m, n)
        dg_moe.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m=expected_m)
        return d

    _both_backends(under, run, reference.ref_m_grouped_fp8_gemm_nt_masked(a, b, masked_m))


def test_nvrtc_cuda_graph_replays_with_new_contents(under, cuda_gen):
    groups, max_m, n, k = 8, 96, 4096, 7168
    a, masked_m = _masked_inputs(groups, max_m, k, cuda_gen)
    b = fp8_weights(groups, n, k, cuda_gen)
    d = _poisoned(groups, max_m, n)

    def call() -> None:
        dg_moe.m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m=48)

    def captured() -> torch.cuda.CUDAGraph:
        call()  # build, load and set up the device outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        return graph

    graph = under("nvrtc", captured)
    for _ in range(3):
        fresh, fresh_m = _masked_inputs(groups, max_m, k, cuda_gen)
        a[0].copy_(fresh[0])
        a[1].copy_(fresh[1])
        masked_m.copy_(fresh_m)
        d.fill_(float("nan"))
        graph.replay()
        replayed = d.clone()
        d.fill_(float("nan"))
        under("nvcc", call)
        assert_matches(replayed, reference.ref_m_grouped_fp8_gemm_nt_masked(a, b, masked_m))
        assert _same_bits(replayed, d), "the nvrtc graph's replay differs from nvcc's eager call"


def test_nvrtc_launch_from_new_threads(under, cuda_gen):
    """A thread that made no CUDA call yet has no current context: the launcher makes the device's primary
    context current, as the runtime would, on a first launch (prepared in that thread) and on a repeated
    one (prepared by the thread before, so only cuLaunchKernelEx runs)."""
    m, n, k = 64, 576, 2048
    a = _kernel_layout(fp8_activations(m, k, cuda_gen))
    b = fp8_weights(1, n, k, cuda_gen)
    b = (b[0][0], b[1][0])
    ref = reference.ref_fp8_gemm_nt(a, b)
    d = _poisoned(m, n)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            dg_moe.fp8_gemm_nt(a, b, d)
            torch.cuda.current_stream().synchronize()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def in_threads() -> None:
        for _ in range(2):
            d.fill_(float("nan"))
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
            assert not errors, errors
            assert_matches(d, ref)

    under("nvrtc", in_threads)


def test_nvrtc_driver_errors_name_the_entry_point(under, cuda_gen):
    from dg_moe.kernels.sm90_fp8_gemm import GemmType, config_for

    m, n, k = 64, 576, 2048
    a = fp8_activations(m, k, cuda_gen)
    b = fp8_weights(1, n, k, cuda_gen)
    d = _poisoned(m, n)
    config = config_for(GemmType.NORMAL, m, n, k, 1, 132)
    entry = under("nvrtc", lambda: launcher.bind(GemmType.NORMAL, config, n, k))
    pointers = [t.data_ptr() for t in (a[0], a[1], b[0], b[1], d)]
    pointers[0] += 1  # A's rows must start 16-byte aligned: cuTensorMapEncodeTiled refuses this base
    with pytest.raises(CudaError, match="cuTensorMapEncodeTiled failed with CUDA error 1"):
        entry(*pointers, None, m, 1, m, 132, torch.cuda.current_stream().cuda_stream)
