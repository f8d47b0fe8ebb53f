"""transformers' Qwen3-MoE forward with experts_implementation "dg_moe" against "grouped_mm" (issue 18.4).

Random-weight models at real layer sizes (Qwen3-30B-A3B, Qwen3-235B-A22B; 2-4 layers), built with
``from_config`` on the device, so nothing is downloaded:

    python tools/bench_transformers.py --json bench_transformers.json          # GPU: both shapes, BF16 and FP8
    python tools/bench_transformers.py --device cpu --smoke --json smoke.json  # tiny model, seconds on CPU

Cases: prefill is one sequence of T tokens without a cache, returning the last position's logits as
``generate``'s prefill does; decode is B sequences of one new token each over a ``StaticCache`` holding
``--context`` tokens, rewound before every step so that each forward writes the same slot (and can be
replayed from a CUDA graph, ``--graph``).

Peers, per experts format:

- BF16 experts: "grouped_mm" (the reference), "dg_moe" (FP8 copies of the experts) and "dg_moe_bf16"
  (the experts kept in BF16, ``fused_moe_bf16``) on one model.
- FP8 experts (transformers' ``FP8Experts`` of a ``FineGrainedFP8Config``, 128x128 blocks, float32
  scales, filled by transformers' own ``Fp8Quantize``): "dg_moe" and transformers' FP8 "grouped_mm",
  which runs the hub's Triton finegrained-fp8 kernel (absent offline and on CPU: reported as n/a);
  the reference "grouped_mm_bf16" is the BF16 model holding the same weights dequantised.

Reported per peer: the median forward time (CUDA events; wall time on CPU), the wall time and the
host time (until the Python call returns, before the GPU is waited for: close to the forward time where
the forward is host-bound), and ``dg_moe.reference.calc_diff`` of the logits and of the last hidden
states against the reference; ``--profile`` adds the cProfile of each peer's decode step.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import inspect
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dg_moe.bench.machine import machine_facts
from dg_moe.bench.output import write_json
from dg_moe.bench.timing import describe_error
from dg_moe.reference import calc_diff

if TYPE_CHECKING:  # transformers is imported when the tool runs, after its arguments are checked
    from transformers import PreTrainedModel, Qwen3MoeConfig

SCHEMA = "dg_moe.tools.bench_transformers/1"

# From the checkpoints' config.json (Qwen/Qwen3-30B-A3B, Qwen/Qwen3-235B-A22B); every layer of both is
# an MoE layer, so the dense intermediate_size is never used.
SHAPES: dict[str, dict[str, int]] = {
    "qwen3-30b-a3b": {"hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
                      "num_experts": 128, "num_experts_per_tok": 8, "num_attention_heads": 32,
                      "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936},
    "qwen3-235b-a22b": {"hidden_size": 4096, "intermediate_size": 12288, "moe_intermediate_size": 1536,
                        "num_experts": 128, "num_experts_per_tok": 8, "num_attention_heads": 64,
                        "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936},
    # The smallest sizes fused_moe takes (H and I multiples of 128), for the CPU smoke run.
    "tiny": {"hidden_size": 256, "intermediate_size": 256, "moe_intermediate_size": 128, "num_experts": 8,
             "num_experts_per_tok": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
             "vocab_size": 512},
}

DEFAULTS: dict[str, Any] = {"models": ["qwen3-30b-a3b", "qwen3-235b-a22b"], "experts": ["bf16", "fp8"], "layers": 2,
                            "prefill": [512, 4096], "decode": [1, 8, 64], "context": 128, "iters": 20, "warmup": 3}
# 32 and 160 tokens run fused_moe's masked and contiguous layouts (mode "auto" switches above 128).
SMOKE: dict[str, Any] = {"models": ["tiny"], "experts": ["bf16", "fp8"], "layers": 2, "prefill": [32, 160],
                         "decode": [1, 4], "context": 16, "iters": 2, "warmup": 1}

REFERENCE = {"bf16": "grouped_mm", "fp8": "grouped_mm_bf16"}
PROFILE_ENTRIES = 25


@dataclass(frozen=True)
class Peer:
    """One timed configuration: a model and the experts implementation it runs."""

    name: str
    model: PreTrainedModel
    implementation: str
    unavailable: str | None = None  # why this peer cannot run here (reported instead of a time)

    def select(self) -> None:
        # Peers may share a model: the implementation is set before each of its forwards, untimed.
        self.model.set_experts_implementation(self.implementation)


@dataclass(frozen=True)
class Case:
    """One input: ``prepare`` runs before every forward, untimed; ``forward`` is what is timed."""

    phase: str
    tokens: int
    prepare: Callable[[], None]
    forward: Callable[[torch.nn.Module, bool], Any]


def qwen3_moe_config(shape: str, layers: int) -> Qwen3MoeConfig:
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(**SHAPES[shape], num_hidden_layers=layers, norm_topk_prob=True)


def build_model(config: Qwen3MoeConfig, device: torch.device, seed: int) -> PreTrainedModel:
    """A random-weight BF16 Qwen3-MoE, initialised on ``device`` (a CPU init of a 235B-shaped layer takes minutes)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, experts_implementation="grouped_mm")
    return model.eval()


def _experts_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if name.endswith(".experts")}


def fp8_experts_model(model: PreTrainedModel, chunk: int = 16) -> PreTrainedModel:
    """A copy of ``model`` with transformers' ``FP8Experts`` in place of its experts, as its
    ``FineGrainedFP8Config`` quantiser builds one, holding the weights transformers' ``Fp8Quantize`` gives;
    ``model``'s own experts then hold those weights dequantised (``Fp8Dequantize``), so that it is the FP8
    model's BF16 reference (tests/test_integrations_transformers.py builds its FP8 models the same way).

    ``chunk`` experts are quantised at a time: Fp8Quantize works in float32, which for a whole
    Qwen3-235B-A22B gate_up_proj would be three 6 GB temporaries.
    """
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize, Fp8Quantize, replace_with_fp8_linear
    from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer

    config = FineGrainedFP8Config()
    quantizer = FineGrainedFP8HfQuantizer(config)
    quantize, dequantize = Fp8Quantize(quantizer), Fp8Dequantize(quantizer)
    sources = _experts_modules(model)
    # The copy's experts are replaced right after: copying their BF16 weights first would double the peak memory.
    memo: dict[int, Any] = {id(p): None for experts in sources.values() for p in experts.parameters()}
    fp8 = copy.deepcopy(model, memo)
    # Only the experts become FP8: transformers' FP8Linear for the other layers needs its GPU kernels.
    replace_with_fp8_linear(fp8, modules_to_not_convert=[r"(?!.*\.experts$).*"], quantization_config=config,
                            pre_quantized=True)
    with torch.no_grad():
        for name, source in sources.items():
            target = fp8.get_submodule(name)
            target.to_empty(device=model.device)
            for proj in ("gate_up_proj", "down_proj"):
                scale = f"{proj}_scale_inv"
                weight = getattr(source, proj)
                for start in range(0, weight.shape[0], chunk):
                    part = weight[start:start + chunk]
                    quantized = quantize.convert({proj: part})
                    getattr(target, proj)[start:start + chunk].copy_(quantized[proj])
                    getattr(target, scale)[start:start + chunk].copy_(quantized[scale])
                    pair = {proj: [quantized[proj]], scale: [quantized[scale]]}
                    part.copy_(dequantize.convert(pair)[proj][0])
    return fp8


def _cache_argument(model: torch.nn.Module) -> str:
    # transformers renamed past_key_values to cache after 5.17 (the old name warns until 5.40).
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _tokens(shape: tuple[int, ...], vocab: int, device: torch.device, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def prefill_case(tokens: int, config: Qwen3MoeConfig, device: torch.device, seed: int) -> Case:
    ids = _tokens((1, tokens), config.vocab_size, device, seed)

    def forward(model: torch.nn.Module, hidden: bool) -> Any:
        return model(input_ids=ids, use_cache=False, logits_to_keep=1, output_hidden_states=hidden)

    return Case("prefill", tokens, lambda: None, forward)


def decode_case(batch: int, context: int, config: Qwen3MoeConfig, device: torch.device, seed: int,
                filler: Peer) -> Case:
    """``batch`` sequences of ``context`` tokens prefilled by ``filler`` into a StaticCache, then one step.

    Every peer decodes from the same cached keys and values, so their logits differ only by their own step.
    StaticCache advances its own write position (a device counter) on every update: ``prepare`` rewinds it
    to ``context``, which keeps the shapes and addresses of the step fixed, as a CUDA graph needs.
    """
    from transformers import StaticCache

    cache = StaticCache(config=config, max_cache_len=context + 1)
    name = _cache_argument(filler.model)
    step = _tokens((batch, 1), config.vocab_size, device, seed)
    positions = torch.full((batch, 1), context, device=device)
    filler.select()
    filler.model(input_ids=_tokens((batch, context), config.vocab_size, device, seed + 1), use_cache=True,
                 logits_to_keep=1, **{name: cache})

    def rewind() -> None:
        for layer in cache.layers:
            layer.cumulative_length.fill_(context)

    def forward(model: torch.nn.Module, hidden: bool) -> Any:
        return model(input_ids=step, position_ids=positions, use_cache=True, output_hidden_states=hidden,
                     **{name: cache})

    return Case("decode", batch, rewind, forward)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(fn: Callable[[], object], device: torch.device) -> tuple[float, float, float]:
    """(forward ms, wall ms, host ms) of one call of ``fn`` on an idle device: CUDA events bracket it
    (on CPU the wall time stands in), the host time ends when the call returns."""
    _synchronize(device)
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        ms = (time.perf_counter() - start) * 1e3
        return ms, ms, ms
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start = time.perf_counter()
    begin.record()
    fn()
    returned = time.perf_counter()
    end.record()
    end.synchronize()
    done = time.perf_counter()
    return begin.elapsed_time(end), (done - start) * 1e3, (returned - start) * 1e3


def graph_time(peer: Peer, case: Case, iters: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """Median ms of the decode step replayed from a CUDA graph, and the logits of the last replay."""
    peer.select()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm on a side stream, as torch.cuda.graph's documentation asks
        for _ in range(2):
            case.prepare()
            case.forward(peer.model, False)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    case.prepare()
    with torch.cuda.graph(graph):
        out = case.forward(peer.model, False)
    samples = []
    for _ in range(iters):
        case.prepare()
        samples.append(time_forward(graph.replay, device)[0])
    return statistics.median(samples), out.logits.float().clone()


def profile_step(peer: Peer, case: Case, calls: int, device: torch.device) -> list[dict[str, object]]:
    """The functions the host runs in one forward, heaviest own time first (cProfile over ``calls`` forwards)."""
    peer.select()
    profile = cProfile.Profile()
    for _ in range(calls):
        case.prepare()
        _synchronize(device)
        profile.enable()
        case.forward(peer.model, False)
        profile.disable()
    _synchronize(device)
    stats = pstats.Stats(profile).stats
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:PROFILE_ENTRIES]
    return [{"function": _function_name(func), "calls": round(nc / calls, 2), "tottime_us": round(tt / calls * 1e6, 1),
             "cumtime_us": round(ct / calls * 1e6, 1)} for func, (_cc, nc, tt, ct, _callers) in rows]


def _function_name(func: tuple[str, int, str]) -> str:
    path, line, name = func
    short = "/".join(path.split(os.sep)[-2:]) if path and path != "~" else ""
    return f"{short}:{line}({name})" if short else name


def _outputs(out: Any) -> dict[str, torch.Tensor]:
    return {"logits": out.logits.float().clone(), "hidden": out.hidden_states[-1].float().clone()}


def run_case(case: Case, peers: list[Peer], reference: str, args: argparse.Namespace,
             device: torch.device) -> dict[str, dict[str, object]]:
    """Every peer's times and differences to ``reference`` on one case."""
    results: dict[str, dict[str, object]] = {}
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    live: list[Peer] = []
    for peer in peers:
        if peer.unavailable:
            results[peer.name] = {"error": peer.unavailable}
            continue
        try:
            peer.select()
            case.prepare()
            outputs[peer.name] = _outputs(case.forward(peer.model, True))  # also the first warm-up forward
            for _ in range(args.warmup - 1):
                case.prepare()
                case.forward(peer.model, False)
            _synchronize(device)
        except Exception as err:  # a peer that cannot run reports why instead of a time
            results[peer.name] = {"error": describe_error(err)}
            continue
        live.append(peer)
        results[peer.name] = {}
    samples: dict[str, list[tuple[float, float, float]]] = {peer.name: [] for peer in live}
    # Rounds of one forward per peer: drift over the run falls on every peer alike.
    for _ in range(args.iters):
        for peer in live:
            peer.select()
            case.prepare()
            samples[peer.name].append(time_forward(lambda: case.forward(peer.model, False), device))
    for peer in live:
        ms, wall, host = zip(*samples[peer.name], strict=True)
        entry = results[peer.name]
        entry.update(ms=statistics.median(ms), wall_ms=statistics.median(wall), host_ms=statistics.median(host))
        if reference in outputs:
            for what in ("logits", "hidden"):
                entry[f"{what}_diff"] = calc_diff(outputs[peer.name][what], outputs[reference][what])
        if args.graph and case.phase == "decode":
            try:
                entry["graph_ms"], replayed = graph_time(peer, case, args.iters, device)
                entry["graph_vs_eager"] = calc_diff(replayed, outputs[peer.name]["logits"])
            except Exception as err:  # capture can fail where the forward reads a device value on the host
                entry["graph_error"] = describe_error(err)
        if args.profile and case.phase == "decode":
            entry["profile"] = profile_step(peer, case, args.iters, device)
    return results


def model_peers(shape: str, experts: str, args: argparse.Namespace,
                device: torch.device) -> tuple[Qwen3MoeConfig, list[Peer]]:
    """The config of one (shape, experts format) and its peers, on freshly built models."""
    config = qwen3_moe_config(shape, args.layers)
    base = build_model(config, device, args.seed)
    if experts == "bf16":
        return config, [Peer("grouped_mm", base, "grouped_mm"), Peer("dg_moe", base, "dg_moe"),
                        Peer("dg_moe_bf16", base, "dg_moe_bf16")]
    fp8 = fp8_experts_model(base)
    # Its Triton kernel comes from the Hugging Face hub (the kernels package) and runs on CUDA only.
    no_kernel = "n/a (transformers' FP8 grouped_mm runs the hub's Triton finegrained-fp8 kernel: CUDA only)"
    return config, [Peer("grouped_mm_bf16", base, "grouped_mm"),
                    Peer("grouped_mm", fp8, "grouped_mm", None if device.type == "cuda" else no_kernel),
                    Peer("dg_moe", fp8, "dg_moe")]


def run_model(shape: str, experts: str, args: argparse.Namespace, device: torch.device,
              record: Callable[[dict[str, Any]], None]) -> None:
    """Every case of one (shape, experts format); the models are freed when it returns."""
    # Built outside inference_mode, as from_pretrained builds a model: the weights keep their version counters.
    config, peers = model_peers(shape, experts, args, device)
    reference = REFERENCE[experts]
    filler = next(peer for peer in peers if peer.name == reference)
    with torch.inference_mode():
        cases = [prefill_case(t, config, device, args.seed) for t in args.prefill]
        cases += [decode_case(b, args.context, config, device, args.seed, filler) for b in args.decode]
        for case in cases:
            results = run_case(case, peers, reference, args, device)
            gm, dg = results.get("grouped_mm", {}), results.get("dg_moe", {})
            record({"model": shape, "experts": experts, "layers": args.layers, "phase": case.phase,
                    "tokens": case.tokens, "context": args.context if case.phase == "decode" else None,
                    "reference": reference, "speedup": gm["ms"] / dg["ms"] if "ms" in gm and "ms" in dg else None,
                    "peers": results})


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"token counts must be positive, got {text!r}")
    return values


def _choices(allowed: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return values
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny model and sizes of the CPU test (smoke defaults in brackets); options given "
                             "still win")
    parser.add_argument("--models", type=_choices(list(SHAPES)), help=f"comma-separated {_defaults('models')}")
    parser.add_argument("--experts", type=_choices(["bf16", "fp8"]), help=f"comma-separated {_defaults('experts')}")
    parser.add_argument("--layers", type=int, help=f"decoder layers, all MoE {_defaults('layers')}")
    parser.add_argument("--prefill", type=_int_list, help=f"prefill lengths, one sequence {_defaults('prefill')}")
    parser.add_argument("--decode", type=_int_list, help=f"decode batches, one token each {_defaults('decode')}")
    parser.add_argument("--context", type=int, help=f"tokens cached per decoding sequence {_defaults('context')}")
    parser.add_argument("--iters", type=int, help=f"timed forwards per peer and case {_defaults('iters')}")
    parser.add_argument("--warmup", type=int, help=f"forwards before timing, the first one compared "
                                                   f"{_defaults('warmup')}")
    parser.add_argument("--graph", action="store_true", help="also replay each decode step from a CUDA graph")
    parser.add_argument("--profile", action="store_true", help="cProfile each peer's decode step (top functions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write every result, with the machine's facts, to PATH")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a torch device; use cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; pass --device cpu (with --smoke for the tiny model)")
    if args.graph and device.type != "cuda":
        parser.error("--graph captures CUDA graphs; it needs --device cuda")
    for name in ("layers", "context", "iters", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def _defaults(key: str) -> str:
    def shown(value: object) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"({shown(DEFAULTS[key])}; [{shown(SMOKE[key])}])"


HEADER = (f"{'model':<16} {'experts':<7} {'phase':<7} {'tokens':>6} {'grouped_mm ms':>13} {'dg_moe ms':>10} "
          f"{'gm/dg':>6} {'dg host ms':>10} {'logits diff':>11} {'hidden diff':>11}  notes")


def _number(entry: dict[str, Any], key: str, spec: str) -> str:
    value = entry.get(key)
    return format(value, spec) if isinstance(value, float) else "n/a"


def format_row(row: dict[str, Any]) -> str:
    """One line of the table: dg_moe against transformers' grouped_mm, the diffs against the reference."""
    peers = row["peers"]
    gm, dg = peers.get("grouped_mm", {}), peers.get("dg_moe", {})
    notes = [f"{name}: {entry['error']}" for name, entry in peers.items() if "error" in entry]
    if row["reference"] != "grouped_mm":
        notes.append(f"diffs vs {row['reference']} ({_number(peers[row['reference']], 'ms', '.3f')} ms)")
    bf16 = peers.get("dg_moe_bf16", {})
    if "ms" in bf16:
        ratio = f", gm/dg {gm['ms'] / bf16['ms']:.2f}" if "ms" in gm else ""
        notes.append(f"dg_moe_bf16 {bf16['ms']:.3f} ms{ratio}, logits diff {_number(bf16, 'logits_diff', '.1e')}")
    for name in ("grouped_mm", "dg_moe", "dg_moe_bf16"):
        entry = peers.get(name, {})
        if "graph_ms" in entry:
            notes.append(f"{name} graph {entry['graph_ms']:.3f} ms")
        elif "graph_error" in entry:
            notes.append(f"{name} graph: {entry['graph_error']}")
    speedup = f"{row['speedup']:.2f}" if row["speedup"] else "n/a"
    return (f"{row['model']:<16} {row['experts']:<7} {row['phase']:<7} {row['tokens']:>6} "
            f"{_number(gm, 'ms', '.3f'):>13} {_number(dg, 'ms', '.3f'):>10} {speedup:>6} "
            f"{_number(dg, 'host_ms', '.3f'):>10} {_number(dg, 'logits_diff', '.1e'):>11} "
            f"{_number(dg, 'hidden_diff', '.1e'):>11}  {'; '.join(notes)}").rstrip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    import transformers

    from dg_moe.integrations.transformers import register

    register()
    doc: dict[str, Any] = {"schema": SCHEMA, "transformers": transformers.__version__, "args": vars(args),
                           "rows": []}

    def record(row: dict[str, Any]) -> None:
        doc["rows"].append(row)
        print(format_row(row), flush=True)
        if args.profile:
            print_profile(row)
        doc["machine"] = machine_facts()
        if args.json:
            # Rewritten after each case: a run cut short still leaves what it measured.
            write_json(args.json, doc)

    print(HEADER, flush=True)
    for shape in args.models:
        for experts in args.experts:
            run_model(shape, experts, args, device, record)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        print(f"JSON: {args.json}")
    return 1 if any("error" in row["peers"]["dg_moe"] for row in doc["rows"]) else 0


def print_profile(row: dict[str, Any], lines: int = 12) -> None:
    for name, entry in row["peers"].items():
        if "profile" not in entry:
            continue
        print(f"  {name}: host functions per forward, own time first (us own / us cumulative / calls)")
        for item in entry["profile"][:lines]:
            print(f"    {item['tottime_us']:>9.1f} {item['cumtime_us']:>9.1f} {item['calls']:>7}  {item['function']}")


if __name__ == "__main__":
    sys.exit(main())
