"""A/B of SM90 FP8 GEMM tile configurations in one process (GPU only), beside cuBLAS blockwise.

Every variant is compiled first, in parallel, then each dense shape times the heuristic's choice
(marked *), and with --tiles every listed variant too, with the same inputs.
    python tools/ab_tiles.py [--base DIR]... [--tiles] [M ...]   (default M: 128 and 4096, DeepSeek-V3 shapes)
--base DIR: a source tree searched before dg_moe/csrc (e.g. the committed kernel's
    kernels/, launch/ and common/): every variant is also built from it and timed on the lines
    before, and all outputs must be bitwise equal. May be given more than once.
--tiles: time the listed tiles too, not only the heuristic's choice.
--tile BMxBNxMC[xST]: time this tile instead of the listed ones (repeatable; ST 0 or absent: the
    most stages that fit), e.g. --tile 128x128x2.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from dg_moe import layout
from dg_moe.bench.gemm_problems import cublas_blockwise, fp8_dense_inputs
from dg_moe.bench.timing import gpu_times_us
from dg_moe.jit import build, compile_only
from dg_moe.kernels.sm90_fp8_gemm import FAMILY, GemmType, config_for, template_args
from dg_moe.kernels.sm90_fp8_gemm.heuristic import GemmConfig, max_stages, predict_us
from dg_moe.kernels.sm90_fp8_gemm.launcher import _ARGTYPES, _ENTRY
from dg_moe.kernels.sm90_fp8_gemm.variants import DEEPSEEK_V3_NK

# (BLOCK_M, BLOCK_N, multicast, stages or 0 for the most that fit)
Variant = tuple[int, int, int, int]
TILES: dict[int, list[Variant]] = {
    128: [(64, 32, 1, 0), (64, 64, 1, 0), (64, 128, 1, 0), (128, 32, 1, 0), (128, 64, 1, 0), (128, 128, 1, 0)],
    4096: [(128, 128, 1, 0), (128, 192, 1, 0), (256, 128, 1, 0), (256, 128, 2, 0)],
}


def _parse_tile(text: str) -> Variant:
    parts = [int(x) for x in text.lower().split("x")]
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"--tile {text!r}: expected BMxBNxMC or BMxBNxMCxST")
    return (*parts, 0)[:4] if len(parts) == 3 else tuple(parts)


def _variants(m: int, n: int, k: int, num_sms: int, tiles: list[Variant]) -> list[GemmConfig]:
    out = [config_for(GemmType.NORMAL, m, n, k, 1, num_sms)]
    for block_m, block_n, multicast, stages in tiles:
        out.append(GemmConfig(block_m, block_n, stages or max_stages(block_m, block_n, k), multicast, 0,
                              predict_us(block_m, block_n, multicast, m, n, k, 1, num_sms)))
    return out


def _compile(job: tuple[dict[str, int], str | None]) -> None:
    compile_only(FAMILY, job[0], source_root=job[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, action="append", default=[],
                        help="source tree of a kernel to compare against (repeatable)")
    parser.add_argument("--tiles", action="store_true", help="also time the listed tiles")
    parser.add_argument("--tile", type=_parse_tile, action="append", default=[],
                        help="also time this tile, BMxBNxMC[xST] (repeatable)")
    parser.add_argument("ms", type=int, nargs="*", default=[128, 4096])
    args = parser.parse_args()
    roots = [str(base.resolve()) for base in args.base] + [None]

    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = [(m, n, k) for m in args.ms for n, k in DEEPSEEK_V3_NK]
    def listed(m: int) -> list[Variant]:
        return args.tile or (TILES.get(m, TILES[4096]) if args.tiles else [])

    plans = {shape: _variants(*shape, num_sms, listed(shape[0])) for shape in shapes}
    jobs = {(tuple(sorted(template_args(GemmType.NORMAL, c, n, k).items())), root)
            for (_, n, k), configs in plans.items() for c in configs for root in roots}
    with ProcessPoolExecutor(max_workers=16) as pool:
        list(pool.map(_compile, [(dict(a), root) for a, root in jobs]))

    print(f"{'M':>5} {'N':>6} {'K':>6} {'BM':>4} {'BN':>4} {'mc':>3} {'st':>3} {'pred':>7} {'us':>8} "
          f"{'TFLOPS':>7} {'cuBLAS':>7} {'ratio':>6}")
    for (m, n, k), configs in plans.items():
        a, b = fp8_dense_inputs(m, n, k)
        sfa = layout.get_mn_major_tma_aligned_tensor(a[1])
        d = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        runs = []  # (config, index, root, run), every output checked before any timing
        for i, config in enumerate(configs):
            expected = None
            for root in roots:
                library = build(FAMILY, template_args(GemmType.NORMAL, config, n, k), source_root=root)
                entry = library.function(_ENTRY, _ARGTYPES)

                def run(entry=entry):
                    entry(a[0].data_ptr(), sfa.data_ptr(), b[0].data_ptr(), b[1].data_ptr(), d.data_ptr(), None,
                          m, 1, layout.get_tma_aligned_size(m, 4), num_sms, torch.cuda.current_stream().cuda_stream)

                d.fill_(float("nan"))
                run()
                if expected is None:
                    expected = d.clone()
                elif not torch.equal(d, expected):
                    raise AssertionError(f"{m}x{n}x{k} {config}: the base and this tree disagree")
                runs.append((config, i, root, run))
        # One interleaved measurement: clock drift falls on every variant and the peer alike.
        peer_us, *times = gpu_times_us([cublas_blockwise(a, b, k)] + [run for *_, run in runs])
        for (config, i, root, _), us in zip(runs, times, strict=True):
            mark = ("*" if i == 0 else " ") + (Path(root).name if root else "")
            print(f"{m:>5} {n:>6} {k:>6} {config.block_m:>4} {config.block_n:>4} {config.multicast:>3} "
                  f"{config.num_stages:>3} {config.predicted_us:7.1f} {us:8.1f} "
                  f"{2 * m * n * k / us / 1e6:7.0f} {2 * m * n * k / peer_us / 1e6:7.0f} {peer_us / us:6.2f}{mark}",
                  flush=True)

if __name__ == "__main__":
    main()
