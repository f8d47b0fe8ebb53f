"""Layout utilities, bit-exact against direct per-block PyTorch formulations (values and strides)."""

import pytest
import torch

from dg_moe import layout
from dg_moe.layout.math import ceil_div

from .host_transfers import HostTransfers


def _rand(*shape, seed, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * torch.rand(shape[-1], generator=g) * 10).to(dtype)


def _block_quant(block: torch.Tensor, use_ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    amax = max(block.abs().float().max().item(), 1e-4)
    sf = torch.tensor(amax / 448.0, dtype=torch.float32)
    if use_ue8m0:
        sf = torch.tensor(2.0 ** torch.ceil(torch.log2(sf.double())).item(), dtype=torch.float32)
    return (block.float() * (1.0 / sf)).to(torch.float8_e4m3fn), sf


@pytest.mark.parametrize("m,k", [(1, 128), (7, 200), (65, 1024), (129, 896)])
@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_per_token_cast_matches_blockwise_loop(m, k, use_ue8m0):
    x = _rand(m, k, seed=m * k)
    x_fp8, sf = layout.per_token_cast_to_fp8(x, use_ue8m0=use_ue8m0)
    assert x_fp8.dtype == torch.float8_e4m3fn and x_fp8.shape == (m, k) and x_fp8.is_contiguous()
    assert sf.dtype == torch.float32 and sf.shape == (m, ceil_div(k, 128))
    for i in range(m):
        for j in range(ceil_div(k, 128)):
            q, s = _block_quant(x[i, j * 128:(j + 1) * 128], use_ue8m0)
            assert sf[i, j].item() == s.item()
            assert torch.equal(x_fp8[i, j * 128:(j + 1) * 128].view(torch.uint8), q.view(torch.uint8))


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, float("-inf")])
    x[-1, -3:] = torch.tensor([-0.0, 0.0, 1e-30])
    return x


@pytest.mark.parametrize("k", [128, 1024, 200, 1000])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_per_token_cast_skips_the_padded_copy_bit_for_bit(k, dtype, use_ue8m0):
    """A contiguous x of whole 128-column blocks is quantised in place, without the zero-padded copy the other
    inputs go through: both give the same bytes. K % 128 == 0: x against a column slice of a wider buffer
    (not contiguous, so copied); K % 128 != 0: x (copied) against x zero-padded to whole blocks (in place)."""
    x = _with_specials(_rand(33, k, seed=k + 7, dtype=dtype))
    padded_k = ceil_div(k, 128) * 128
    if k == padded_k:
        other = torch.full((33, k + 128), 3.0, dtype=dtype)
        other[:, :k] = x
        other = other[:, :k]
        assert not other.is_contiguous()
    else:
        other = torch.zeros(33, padded_k, dtype=dtype)
        other[:, :k] = x
    got, want = layout.per_token_cast_to_fp8(x, use_ue8m0=use_ue8m0), layout.per_token_cast_to_fp8(other, use_ue8m0)
    assert got[0].is_contiguous() and want[0].is_contiguous() and got[1].is_contiguous()
    assert torch.equal(got[0].view(torch.uint8), want[0][:, :k].view(torch.uint8))
    assert torch.equal(got[1].view(torch.int32), want[1].view(torch.int32))


@pytest.mark.parametrize("m,k", [(1, 256), (3, 1024), (4, 200), (65, 896)])
@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_per_token_cast_mn_major_scales_are_the_same_bits_in_the_gemm_layout(m, k, use_ue8m0):
    """mn_major_scales (fused_moe's shared-expert tokens): the same codes and scale bits as the row-major
    default, in the layout get_mn_major_tma_aligned_tensor gives, so the GEMM's conversion is a no-op."""
    from dg_moe.layout.quant import per_token_cast_to_fp8_unchecked
    from dg_moe.layout.scale_factors import is_mn_major_tma_aligned, sf_in_kernel_layout

    x = _with_specials(_rand(m, k, seed=m + k))
    want_x, want_sf = per_token_cast_to_fp8_unchecked(x, use_ue8m0)
    got_x, got_sf = per_token_cast_to_fp8_unchecked(x, use_ue8m0, mn_major_scales=True)
    assert torch.equal(got_x.view(torch.uint8), want_x.view(torch.uint8))
    assert torch.equal(got_sf.view(torch.int32), want_sf.view(torch.int32))
    converted = layout.get_mn_major_tma_aligned_tensor(want_sf)
    assert got_sf.stride() == converted.stride()
    assert got_sf.untyped_storage().nbytes() == converted.untyped_storage().nbytes()
    assert is_mn_major_tma_aligned(got_sf)
    assert sf_in_kernel_layout(got_sf, True, got_sf.shape[1]) is got_sf


@pytest.mark.parametrize("n,k", [(128, 128), (300, 700), (576, 7168)])
@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_per_block_cast_matches_blockwise_loop(n, k, use_ue8m0):
    x = _rand(n, k, seed=n + k)
    x_fp8, sf = layout.per_block_cast_to_fp8(x, use_ue8m0=use_ue8m0)
    assert x_fp8.shape == (n, k) and sf.shape == (ceil_div(n, 128), ceil_div(k, 128))
    for bi in range(sf.size(0)):
        for bj in range(sf.size(1)):
            block = x[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
            q, s = _block_quant(block, use_ue8m0)
            assert sf[bi, bj].item() == s.item()
            got = x_fp8[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
            assert torch.equal(got.view(torch.uint8), q.view(torch.uint8))


@pytest.mark.parametrize("use_ue8m0", [False, True])
def test_per_channel_cast_matches_columnwise_loop(use_ue8m0):
    x = _rand(384, 72, seed=3)
    x_fp8, sf = layout.per_channel_cast_to_fp8(x, use_ue8m0=use_ue8m0)
    assert sf.shape == (3, 72)
    for bk in range(3):
        for col in range(72):
            q, s = _block_quant(x[bk * 128:(bk + 1) * 128, col], use_ue8m0)
            assert sf[bk, col].item() == s.item()
            assert torch.equal(x_fp8[bk * 128:(bk + 1) * 128, col].view(torch.uint8), q.view(torch.uint8))


def test_per_channel_cast_rejects_unaligned_k():
    with pytest.raises(ValueError, match="multiple of gran_k"):
        layout.per_channel_cast_to_fp8(torch.randn(100, 8))


def test_casts_reject_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        layout.per_token_cast_to_fp8(torch.randn(2, 3, 128))
    with pytest.raises(TypeError, match="bf16, fp16 or fp32"):
        layout.per_block_cast_to_fp8(torch.randn(4, 128).to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="use_ue8m0"):
        layout.per_token_cast_to_fp8(torch.randn(4, 128), use_ue8m0=False, use_packed_ue8m0=True)


def test_per_token_packed_ue8m0_roundtrips_to_fp32_scales():
    x = _rand(9, 640, seed=11)
    _, sf = layout.per_token_cast_to_fp8(x, use_ue8m0=True)
    _, packed = layout.per_token_cast_to_fp8(x, use_ue8m0=True, use_packed_ue8m0=True)
    assert packed.dtype == torch.int32 and packed.shape == (9, 2)
    assert torch.equal(layout.unpack_ue8m0_from_int(packed)[:, :5], sf)


def test_per_token_packed_ue8m0_reads_no_device_value():
    """Quantising activations on a GPU every step must not wait on the host: the packer's powers-of-two
    check is skipped for scales that are powers of two by construction. Meta tensors stand for CUDA ones."""
    with HostTransfers() as seen:
        x_fp8, packed = layout.per_token_cast_to_fp8(torch.empty(9, 640, dtype=torch.bfloat16, device="meta"),
                                                     use_ue8m0=True, use_packed_ue8m0=True)
    assert seen.calls == []
    assert x_fp8.shape == (9, 640) and packed.dtype == torch.int32 and packed.shape == (9, 2)


@pytest.mark.parametrize("mn", [1, 3, 4, 7, 65, 129, 4096])
def test_tma_aligned_size(mn):
    for element_size in (1, 2, 4):
        aligned = layout.get_tma_aligned_size(mn, element_size)
        assert aligned >= mn and (aligned * element_size) % 16 == 0 and aligned - mn < 16 // element_size
    with pytest.raises(ValueError):
        layout.get_tma_aligned_size(mn, 3)


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (65, 5), (129, 56), (2, 7, 3), (3, 129, 7)])
def test_mn_major_tma_aligned_tensor(shape):
    sf = torch.rand(shape) + 0.5
    out = layout.get_mn_major_tma_aligned_tensor(sf)
    assert torch.equal(out, sf) and out.dtype == torch.float32
    mn, k = shape[-2:]
    aligned = ((mn + 3) // 4) * 4
    expected_strides = (1, aligned) if len(shape) == 2 else (aligned * k, 1, aligned)
    if k == 1:
        assert out.stride()[-2] == 1
    else:
        assert out.stride() == expected_strides
    # Already laid out: returned as is, no copy.
    assert layout.get_mn_major_tma_aligned_tensor(out) is out


def test_mn_major_from_transposed_input():
    sf = torch.rand(5, 200).t()  # [200, 5] with stride (1, 200): MN-major and aligned already
    assert layout.get_mn_major_tma_aligned_tensor(sf) is sf
    odd = torch.rand(5, 201).t()  # stride (1, 201): not 16-byte aligned columns
    out = layout.get_mn_major_tma_aligned_tensor(odd)
    assert out.stride() == (1, 204) and torch.equal(out, odd)


@pytest.mark.parametrize("shape", [(7, 3), (129, 56), (2, 65, 4), (3, 8, 56)])
def test_is_mn_major_tma_aligned_agrees_with_the_conversion(shape):
    from dg_moe.layout.scale_factors import is_mn_major_tma_aligned

    row_major = torch.rand(shape)
    assert not is_mn_major_tma_aligned(row_major)
    converted = layout.get_mn_major_tma_aligned_tensor(row_major)
    assert is_mn_major_tma_aligned(converted)
    # The launch path trusts this check to skip the conversion: it must hold exactly when the
    # conversion would return its input unchanged.
    for sf in (row_major, converted, torch.rand(shape[-1], shape[-2]).t()):
        assert is_mn_major_tma_aligned(sf) == (layout.get_mn_major_tma_aligned_tensor(sf) is sf)
    offset = torch.empty(1 + 2 * converted.untyped_storage().nbytes() // 4)[1:]  # storage offset of one float
    assert not is_mn_major_tma_aligned(offset.as_strided(converted.shape, converted.stride()))
    assert not is_mn_major_tma_aligned(torch.rand(4))


@pytest.mark.parametrize("shape", [(7, 3), (129, 9), (2, 65, 4), (3, 8, 56)])
def test_packed_ue8m0_tensor(shape):
    sf = layout.ceil_to_ue8m0(torch.rand(shape) * 3 + 1e-3)
    packed = layout.get_mn_major_tma_aligned_packed_ue8m0_tensor(sf)
    mn, k = shape[-2:]
    k4 = ceil_div(k, 4)
    assert packed.dtype == torch.int32 and packed.shape == (*shape[:-1], k4)
    aligned = ((mn + 3) // 4) * 4
    assert packed.stride()[-2:] == (1, aligned)
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int32)
    raw = ((packed.unsqueeze(-1) >> shifts) & 0xFF).to(torch.uint8).flatten(-2)
    expected = (sf.view(torch.int32) >> 23).to(torch.uint8)
    assert torch.equal(raw[..., :k], expected)
    assert bool((raw[..., k:] == 127).all())


def test_ue8m0_pack_rejects_non_powers_of_two():
    with pytest.raises(ValueError, match="powers of two"):
        layout.pack_ue8m0_to_int(torch.full((2, 4), 3.0))
    with pytest.raises(ValueError, match="multiple of 4"):
        layout.pack_ue8m0_to_int(torch.ones(2, 3))


def test_ceil_to_ue8m0_is_smallest_power_of_two_not_below():
    x = torch.tensor([1.0, 1.5, 3.0, 4.0, 1e-30, 0.3])
    expected = torch.tensor([1.0, 2.0, 4.0, 4.0, 2.0 ** -99, 0.5])
    assert torch.equal(layout.ceil_to_ue8m0(x), expected)


@pytest.mark.parametrize("m,k", [(7, 896), (129, 512), (4096, 7168)])
def test_transform_sfa_to_mn_major(m, k):
    sfa = torch.rand(m, k // 128) + 0.1
    out = layout.transform_sf_into_required_layout(sfa, m, k, (1, 128, 128), is_sfa=True)
    assert torch.equal(out, sfa) and out.stride() == (1, ((m + 3) // 4) * 4)


def test_transform_sfb_stays_k_major():
    sfb = torch.rand(5, 7)
    out = layout.transform_sf_into_required_layout(sfb, 576, 896, (1, 128, 128), is_sfa=False)
    assert torch.equal(out, sfb) and out.is_contiguous()
    grouped = torch.rand(3, 5, 7).transpose(1, 2).contiguous().transpose(1, 2)
    out = layout.transform_sf_into_required_layout(grouped, 576, 896, (128, 128), num_groups=3)
    assert torch.equal(out, grouped) and out.is_contiguous()


def test_transform_expands_packed_ue8m0_exactly():
    sf = layout.ceil_to_ue8m0(torch.rand(3, 33, 7) + 0.01)
    packed = layout.get_mn_major_tma_aligned_packed_ue8m0_tensor(sf)
    out = layout.transform_sf_into_required_layout(packed, 33, 7 * 128, (1, 128), num_groups=3)
    assert out.dtype == torch.float32 and torch.equal(out, sf)
    assert out.stride() == (36 * 7, 1, 36)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sf=torch.rand(4, 7), mn=4, k=1024, recipe=(1, 128, 128), is_sfa=True), r"expected \(4, 8\)"),
        (dict(sf=torch.rand(4, 8), mn=4, k=1024, recipe=(1, 128, 128)), "is_sfa"),
        (dict(sf=torch.rand(4, 8), mn=4, k=1024, recipe=(1, 128), is_sfa=True), "is_sfa must be None"),
        (dict(sf=torch.rand(4, 8), mn=4, k=1024, recipe=(1, 64)), "granularity"),
        (dict(sf=torch.rand(4, 8).half(), mn=4, k=1024, recipe=(1, 128)), "float32 or packed"),
        (dict(sf=torch.zeros(4, 3, dtype=torch.int32), mn=4, k=1024, recipe=(1, 128)), r"expected \(4, 2\)"),
    ],
)
def test_transform_errors_name_the_problem(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        layout.transform_sf_into_required_layout(**kwargs)


def test_mk_alignment():
    assert layout.get_mk_alignment_for_contiguous_layout() == 128
