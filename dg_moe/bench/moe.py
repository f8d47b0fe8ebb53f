"""`dg-moe bench moe`: the fused MoE layer against the same layer on DeepGEMM's GEMMs and a BF16 grouped-GEMM MoE.

For each model shape of docs/performance.md and each batch size: random FP8 routed experts (every block its
own scale; no shared expert) and a softmax top-k routing; three layers run the same tokens in one process:

- ``dg_moe``: dg_moe's ``fused_moe``;
- ``deepgemm_layer``, when ``deep_gemm`` imports: the same layer code (dg_moe's routing, activation,
  quantisation and reduce kernels) with its two grouped GEMMs replaced by DeepGEMM's
  (``dg_moe.bench.peer_deepgemm.layer_gemms``), what a vLLM/SGLang user on DeepGEMM runs minus the
  framework; its masked buffers hold max_m rounded up to 128 rows per expert, as DeepGEMM needs;
- ``bf16_grouped``: ``torch._grouped_mm`` over the same experts dequantised to BF16.

Every batch is timed as GPU time of CUDA-graph replays with L2 flushed, the three layers' replays
interleaved; prefill batches (T > 128, the contiguous path) also as eager wall time per call, host included,
rounds interleaved. The weight floor reads the FP8 weights of the experts the routing touches once at the
GPU's datasheet HBM bandwidth; the compute floor does the routed tokens' expert GEMMs at a dense FP8 rate
(``roofline.compute_floor_rate``); ``time_over_floor`` is dg_moe's GPU time over the larger of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..cli_args import CommandParser, require_gpu
from ..layout import per_block_cast_to_fp8
from ..moe import AUTO_MASKED_MAX_TOKENS, fused_moe
from ..moe._gemms import GroupedGemms
from ..moe.fused import fused_moe_layer
from ..moe.shapes import MODEL_SHAPES, MoEShape, shapes_named, token_counts
from ..reference import calc_diff, dequantize
from .gemm_report import Time, ratio
from .machine import machine_facts
from .output import add_output_options, outputs
from .peer_deepgemm import DeepGemmStatus, layer_gemms, load_deep_gemm
from .roofline import HBM_SOURCE, compute_floor_rate, hbm_bandwidth, peaks
from .timing import CALLS, EAGER_CALLS, EAGER_ROUNDS, FLUSH_BYTES, REPLAYS, describe_error, eager_times_us, gpu_times_us

SCHEMA = "dg_moe.bench.moe/2"
JSON_NAME = "bench_moe.json"
LIBRARIES = ("dg_moe", "deepgemm_layer", "bf16_grouped")
PEERS = {
    "deepgemm_layer": "dg_moe's fused layer (routing, activation, quantisation, reduce) on DeepGEMM's grouped FP8 "
                      "GEMMs, masked max_m rounded up to 128",
    "bf16_grouped": "BF16 torch._grouped_mm MoE, same experts and routing",
}

# docs/performance.md's model table and Mixtral's 8 large experts (2 of 8 per token: every batch from 8 up
# reads all of them). Estimated on an H100 from the layer times measured so far: ~40 s of timing (161 graph
# calls per library and case, 51 eager calls on prefill; DeepSeek-V3 ~60 % of it, Mixtral ~15 %) and ~20 s
# of setup, plus each library's first-call compiles (DeepGEMM's, ~16-32 kernels at a few seconds each) unless
# warmed: within one 10-minute device call.
DEFAULT_MODELS = ("deepseek-v3", "qwen3-235b-a22b", "qwen3-30b-a3b", "mixtral-8x7b")
BATCHES = (1, 8, 32, 128, 512, 4096)


@dataclass
class Row:
    """One model and batch: each layer's times (or why not), the floors and how close dg_moe came.

    ``weight_bytes``: the FP8 weights and scales of the experts the routing touched, read once (the weight
    floor's bytes); ``flops``: the routed tokens' expert GEMMs, 6 x H x I per (token, expert) (the compute
    floor's work). ``gpu_us``/``eager_us``: library -> microseconds or the reason there is none (``eager_us``
    None on decode rows, which run only as graph replays). ``ratio_gpu``/``ratio_eager``: peer -> peer time
    over dg_moe's (> 1: dg_moe faster). ``similarity``: peer -> ``calc_diff`` of its output against dg_moe's.
    """

    model: str
    tokens: int
    mode: str
    experts_touched: int
    weight_bytes: int
    flops: int
    gpu_us: dict[str, Time]
    eager_us: dict[str, Time] | None
    weight_floor_us: float | None
    compute_floor_us: float | None
    time_over_floor: float | None
    weight_gbps: float | None
    ratio_gpu: dict[str, float | None]
    ratio_eager: dict[str, float | None] | None
    similarity: dict[str, float | str]


def floor_us(weight_floor_us: float | None, compute_floor_us: float | None) -> float | None:
    """The larger of the two floors, microseconds; None when neither is known."""
    known = [f for f in (weight_floor_us, compute_floor_us) if f]
    return max(known) if known else None


def _ratios(times: Mapping[str, Time]) -> dict[str, float | None]:
    return {peer: ratio(times.get(peer), times.get("dg_moe")) for peer in PEERS}


def make_row(shape: MoEShape, tokens: int, mode: str, touched: int, expert_bytes: int, gpu_us: Mapping[str, Time],
             eager_us: Mapping[str, Time] | None, similarity: Mapping[str, float | str], hbm: float | None,
             fp8: float | None) -> Row:
    """The row of one batch from its measurements; ``hbm`` (bytes/s) and ``fp8`` (FLOP/s) price the floors."""
    weight_bytes = touched * expert_bytes
    flops = 6 * tokens * shape.top_k * shape.hidden * shape.intermediate
    weight_floor = weight_bytes / hbm * 1e6 if hbm else None
    compute_floor = flops / fp8 * 1e6 if fp8 else None
    floor = floor_us(weight_floor, compute_floor)
    ours = gpu_us.get("dg_moe")
    ok = isinstance(ours, float) and ours > 0
    return Row(
        model=shape.name, tokens=tokens, mode=mode, experts_touched=touched, weight_bytes=weight_bytes, flops=flops,
        gpu_us=dict(gpu_us), eager_us=None if eager_us is None else dict(eager_us),
        weight_floor_us=weight_floor, compute_floor_us=compute_floor,
        time_over_floor=ours / floor if ok and floor else None,
        weight_gbps=weight_bytes / ours / 1e3 if ok else None,
        ratio_gpu=_ratios(gpu_us), ratio_eager=None if eager_us is None else _ratios(eager_us),
        similarity=dict(similarity),
    )


def _fp8_experts(experts: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # (e4m3 [E, rows, cols], float32 scales, bf16 dequantised copy), one expert at a time to bound memory.
    q = torch.empty(experts, rows, cols, dtype=torch.float8_e4m3fn, device="cuda")
    sf = torch.empty(experts, rows // 128, cols // 128, dtype=torch.float32, device="cuda")
    bf16 = torch.empty(experts, rows, cols, dtype=torch.bfloat16, device="cuda")
    for e in range(experts):
        w = torch.randn(rows, cols, device="cuda") * (0.5 + torch.rand(rows // 128, 1, cols // 128, 1, device="cuda")
                                                       ).expand(-1, 128, -1, 128).reshape(rows, cols) / cols**0.5
        q[e], sf[e] = per_block_cast_to_fp8(w)
        bf16[e] = dequantize(q[e], sf[e], 128, 128).to(torch.bfloat16)
    return q, sf, bf16


def grouped_mm_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, ids: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """The BF16 peer: a MoE through ``torch._grouped_mm``, tokens sorted by expert on the device.

    hidden bf16 [T, H]; w13 bf16 [E, 2I, H]; w2 bf16 [E, H, I]; ids int [T, k] (all routed); weights
    float [T, k]. No host synchronisation, so it can be captured like the dg_moe layer.
    """
    num_tokens, top_k = ids.shape
    flat = ids.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    counts = torch.zeros(w13.shape[0], dtype=torch.int32, device=ids.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    x = hidden[order // top_k]
    gate_up = torch._grouped_mm(x, w13.transpose(1, 2), offs=offsets)
    inter = w13.shape[1] // 2
    act = (F.silu(gate_up[:, :inter].float()) * gate_up[:, inter:].float()).to(torch.bfloat16)
    down = torch._grouped_mm(act, w2.transpose(1, 2), offs=offsets)
    contrib = down.float() * weights.reshape(-1)[order].unsqueeze(1)
    out = torch.zeros(num_tokens, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    out.index_add_(0, order // top_k, contrib)
    return out.to(torch.bfloat16)


def layer_peer_moe(gemms: GroupedGemms, hidden: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor,
                   w2: torch.Tensor, w2_scale: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                   mode: str) -> torch.Tensor:
    """``fused_moe(..., mode=mode)`` with the routed experts' grouped GEMMs taken from ``gemms`` (the DeepGEMM
    layer peer: ``layer_gemms(deep_gemm)``); arguments and result as ``fused_moe``'s: bf16 [T, H]."""
    out, _ = fused_moe_layer(hidden, w13, w13_scale, w2, w2_scale, ids, weights, mode, None, 1.0, None, gemms=gemms)
    return out


def deepgemm_layer_gemms(status: DeepGemmStatus) -> GroupedGemms | str:
    """DeepGEMM's GEMMs for the layer peer, or what its columns show instead (not importable, refused)."""
    if status.module is None:
        return status.missing
    try:
        return layer_gemms(status.module)
    except Exception as err:  # an unexpected deep_gemm (another API, another alignment) loses its column only
        return f"n/a ({describe_error(err)})"


def _routing(tokens: int, shape: MoEShape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.rand(tokens, shape.experts, device="cuda", generator=generator)
    weights, ids = scores.softmax(-1).topk(shape.top_k, dim=-1)
    return ids.to(torch.int32), weights


def _similarity(ours: torch.Tensor, peer: Callable[[], torch.Tensor]) -> float | str:
    try:
        return calc_diff(ours.double(), peer().double())
    except Exception as err:  # a peer that cannot run reports why, as its time does
        return f"n/a ({describe_error(err)})"


def _timed(fns: Mapping[str, Callable[[], object] | str],
           timer: Callable[[Sequence[Callable[[], object]]], list[Time]]) -> dict[str, Time]:
    """Each library's time by ``timer`` (one interleaved measurement of every runnable fn), or its reason."""
    runnable = [label for label, fn in fns.items() if not isinstance(fn, str)]
    times = dict(zip(runnable, timer([fns[label] for label in runnable]), strict=True))
    return {label: times[label] if label in times else fn for label, fn in fns.items()}


def bench_shape(shape: MoEShape, batches: Sequence[int], hbm: float | None, fp8: float | None,
                deepgemm: GroupedGemms | str) -> Iterator[Row]:
    """Time the three layers at every batch size of one model shape, one row per batch as it finishes.

    ``deepgemm``: DeepGEMM's GEMMs for the layer peer, or the reason its columns show.
    """
    g = torch.Generator(device="cuda").manual_seed(len(shape.name))
    w13, w13_sf, w13_bf16 = _fp8_experts(shape.experts, 2 * shape.intermediate, shape.hidden)
    w2, w2_sf, w2_bf16 = _fp8_experts(shape.experts, shape.hidden, shape.intermediate)
    expert_bytes = (w13[0].numel() + w2[0].numel()) + 4 * (w13_sf[0].numel() + w2_sf[0].numel())
    for tokens in batches:
        hidden = (torch.randn(tokens, shape.hidden, device="cuda", generator=g) * 2).to(torch.bfloat16)
        ids, weights = _routing(tokens, shape, g)
        mode = "masked" if tokens <= AUTO_MASKED_MAX_TOKENS else "contiguous"

        def ours() -> torch.Tensor:
            return fused_moe(hidden, w13, w13_sf, w2, w2_sf, ids, weights, mode=mode)

        def bf16() -> torch.Tensor:
            return grouped_mm_moe(hidden, w13_bf16, w2_bf16, ids, weights)

        fns: dict[str, Callable[[], torch.Tensor] | str] = {"dg_moe": ours, "deepgemm_layer": deepgemm,
                                                            "bf16_grouped": bf16}
        if not isinstance(deepgemm, str):
            gemms = deepgemm

            def deepgemm_layer() -> torch.Tensor:
                return layer_peer_moe(gemms, hidden, w13, w13_sf, w2, w2_sf, ids, weights, mode)

            fns["deepgemm_layer"] = deepgemm_layer
        reference = ours()
        similarity = {label: fn if isinstance(fn, str) else _similarity(reference, fn)
                      for label, fn in fns.items() if label != "dg_moe"}
        del reference
        gpu = _timed(fns, gpu_times_us)
        eager = _timed(fns, eager_times_us) if mode == "contiguous" else None
        touched = int(torch.unique(ids).numel())
        yield make_row(shape, tokens, mode, touched, expert_bytes, gpu, eager, similarity, hbm, fp8)


HEADER = (f"{'case':>7} {'model':<16} {'T':>5} {'mode':<10} {'exp':>4} | GPU us: {'dg_moe':>8} {'DG-layer':>8} "
          f"{'bf16':>8} | eager us: {'dg_moe':>8} {'DG-layer':>8} {'bf16':>8} | {'GB/s':>5} {'x floor':>7} | "
          f"{'DG/ours':>7} {'bf16/ours':>9} | {'diff DG':>7} {'diff bf16':>9} | secs")


def _num(v: object, fmt: str, width: int) -> str:
    return format(v, fmt) if isinstance(v, float) else f"{'-' if v is None else 'n/a':>{width}}"


def progress_line(index: int, total: int, r: Row, seconds: float) -> str:
    """What one finished case prints, a line of :data:`HEADER`'s table: the ratios are of GPU time (the eager
    ones are in the JSON); an n/a's reason is in the JSON (a missing DeepGEMM's also in the run's first lines)."""
    eager = r.eager_us or {}
    ratios = r.ratio_gpu
    return (f"{f'{index}/{total}':>7} {r.model:<16} {r.tokens:>5} {r.mode:<10} {r.experts_touched:>4} | "
            f"{'':8}{_num(r.gpu_us['dg_moe'], '8.1f', 8)} {_num(r.gpu_us['deepgemm_layer'], '8.1f', 8)} "
            f"{_num(r.gpu_us['bf16_grouped'], '8.1f', 8)} | {'':10}{_num(eager.get('dg_moe'), '8.1f', 8)} "
            f"{_num(eager.get('deepgemm_layer'), '8.1f', 8)} {_num(eager.get('bf16_grouped'), '8.1f', 8)} | "
            f"{_num(r.weight_gbps, '5.0f', 5)} {_num(r.time_over_floor, '7.2f', 7)} | "
            f"{_num(ratios['deepgemm_layer'], '7.2f', 7)} {_num(ratios['bf16_grouped'], '9.2f', 9)} | "
            f"{_num(r.similarity['deepgemm_layer'], '7.1e', 7)} {_num(r.similarity['bf16_grouped'], '9.1e', 9)} | "
            f"{seconds:.1f}")


def build_parser() -> CommandParser:
    """The options of `dg-moe bench moe`; building it touches no GPU, so --help works anywhere."""
    parser = CommandParser(prog="dg-moe bench moe", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma list of {', '.join(MODEL_SHAPES)} (default: {','.join(DEFAULT_MODELS)}; "
                             "about a minute on an H100 once both libraries' kernels are compiled)")
    parser.add_argument("--batches", type=token_counts, default=list(BATCHES),
                        help=f"comma list of token counts (default: {','.join(map(str, BATCHES))})")
    add_output_options(parser, JSON_NAME)
    parser.add_argument("--no-deepgemm", action="store_true",
                        help="do not import deep_gemm (the DeepGEMM layer peer's columns say so)")
    return parser


def document(meta: dict[str, object], rows: Sequence[Row]) -> dict[str, object]:
    """The JSON written by ``--json``: the rows, with the machine, the run's options, the floors' rates and
    the peaks."""
    return {"schema": SCHEMA, "meta": meta, "results": [asdict(r) for r in rows]}


def run_meta(name: str, facts: Mapping[str, object], shapes: Sequence[MoEShape], batches: Sequence[int],
             status: DeepGemmStatus, hbm: float | None, compute: Mapping[str, object]) -> dict[str, object]:
    """The JSON's meta: machine facts, options, peers, the floors' rates with their sources, timing, peaks."""
    return {**facts, "models": [s.name for s in shapes], "batches": list(batches), "peers": PEERS,
            "deepgemm": status.describe(),
            "weight_floor": {"hbm_bytes_per_s": hbm, "source": HBM_SOURCE}, "compute_floor": dict(compute),
            "timing": {"gpu": "CUDA-graph replays, L2 flushed, libraries interleaved", "calls_per_graph": CALLS,
                       "replays": REPLAYS, "l2_flush_bytes": FLUSH_BYTES,
                       "eager": "prefill rows: wall time per back-to-back call, host included, rounds interleaved",
                       "eager_calls": EAGER_CALLS, "eager_rounds": EAGER_ROUNDS},
            "roofline": peaks(name, facts.get("sms"))}


def main(argv: list[str] | None = None) -> int:
    """Run the MoE benchmark: a line per case, JSON rewritten after each (``--json``), the chart (``--plot``)."""
    args = build_parser().parse_args(argv)
    shapes = shapes_named(args.models)
    out = outputs(args, JSON_NAME)
    require_gpu("run it on an H100/H200 with a CUDA build of torch")
    status = load_deep_gemm("disabled by --no-deepgemm" if args.no_deepgemm else None)
    deepgemm = deepgemm_layer_gemms(status)
    name = torch.cuda.get_device_name()
    facts = machine_facts()
    hbm = hbm_bandwidth(name)
    compute = compute_floor_rate(name, facts.get("sms"))
    fp8 = compute["fp8_flops_per_s"]
    meta = run_meta(name, facts, shapes, args.batches, status, hbm, compute)
    print(f"GPU: {name}; weight floor at {hbm / 1e12 if hbm else float('nan'):.2f} TB/s (datasheet HBM), compute "
          f"floor at {fp8 / 1e12 if fp8 else float('nan'):.0f} TFLOPS ({compute['source']})")
    print(f"DeepGEMM layer peer: {deepgemm if isinstance(deepgemm, str) else status.version}; "
          f"BF16 peer: {PEERS['bf16_grouped']}")
    print(HEADER, flush=True)
    rows: list[Row] = []
    total = len(shapes) * len(args.batches)
    for shape in shapes:
        start = time.perf_counter()
        for row in bench_shape(shape, args.batches, hbm, fp8, deepgemm):
            rows.append(row)
            print(progress_line(len(rows), total, row, time.perf_counter() - start), flush=True)
            out.write_json(document(meta, rows))  # a run cut short keeps the rows it measured
            start = time.perf_counter()
        torch.cuda.empty_cache()  # the next model's experts reuse the memory these held
    out.write(document(meta, rows))
    if out.announce():
        print(out.announce())
    return 0
