"""dg_moe's SM90 FP8 weight-gradient GEMMs beside DeepGEMM's, on DeepSeek-V3 shapes (GPU; --list runs anywhere).

Recipe (1, 1, 128), FP32 d accumulated in place, each library on its SM90 kernel for the same products.

    python3 tools/bench_wgrad.py [--no-deepgemm] [--only dense|k_grouped] [--block-n N] [--share-b]
                                 [--list | --compile-only]

- dense: ``fp8_gemm_nt((a, sfa), (b, sfb), d, c=d, recipe=(1, 1, 128))``, K = tokens; DeepGEMM's
  ``fp8_gemm_nt`` with the same arguments (its SM90 1D1D kernel).
- K-grouped (MoE experts, groups back to back along K): ``k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks,
  sizes, c=d)``; DeepGEMM 2.6.1 runs its ``k_grouped_fp8_gemm_tn_contiguous`` on SM100 only, so on SM90 it
  is timed with ``k_grouped_fp8_gemm_nt_contiguous`` (what DeepGEMM's own test calls there): the same
  products from the same FP8 values and scales, with A and B as one row-major [MN, K_g] block per group.

Each library gets its operands in a layout it reads without a copy, built once outside the timing; the
scale factors MN-major and TMA-aligned, the layout both kernels read (either library would otherwise
transpose them in every timed call).

Times are GPU times (CUDA-graph replays, L2 flushed, interleaved: dg_moe.bench.timing); TFLOPS count
2 * M * N * K summed over the groups. Before timing, each case checks dg_moe's output (written into a
NaN-poisoned d from a separate c) against the float64 reference (global similarity, printed; a K-grouped
case prints its worst group), that accumulating in place gives the same bits, and, where DeepGEMM ran,
bitwise equality of the two libraries' in-place outputs. DG_PRINT_CONFIGS=1 makes DeepGEMM print its
configurations at each shape's first call; dg_moe's choice is the table's last column.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

import dg_moe
from dg_moe import layout, reference
from dg_moe.bench.peer_deepgemm import load_deep_gemm
from dg_moe.bench.timing import describe_error, gpu_times_us
from dg_moe.jit import compile_many
from dg_moe.kernels.sm90_fp8_wgrad import FAMILY, WgradConfig, WgradType, launcher, template_args
from dg_moe.kernels.sm90_fp8_wgrad.heuristic import BLOCK_M, BUILT_BLOCK_NS, max_stages, smem_bytes
from dg_moe.kernels.sm90_fp8_wgrad.variants import DEEPSEEK_V3_DENSE_MN
from dg_moe.layout import ceil_div
from dg_moe.reference.common import MK_ALIGNMENT, RECIPE_1D1D

TOKENS = 4096
"""K of the dense cases: the tokens of one micro-batch."""

# (M, N) of dW (or dW^T, the orientation a framework may ask for): fused q_a/kv_a down-projection (2112 =
# 1536 + 576), q_a, kv_a, o_proj, q_b, the shared expert's gate/up and down; then those of the family's
# DeepSeek-V3 list (dg_moe/kernels/sm90_fp8_wgrad/variants.py) not already here: kv_b and the dense MLP.
_DENSE_MN_FIRST = ((7168, 2112), (1536, 7168), (576, 7168), (7168, 16384), (24576, 1536), (4096, 7168), (7168, 2048))
DENSE_MN = _DENSE_MN_FIRST + tuple(mn for mn in DEEPSEEK_V3_DENSE_MN if mn not in _DENSE_MN_FIRST)

# (groups, M, N, mean K per group, index of the group left empty or None): the experts' gate/up (4096 x 7168)
# and down (7168 x 2048) weight gradients at 4, 8 and 32 local experts; 8 and 4 groups are DeepGEMM's own
# K-grouped test's EP32 and EP64 settings.
K_GROUPED = ((4, 4096, 7168, 8192, None), (4, 7168, 2048, 8192, None), (8, 4096, 7168, 4096, None),
             (8, 7168, 2048, 4096, 3), (32, 4096, 7168, 2048, None), (32, 7168, 2048, 2048, None))

DEFAULT_NUM_SMS = 132
"""SMs assumed by ``--list`` without a GPU (an H100 SXM's; an H200 has as many)."""


@dataclass(frozen=True)
class Case:
    """One GEMM: ``kind`` "dense" (``ks`` = (K,)) or "k_grouped" (``ks`` = K of each group, in order)."""

    kind: str
    m: int
    n: int
    ks: tuple[int, ...]

    @property
    def groups(self) -> int:
        return len(self.ks)

    @property
    def sum_k(self) -> int:
        return sum(self.ks)

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.sum_k

    @property
    def wgrad_type(self) -> WgradType:
        # The K-grouped calls pass the sizes form of the layout: DeepGEMM's SM90 kernel takes no other.
        return WgradType.NORMAL if self.kind == "dense" else WgradType.K_GROUPED

    @property
    def label(self) -> str:
        if self.kind == "dense":
            return f"dense M={self.m} N={self.n} K={self.sum_k}"
        empty = f" ({self.ks.count(0)} empty)" if 0 in self.ks else ""
        return f"k_grouped G={self.groups} M={self.m} N={self.n} sumK={self.sum_k}{empty}"


def group_ks(groups: int, mean_k: int, empty: int | None, seed: int) -> tuple[int, ...]:
    """K of each group: 0.7 to 1.3 times ``mean_k`` (the spread of DeepGEMM's test), rounded up to a multiple
    of 128 (the op's alignment), group ``empty`` 0; the same on every run for one ``seed``."""
    rng = random.Random(seed)
    ks = [layout.align(int(mean_k * rng.uniform(0.7, 1.3)), MK_ALIGNMENT) for _ in range(groups)]
    if empty is not None:
        ks[empty] = 0
    return tuple(ks)


def cases(only: str | None = None) -> list[Case]:
    """The benchmark's cases, dense first; ``only``: "dense" or "k_grouped" keeps that kind alone."""
    found = [Case("dense", m, n, (TOKENS,)) for m, n in DENSE_MN]
    found += [Case("k_grouped", m, n, group_ks(groups, mean_k, empty, seed=1000 * groups + m + n))
              for groups, m, n, mean_k, empty in K_GROUPED]
    return [case for case in found if only is None or case.kind == only]


def our_config(case: Case, num_sms: int) -> WgradConfig:
    """The variant dg_moe's launch picks for ``case``: the launcher's key is (type, M, N, sum_K // groups,
    groups, SMs), the mean K per group standing for every group."""
    return launcher.config_for(case.wgrad_type, case.m, case.n, case.sum_k // case.groups, case.groups, num_sms)


def force_variant(block_n: int | None, share_b: bool) -> None:
    """Every dg_moe launch of this process (and this tool's listing) runs tiles ``block_n`` wide (None: the cost
    model's width) with the most stages that fit and, with ``share_b``, in 2-CTA clusters sharing B wherever
    the m-block count is even: the launcher's seam for forced variants."""
    chosen = launcher.config_for

    def forced(wgrad_type, m, *rest):
        config = chosen(wgrad_type, m, *rest)
        width = block_n or config.block_n
        stages = max_stages(BLOCK_M, width, config.bf16)
        return dataclasses.replace(config, block_n=width, num_stages=stages,
                                   smem_bytes=smem_bytes(BLOCK_M, width, stages, config.bf16),
                                   share_b=share_b and ceil_div(m, BLOCK_M) % 2 == 0)

    launcher.config_for = forced


def use_kernel_tree(tree: str) -> str:
    """Every dg_moe launch of this process builds its kernel from the source tree ``tree`` first; returns its
    absolute path (the compiler runs elsewhere). A folder without kernels/ is refused: its includes would
    silently fall through to the package's own sources."""
    root = str(Path(tree).resolve())
    if not (Path(root) / "kernels").is_dir():
        raise SystemExit(f"--base {tree}: not a kernel source tree (no kernels/ folder in it); make one with "
                         f"mkdir -p DIR && git archive main dg_moe/csrc | tar -x -C DIR --strip-components=2")
    bind = launcher.bind
    launcher.bind = lambda wgrad_type, config, n: bind(wgrad_type, config, n, source_root=root)
    return root


def describe_config(config: WgradConfig) -> str:
    return f"{config.block_m}x{config.block_n}{'x2B' if config.share_b else ''} s{config.num_stages}"


def variants(selected: Sequence[Case], num_sms: int) -> list[dict[str, int | str]]:
    """Distinct template arguments of every dg_moe variant ``selected`` runs, in first-seen order."""
    found: dict[tuple, dict[str, int | str]] = {}
    for case in selected:
        args = template_args(case.wgrad_type, our_config(case, num_sms), case.n)
        found.setdefault(tuple(sorted(args.items())), args)
    return list(found.values())


# ----------------------------------------------------------------------------------------------- inputs


def _values(rows: int, cols: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """bf16 [rows, cols] whose rows differ in magnitude, so the per-row scales differ too."""
    x = torch.randn(rows, cols, device=device, generator=gen)
    return (x * (torch.rand(rows, 1, device=device, generator=gen) * 4 + 0.25)).to(torch.bfloat16)


def _per_row(rows: int, k: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 [rows, k] and its float32 scales [rows, k/128], already MN-major and TMA-aligned: both libraries
    would transpose row-major scales in every call, a copy kernel inside the timed graph."""
    data, sf = layout.per_token_cast_to_fp8(_values(rows, k, gen, device))
    return data, layout.get_mn_major_tma_aligned_tensor(sf)


def _k_major(sum_k: int, cols: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A K-grouped operand with one float32 scale per column per 128 K rows: (e4m3 ``[cols, sum_K]``, K-major,
    scales ``[sum_K/128, cols]``). Groups start at multiples of 128 rows, so no scale block spans two groups and
    quantising the whole tensor equals DeepGEMM's test quantising group by group."""
    data, sf = layout.per_channel_cast_to_fp8(_values(sum_k, cols, gen, device))
    return data.mT.contiguous(), sf


def deepgemm_k_grouped_operand(k_major: torch.Tensor, sf: torch.Tensor,
                               ks: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One K-grouped operand in the layout of DeepGEMM's SM90 ``k_grouped_fp8_gemm_nt_contiguous``: group g's
    K_g columns of ``k_major`` ([MN, sum_K]) as a row-major [MN, K_g] block, the blocks back to back in one
    flat tensor of sum_K * MN values (its host check compares numel, its test builds exactly this); the scales
    as the [MN, sum_K/128] transpose view of ours, which its per-call conversion returns untouched (MN-major,
    MN a multiple of 4)."""
    mn = k_major.shape[0]
    flat = torch.empty(sum(ks) * mn, dtype=k_major.dtype, device=k_major.device)
    start = 0
    for k in ks:
        flat[start * mn:(start + k) * mn].view(mn, k).copy_(k_major[:, start:start + k])
        start += k
    return flat, sf.mT


@dataclass
class Problem:
    """One case's operands bound into calls. ``ours(d, c)`` and ``peer(d)`` (DeepGEMM, accumulating into d in
    place; None with ``peer_missing`` saying why) each launch one GEMM; ``references(c)`` yields (index into the
    output, float64 reference ``c + A @ B^T`` of that part) for the ``c`` the check starts from."""

    shape: tuple[int, ...]
    ours: Callable[[torch.Tensor, torch.Tensor], None]
    peer: Callable[[torch.Tensor], None] | None
    peer_missing: str | None
    references: Callable[[torch.Tensor], Iterator[tuple[object, torch.Tensor]]]


def _peer_op(deep_gemm: ModuleType | None, name: str) -> tuple[Callable | None, str | None]:
    if deep_gemm is None:
        return None, "DeepGEMM not loaded"
    fn = getattr(deep_gemm, name, None)
    return (fn, None) if fn is not None else (None, f"deep_gemm has no {name}")


def _dense(case: Case, gen: torch.Generator, device: torch.device, deep_gemm: ModuleType | None) -> Problem:
    (k,) = case.ks
    a, b = _per_row(case.m, k, gen, device), _per_row(case.n, k, gen, device)

    def ours(d: torch.Tensor, c: torch.Tensor) -> None:
        dg_moe.fp8_gemm_nt(a, b, d, c=c, recipe=RECIPE_1D1D)

    fn, missing = _peer_op(deep_gemm, "fp8_gemm_nt")
    peer = None
    if fn is not None:
        def peer(d: torch.Tensor) -> None:
            # As DeepGEMM's test_fp8_fp4.py calls its wgrad GEMMs on SM90 (generators.py: c is d, d float32,
            # recipe (1, 1, 128), disable_ue8m0_cast=True); its SM90 1D1D path requires a c.
            fn(a, b, d, c=d, recipe=(1, 1, 128), disable_ue8m0_cast=True)

    def references(c: torch.Tensor) -> Iterator[tuple[object, torch.Tensor]]:
        yield ..., reference.ref_fp8_gemm_nt(a, b, c, RECIPE_1D1D)

    return Problem((case.m, case.n), ours, peer, missing, references)


def _k_grouped(case: Case, gen: torch.Generator, device: torch.device, deep_gemm: ModuleType | None) -> Problem:
    ks = list(case.ks)
    a_km, sfa = _k_major(case.sum_k, case.m, gen, device)
    b_km, sfb = _k_major(case.sum_k, case.n, gen, device)
    # dg_moe reads [sum_K, M] operands K-major without a copy when they are .mT views of [M, sum_K] buffers.
    a, b = (a_km.mT, sfa), (b_km.mT, sfb)
    sizes = torch.tensor(ks, dtype=torch.int32, device=device)

    def ours(d: torch.Tensor, c: torch.Tensor) -> None:
        dg_moe.k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks, sizes, c=c)

    fn, missing = _peer_op(deep_gemm, "k_grouped_fp8_gemm_nt_contiguous")
    peer = None
    if fn is not None:
        peer_a = deepgemm_k_grouped_operand(a_km, sfa, ks)
        peer_b = deepgemm_k_grouped_operand(b_km, sfb, ks)

        def peer(d: torch.Tensor) -> None:
            # DeepGEMM's test_k_grouped_gemm_contiguous on SM90: (a, b, d, ks as a list, sizes int32 [G], c = d,
            # recipe (1, 1, 128)), use_psum_layout left False (its SM90 form refuses True).
            fn(peer_a, peer_b, d, ks, sizes, c=d, recipe=(1, 1, 128))

    def references(c: torch.Tensor) -> Iterator[tuple[object, torch.Tensor]]:
        # Group by group: the float64 reference of every group at once would be twice the FP32 output's size.
        start = 0
        for g, k in enumerate(ks):
            blocks = slice(start // MK_ALIGNMENT, (start + k) // MK_ALIGNMENT)
            part_a, part_b = (a[0][start:start + k], a[1][blocks]), (b[0][start:start + k], b[1][blocks])
            yield slice(g, g + 1), reference.ref_k_grouped_fp8_gemm_tn_contiguous(part_a, part_b, [k], c[g:g + 1])
            start += k

    return Problem((case.groups, case.m, case.n), ours, peer, missing, references)


def problem(case: Case, device: torch.device, deep_gemm: ModuleType | None, seed: int = 0) -> Problem:
    """``case``'s operands, random but the same for one seed, bound into both libraries' calls."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return (_dense if case.kind == "dense" else _k_grouped)(case, gen, device, deep_gemm)


# ------------------------------------------------------------------------------------------------ check


@dataclass
class Checked:
    """The outcome of one case's check; ``calls`` are the in-place calls to time (those that ran)."""

    calls: dict[str, Callable[[], None]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    diff: dict[str, float] = field(default_factory=dict)
    """Worst part's global similarity against the float64 reference, per library; NaN where the output holds
    a NaN (for dg_moe's, written into a NaN-poisoned d: an element it did not write)."""
    in_place_same: bool | None = None
    """dg_moe accumulating in place gave the bits it wrote into a NaN-poisoned d from a separate c."""
    same_as_peer: bool | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return torch.equal(x.view(torch.int32), y.view(torch.int32))


def _worst(values: Sequence[float]) -> float:
    return float("nan") if any(math.isnan(v) for v in values) else max(values, default=0.0)


def check(prob: Problem, device: torch.device, seed: int = 0) -> Checked:
    """Run each library once from the same known c and compare. d accumulates (c = d), so every call adds to
    what d holds: the check must run first, from c, and the later timed replays only keep adding (the work is
    the same whatever d holds; the values grow by one product per call, far from FP32's range)."""
    out = Checked()
    gen = torch.Generator(device=device)
    gen.manual_seed(10_000 + seed)
    c = torch.randn(prob.shape, device=device, generator=gen)
    outputs: dict[str, torch.Tensor] = {}

    # dg_moe from a separate c into a NaN-poisoned d: an element it fails to write stays NaN, which the diff
    # shows; in place every element is read first, so poison would tell nothing there.
    poisoned = torch.full(prob.shape, float("nan"), device=device)
    ours = c.clone()
    try:
        prob.ours(poisoned, c)
        prob.ours(ours, ours)
        _sync(device)
        outputs["dg_moe"] = poisoned
        out.in_place_same = _same_bits(ours, poisoned)
        out.calls["dg_moe"] = lambda: prob.ours(ours, ours)
    except Exception as err:  # reported in the row; the peer still runs
        out.errors["dg_moe"] = describe_error(err)

    if prob.peer is None:
        out.errors["deepgemm"] = prob.peer_missing or "n/a"
    else:
        theirs = c.clone()
        try:
            prob.peer(theirs)
            _sync(device)
            outputs["deepgemm"] = theirs
            if "dg_moe" in outputs:
                out.same_as_peer = _same_bits(ours, theirs)
            peer = prob.peer
            out.calls["deepgemm"] = lambda: peer(theirs)
        except Exception as err:  # DeepGEMM refusing a case is a result, not a crash
            out.errors["deepgemm"] = describe_error(err)

    # Every element of every output is compared (calc_diff is NaN if any is NaN); the parts are groups.
    diffs: dict[str, list[float]] = {name: [] for name in outputs}
    for index, ref in prob.references(c):
        for name, d in outputs.items():
            diffs[name].append(reference.calc_diff(d[index], ref))
    out.diff = {name: _worst(values) for name, values in diffs.items()}
    return out


# ------------------------------------------------------------------------------------------------- main


def _compile_first(selected: Sequence[Case], num_sms: int, source_root: str | None) -> None:
    """Every dg_moe variant the cases run, compiled in parallel before the first case."""
    compile_many(FAMILY, variants(selected, num_sms), source_root=source_root)


def _flag(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


def _cell(name: str, flops: float, t: float | str | None, error: str | None) -> str:
    if isinstance(t, float):
        return f"{name} {flops / t / 1e6:7.1f} ({t:8.1f})" if t > 0 else f"{name} ? ({t:8.1f})"
    return f"{name} {t if t is not None else f'n/a ({error})'}"


def _list(selected: Sequence[Case], num_sms: int) -> None:
    for case in selected:
        ks = f"  ks={list(case.ks)}" if case.kind == "k_grouped" else ""
        print(f"{case.label:<50} {describe_config(our_config(case, num_sms))}{ks}")


def _row(case: Case, device: torch.device, deep_gemm: ModuleType | None, seed: int, num_sms: int) -> str:
    """Check then time one case; its line of the table."""
    checked = check(problem(case, device, deep_gemm, seed), device, seed)
    # The calls accumulate in place as checked: each replay adds one more product to d (check says why that is
    # sound), while a fresh copy of c per call would put a copy kernel inside the timed graph.
    times = dict(zip(checked.calls, gpu_times_us(list(checked.calls.values())), strict=True)) if checked.calls \
        else {}
    ours_t, theirs_t = times.get("dg_moe"), times.get("deepgemm")
    ratio = f"{theirs_t / ours_t:7.2f}" if isinstance(ours_t, float) and isinstance(theirs_t, float) and ours_t > 0 \
        else f"{'-':>7}"
    diff = checked.diff.get("dg_moe", float("nan"))
    peer_diff = f"{checked.diff['deepgemm']:8.1e}" if "deepgemm" in checked.diff else f"{'-':>8}"
    cells = "  ".join(_cell(name, case.flops, times.get(name), checked.errors.get(name))
                      for name in ("dg_moe", "deepgemm"))
    return (f"{case.label:<50} {diff:8.1e} {_flag(checked.in_place_same):>4} {peer_diff} "
            f"{_flag(checked.same_as_peer):>4} | {cells} | {ratio} | {describe_config(our_config(case, num_sms))}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-deepgemm", action="store_true", help="do not import DeepGEMM")
    parser.add_argument("--only", choices=("dense", "k_grouped"), help="run one kind of case only")
    parser.add_argument("--block-n", type=int, choices=BUILT_BLOCK_NS,
                        help="force dg_moe's tile width on every case (default: the cost model's choice)")
    parser.add_argument("--share-b", action="store_true",
                        help="force 2-CTA clusters sharing B wherever ceil(M / 128) is even (widths 64, 128, 144)")
    parser.add_argument("--base", metavar="DIR",
                        help="build dg_moe's kernels from this kernel source tree, searched before dg_moe/csrc (e.g. "
                             "a git archive of an earlier commit's dg_moe/csrc); two trees run in two processes "
                             "compare through DeepGEMM's time in each")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true",
                      help=f"print the cases and dg_moe's configuration for each, then exit (no GPU needed: "
                           f"{DEFAULT_NUM_SMS} SMs assumed without one)")
    mode.add_argument("--compile-only", action="store_true",
                      help="compile dg_moe's variants for the cases, then exit (e.g. beside DeepGEMM's build)")
    args = parser.parse_args(argv)
    if args.share_b and args.block_n is not None and (args.block_n // 2) % 8 != 0:
        parser.error(f"--share-b needs a width whose half is a multiple of 8 rows, not {args.block_n}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    selected = cases(args.only)
    if args.block_n is not None or args.share_b:
        force_variant(args.block_n, args.share_b)
    base = use_kernel_tree(args.base) if args.base is not None else None
    if args.list:
        _list(selected, torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available()
              else DEFAULT_NUM_SMS)
        return 0
    if not torch.cuda.is_available():
        print("bench_wgrad: needs a CUDA GPU (SM90); --list runs without one")
        return 1
    device = torch.device("cuda")
    num_sms = dg_moe.device.num_sms_for(device)
    started = time.perf_counter()
    if args.compile_only:
        _compile_first(selected, num_sms, base)
        print(f"compiled dg_moe's {len(variants(selected, num_sms))} variants in {time.perf_counter() - started:.0f} s")
        return 0
    status = load_deep_gemm("--no-deepgemm" if args.no_deepgemm else None)
    peer = f"{status.version} from {status.path}" if status.module is not None else status.reason
    print(f"{torch.cuda.get_device_name()} ({num_sms} SMs); torch {torch.__version__}; dg_moe {dg_moe.__version__}; "
          f"DeepGEMM: {peer}", flush=True)
    _compile_first(selected, num_sms, base)
    for case in selected:
        if case.kind == "k_grouped":
            print(f"  {case.label}: ks={list(case.ks)}")
    print("diff: against the float64 reference (K-grouped: worst group); c=d: dg_moe in place has the bits it wrote "
          "into a NaN-poisoned d; =DG: bitwise equal to DeepGEMM; DG/ours: DeepGEMM's time over dg_moe's (> 1: dg_moe "
          "faster); ours: dg_moe's tile and stages")
    print(f"{'case':<50} {'diff':>8} {'c=d':>4} {'DG diff':>8} {'=DG':>4} | TFLOPS per library (us) | DG/ours | ours")
    for seed, case in enumerate(selected):
        try:
            row = _row(case, device, status.module, seed, num_sms)
        except Exception as err:  # a case that cannot even be set up (out of memory, say): the others still run
            row = f"{case.label:<50} failed: {describe_error(err)}"
        # Before the next case's operands exist: the largest cases hold several GB of FP32 outputs each.
        torch.cuda.empty_cache()
        print(row, flush=True)
    print(f"{len(selected)} cases in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
