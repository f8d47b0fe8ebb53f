"""`dg-moe bench moe`: the fused MoE layer against a BF16 grouped-GEMM MoE with the same routing.

For each model shape of docs/performance.md and each batch size: random FP8 routed experts (every block its
own scale; no shared expert) and a softmax top-k routing; dg_moe's ``fused_moe`` and the peer,
``torch._grouped_mm`` over the same experts dequantised to BF16, run the same tokens. Decode batches
(T <= 128, the masked path) are timed as GPU time of CUDA-graph replays with L2 flushed, as a decode step runs them;
prefill batches (the contiguous path) as eager wall time per call, host included. Bandwidth counts
the FP8 weights of the experts the routing touches, read once; the floor is that read at the GPU's
datasheet HBM bandwidth (the decode goal of docs/performance.md: time <= 1.2x the floor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..cli_args import CommandParser, require_gpu
from ..layout import per_block_cast_to_fp8
from ..moe import AUTO_MASKED_MAX_TOKENS, fused_moe
from ..moe.shapes import MODEL_SHAPES, MoEShape, shapes_named, token_counts
from ..reference import calc_diff, dequantize
from .machine import machine_facts
from .output import add_output_options, outputs
from .roofline import hbm_bandwidth, peaks
from .timing import eager_us, gpu_times_us

SCHEMA = "dg_moe.bench.moe/1"
JSON_NAME = "bench_moe.json"
PEER = "BF16 torch._grouped_mm MoE, same experts and routing"

# Mixtral's 8 experts of 14336 are a prefill shape: the default list is docs/performance.md's model table without
# it; --models takes any name of MODEL_SHAPES, the list `dg-moe warmup` offers too.
DEFAULT_MODELS = ("deepseek-v3", "qwen3-235b-a22b", "qwen3-30b-a3b")
BATCHES = (1, 8, 32, 128, 512, 4096)


@dataclass
class Row:
    """One model and batch: both times (or why not), the floor's terms and how close dg_moe came.

    ``weight_bytes``: the FP8 weights and scales of the experts the routing touched, read once (the
    decode floor's bytes); ``flops``: the routed tokens' expert GEMMs, 6 x H x I per (token, expert)
    (the prefill floor's work). The roofline chart prices the rows by these two.
    """

    model: str
    tokens: int
    mode: str
    timing: str
    experts_touched: int
    dg_moe_us: float | str
    bf16_grouped_us: float | str
    weight_gbps: float | None
    time_over_floor: float | None
    speedup: float | None
    similarity_to_bf16: float
    weight_bytes: int
    flops: int


def make_row(shape: MoEShape, tokens: int, mode: str, timing: str, touched: int, expert_bytes: int,
             ours_us: float | str, peer_us: float | str, similarity: float, hbm: float | None) -> Row:
    """The row of one batch from its measurements: GB/s of the touched weights, time over the floor, speedup."""
    weight_bytes = touched * expert_bytes
    ok = isinstance(ours_us, float) and ours_us > 0
    floor_us = weight_bytes / hbm * 1e6 if hbm else None
    return Row(
        model=shape.name, tokens=tokens, mode=mode, timing=timing, experts_touched=touched,
        dg_moe_us=ours_us, bf16_grouped_us=peer_us, weight_gbps=weight_bytes / ours_us / 1e3 if ok else None,
        time_over_floor=ours_us / floor_us if ok and floor_us else None,
        speedup=peer_us / ours_us if ok and isinstance(peer_us, float) else None,
        similarity_to_bf16=similarity, weight_bytes=weight_bytes,
        flops=6 * tokens * shape.top_k * shape.hidden * shape.intermediate,
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
    """The peer: a BF16 MoE through ``torch._grouped_mm``, tokens sorted by expert on the device.

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


def _routing(tokens: int, shape: MoEShape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.rand(tokens, shape.experts, device="cuda", generator=generator)
    weights, ids = scores.softmax(-1).topk(shape.top_k, dim=-1)
    return ids.to(torch.int32), weights


def bench_shape(shape: MoEShape, batches: Sequence[int], hbm: float | None) -> list[Row]:
    """Time dg_moe and the BF16 peer at every batch size of one model shape."""
    g = torch.Generator(device="cuda").manual_seed(len(shape.name))
    w13, w13_sf, w13_bf16 = _fp8_experts(shape.experts, 2 * shape.intermediate, shape.hidden)
    w2, w2_sf, w2_bf16 = _fp8_experts(shape.experts, shape.hidden, shape.intermediate)
    expert_bytes = (w13[0].numel() + w2[0].numel()) + 4 * (w13_sf[0].numel() + w2_sf[0].numel())
    rows = []
    for tokens in batches:
        hidden = (torch.randn(tokens, shape.hidden, device="cuda", generator=g) * 2).to(torch.bfloat16)
        ids, weights = _routing(tokens, shape, g)
        mode = "masked" if tokens <= AUTO_MASKED_MAX_TOKENS else "contiguous"

        def ours() -> torch.Tensor:
            return fused_moe(hidden, w13, w13_sf, w2, w2_sf, ids, weights, mode=mode)

        def peer() -> torch.Tensor:
            return grouped_mm_moe(hidden, w13_bf16, w2_bf16, ids, weights)

        similarity = calc_diff(ours().double(), peer().double())
        fns: list[Callable[[], object]] = [ours, peer]
        if mode == "masked":
            ours_us, peer_us = gpu_times_us(fns)
            timing = "gpu (graph)"
        else:
            ours_us, peer_us = (eager_us(f, calls=20) for f in fns)
            timing = "eager"
        touched = int(torch.unique(ids).numel())
        rows.append(make_row(shape, tokens, mode, timing, touched, expert_bytes, ours_us, peer_us, similarity, hbm))
        print(format_row(rows[-1]), flush=True)
    return rows


HEADER = (f"{'model':<16} {'T':>5} {'mode':<10} {'timing':<11} {'experts':>7} {'dg_moe us':>10} "
          f"{'bf16-gmm us':>11} {'GB/s':>6} {'x floor':>7} {'speedup':>7} {'diff':>8}")


def format_row(r: Row) -> str:
    def num(v: float | str | None, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, float) else ("-" if v is None else str(v)[:10])

    return (f"{r.model:<16} {r.tokens:>5} {r.mode:<10} {r.timing:<11} {r.experts_touched:>7} "
            f"{num(r.dg_moe_us, '10.1f'):>10} {num(r.bf16_grouped_us, '11.1f'):>11} {num(r.weight_gbps, '6.0f'):>6} "
            f"{num(r.time_over_floor, '7.2f'):>7} {num(r.speedup, '7.2f'):>7} {r.similarity_to_bf16:8.1e}")


def build_parser() -> CommandParser:
    """The options of `dg-moe bench moe`; building it touches no GPU, so --help works anywhere."""
    parser = CommandParser(prog="dg-moe bench moe", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma list of {', '.join(MODEL_SHAPES)} (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--batches", type=token_counts, default=list(BATCHES),
                        help=f"comma list of token counts (default: {','.join(map(str, BATCHES))})")
    add_output_options(parser, JSON_NAME)
    return parser


def document(meta: dict[str, object], rows: Sequence[Row]) -> dict[str, object]:
    """The JSON written by ``--json``: the rows, with the machine, the run's options and the peaks."""
    return {"schema": SCHEMA, "meta": meta, "results": [asdict(r) for r in rows]}


def main(argv: list[str] | None = None) -> int:
    """Run the MoE benchmark; prints a table, writes JSON with ``--json`` and the chart with ``--plot``."""
    args = build_parser().parse_args(argv)
    shapes = shapes_named(args.models)
    out = outputs(args, JSON_NAME)
    require_gpu("run it on an H100/H200 with a CUDA build of torch")
    name = torch.cuda.get_device_name()
    hbm = hbm_bandwidth(name)
    print(f"GPU: {name}; floor at {hbm / 1e12 if hbm else float('nan'):.2f} TB/s (datasheet HBM); peer: {PEER}")
    print(HEADER)
    rows = []
    for shape in shapes:
        rows += bench_shape(shape, args.batches, hbm)
        torch.cuda.empty_cache()  # the next model's experts reuse the memory these held
    facts = machine_facts()
    meta = {**facts, "models": [s.name for s in shapes], "batches": list(args.batches), "peer": PEER,
            "roofline": peaks(name, facts.get("sms"))}
    out.write(document(meta, rows))
    if out.announce():
        print(out.announce())
    return 0
