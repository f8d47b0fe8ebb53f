"""Long CUDA-graph replay soak of the fused MoE layer (issue 19.4), GPU only.

    python3 tools/graph_replay_soak.py [--steps 1000] [--seed S]    1000 replays of each graph, every one checked
    python3 tools/graph_replay_soak.py --sample 4                   4 replays of each: the run to put under memcheck

Two captured layers, replayed with fresh random routing each step and checked against the float64 MoE
reference (dg_moe.moe.reference_moe) after every replay:

- masked: DecodeGraphRunner (dg_moe/moe/decode_graph.py) over a FusedMoE, batch sizes 1/4/16/32 with
  max_m = 8, so the busier experts receive more entries than the captured capacity: those are dropped
  first-come-first-kept, and the graph's overflow counts must equal the drops the policy predicts (the
  reference then sees only the kept entries). Token counts are random in [1, 32], so every captured size
  replays with unused padded slots.
- contiguous: fused_moe(mode="contiguous") (psum-form GEMMs) captured for T = 48 tokens. The contiguous
  layout's capacity follows from shapes and it drops nothing, so its edge counts are: every entry on one
  expert (the largest segment possible), every slot -1 (all experts empty), ids past the last expert
  (counted as -1 on CUDA), and random skew in between.

Every 10th replay is also compared bitwise with an eager call on the same inputs (replays must be
deterministic and equal to eager). The seed is printed first; a failure names the layer and the step.
Exit status 0 only when every replay of both layers passed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

E, H, INTER, TOP_K = 8, 256, 128, 2
LIMIT = 1e-3


def _layer(seed: int):
    from dg_moe.moe import quantize_expert_weights as quantise

    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(E, 1, 1, generator=g) + 0.5
    w13 = quantise(torch.randn(E, 2 * INTER, H, generator=g) * mag / H**0.5)
    w2 = quantise(torch.randn(E, H, INTER, generator=g) * mag / INTER**0.5)
    return w13, w2


def _reference(hidden, w13, w2, ids, weights):
    from dg_moe.layout import per_token_cast_to_fp8
    from dg_moe.moe import reference_moe

    return reference_moe(per_token_cast_to_fp8(hidden), w13, w2, ids, weights)


def _check(out, want, what: str) -> float:
    from dg_moe.reference import calc_diff

    out = out.cpu().double()
    if not torch.isfinite(out).all():
        raise AssertionError(f"{what}: non-finite output")
    if not want.any():  # every slot -1: the output must be exactly zero
        if out.any():
            raise AssertionError(f"{what}: no entry routed, yet a non-zero output")
        return 0.0
    diff = calc_diff(out, want)
    if not diff < LIMIT:
        raise AssertionError(f"{what}: similarity error {diff:.2e} >= {LIMIT}")
    return diff


def _routing(num_tokens: int, g: torch.Generator, kind: str):
    """int32 ids [T, k] (distinct per token unless -1) and float32 weights for one replay."""
    scores = torch.rand(num_tokens, E, generator=g)
    if kind == "skewed":  # a few hot experts
        hot = int(torch.randint(1, E + 1, (1,), generator=g))
        scores[:, hot:] -= 1.0
    weights, ids = scores.softmax(-1).topk(TOP_K, dim=-1)
    drop = float(torch.rand(1, generator=g)) * 0.3
    ids = torch.where(torch.rand(ids.shape, generator=g) < drop, -1, ids)
    if kind == "one_expert":
        ids[:, 0] = int(torch.randint(0, E, (1,), generator=g))
        ids[:, 1:] = -1
    elif kind == "all_minus_one":
        ids[:] = -1
    elif kind == "out_of_range":  # past the last expert: -1 on CUDA (the CPU reference sees -1)
        ids[::3, 0] = E + int(torch.randint(0, 1000, (1,), generator=g))
    return ids.to(torch.int32), weights


KINDS = ("skewed", "uniform", "one_expert", "all_minus_one", "out_of_range")


def _hidden(num_tokens: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(num_tokens, H, generator=g) * (torch.rand(num_tokens, 1, generator=g) * 4 + 0.1)
    return x.to(torch.bfloat16)


def kept_entries(ids: torch.Tensor, max_m: int) -> tuple[torch.Tensor, list[int]]:
    """The masked routing's policy: per expert, the first ``max_m`` entries in (token, slot) order are kept.
    Returns the ids with dropped entries set to -1, and the drops per expert."""
    flat = ids.flatten().tolist()
    seen = [0] * E
    kept = []
    for e in flat:
        if 0 <= e < E:
            seen[e] += 1
            kept.append(e if seen[e] <= max_m else -1)
        else:
            kept.append(-1)
    return torch.tensor(kept, dtype=ids.dtype).view_as(ids), [max(0, c - max_m) for c in seen]


class MaskedGraph:
    """DecodeGraphRunner over a FusedMoE whose max_m is below the larger batch sizes."""

    def __init__(self, batch_sizes=(1, 4, 16, 32), max_m: int = 8, seed: int = 0) -> None:
        from dg_moe.moe import FusedMoE
        from dg_moe.moe.decode_graph import DecodeGraphRunner

        self.w13, self.w2 = _layer(seed)
        self.g = torch.Generator().manual_seed(seed + 1)
        module = FusedMoE(E, H, INTER, TOP_K, device="cuda")
        with torch.no_grad():
            for param, value in zip((module.w13_weight, module.w13_weight_scale_inv, module.w2_weight,
                                     module.w2_weight_scale_inv), (*self.w13, *self.w2), strict=True):
                param.copy_(value)
        self.max_m = max_m
        self.runner = DecodeGraphRunner(module, batch_sizes=batch_sizes, max_m=max_m)
        self.largest = max(batch_sizes)
        self.overflowed = 0
        self.worst = 0.0

    def step(self, step: int) -> None:
        import dg_moe

        if step == 0:  # a batch above every captured size must raise, never replay out of bounds
            over = self.largest + 1
            try:
                self.runner(torch.zeros(over, H, dtype=torch.bfloat16, device="cuda"),
                            torch.zeros(over, TOP_K, dtype=torch.int32, device="cuda"),
                            torch.zeros(over, TOP_K, device="cuda"))
            except ValueError:
                pass
            else:
                raise AssertionError(f"DecodeGraphRunner replayed {over} tokens, above its largest size")
        num_tokens = int(torch.randint(1, self.largest + 1, (1,), generator=self.g))
        kind = KINDS[step % len(KINDS)] if step < 2 * len(KINDS) else ("skewed" if step % 2 else "uniform")
        hidden = _hidden(num_tokens, self.g)
        ids, weights = _routing(num_tokens, self.g, kind)
        out = self.runner(hidden.cuda(), ids.cuda(), weights.cuda()).clone()
        overflow = self.runner.overflow(num_tokens).cpu().tolist()
        kept, dropped = kept_entries(ids, self.max_m)
        what = f"masked replay {step} (T={num_tokens}, {kind})"
        if overflow != dropped:
            raise AssertionError(f"{what}: overflow {overflow} != the policy's drops {dropped}")
        self.overflowed += any(dropped)
        self.worst = max(self.worst, _check(out, _reference(hidden, self.w13, self.w2, kept, weights), what))
        if step % 10 == 0:
            size = self.runner.graph_for(num_tokens)
            pad = size - num_tokens
            eager = dg_moe.fused_moe(
                torch.cat([hidden, torch.zeros(pad, H, dtype=torch.bfloat16)]).cuda(),
                *(t.cuda() for t in (*self.w13, *self.w2)),
                torch.cat([ids, torch.full((pad, TOP_K), -1, dtype=torch.int32)]).cuda(),
                torch.cat([weights, torch.zeros(pad, TOP_K)]).cuda(), mode="masked", max_m=self.max_m,
            )[:num_tokens]
            if not torch.equal(out.view(torch.int16), eager.view(torch.int16)):
                raise AssertionError(f"{what}: replay differs bitwise from the eager call")

    def summary(self) -> str:
        return f"{self.overflowed} replays overflowed max_m={self.max_m}, worst similarity error {self.worst:.2e}"


class ContiguousGraph:
    """fused_moe(mode="contiguous") for a fixed token count, captured once, replayed with new routing."""

    def __init__(self, num_tokens: int = 48, seed: int = 0) -> None:
        import dg_moe

        self.w13, self.w2 = _layer(seed)
        self.weights_dev = [t.cuda() for t in (*self.w13, *self.w2)]
        self.g = torch.Generator().manual_seed(seed + 1)
        self.num_tokens = num_tokens
        self.hidden = torch.zeros(num_tokens, H, dtype=torch.bfloat16, device="cuda")
        self.ids = torch.full((num_tokens, TOP_K), -1, dtype=torch.int32, device="cuda")
        self.topk_weights = torch.zeros(num_tokens, TOP_K, device="cuda")
        self.graph = torch.cuda.CUDAGraph()
        self.worst = 0.0
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(dg_moe)  # compiles every kernel outside the capture
            with torch.cuda.graph(self.graph, stream=side):
                self.out = self._forward(dg_moe)
        torch.cuda.current_stream().wait_stream(side)

    def _forward(self, dg_moe):
        return dg_moe.fused_moe(self.hidden, *self.weights_dev, self.ids, self.topk_weights, mode="contiguous")

    def step(self, step: int) -> None:
        import dg_moe

        kind = KINDS[step % len(KINDS)] if step < 2 * len(KINDS) else ("skewed" if step % 2 else "uniform")
        hidden = _hidden(self.num_tokens, self.g)
        ids, weights = _routing(self.num_tokens, self.g, kind)
        self.hidden.copy_(hidden)
        self.ids.copy_(ids)
        self.topk_weights.copy_(weights)
        self.graph.replay()
        out = self.out.clone()
        what = f"contiguous replay {step} ({kind})"
        ref_ids = torch.where((ids >= 0) & (ids < E), ids, -1)
        self.worst = max(self.worst, _check(out, _reference(hidden, self.w13, self.w2, ref_ids, weights), what))
        if step % 10 == 0:
            eager = dg_moe.fused_moe(hidden.cuda(), *self.weights_dev, ids.cuda(), weights.cuda(), mode="contiguous")
            if not torch.equal(out.view(torch.int16), eager.view(torch.int16)):
                raise AssertionError(f"{what}: replay differs bitwise from the eager call")

    def summary(self) -> str:
        return f"T={self.num_tokens}, worst similarity error {self.worst:.2e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--steps", type=int, default=1000, help="replays of each graph (default 1000)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="only N replays of each graph (for a run under compute-sanitizer memcheck)")
    parser.add_argument("--seed", type=int, default=1904)
    parser.add_argument("--only", choices=("masked", "contiguous"), default=None)
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("graph_replay_soak: no CUDA device (this soak runs on an SM90 GPU)")
    steps = opts.sample if opts.sample is not None else opts.steps
    print(f"graph_replay_soak: seed {opts.seed}, {steps} replays per graph", flush=True)
    results = []
    for name, make in (("masked", lambda: MaskedGraph(seed=opts.seed)),
                       ("contiguous", lambda: ContiguousGraph(seed=opts.seed + 100))):
        if opts.only not in (None, name):
            continue
        start = time.perf_counter()
        soak = make()
        for step in range(steps):
            soak.step(step)
        torch.cuda.synchronize()
        line = f"{name}: {steps} replays ok in {time.perf_counter() - start:.1f} s; {soak.summary()}"
        print(line, flush=True)
        results.append(line)
    print(f"graph_replay_soak: PASS ({'; '.join(r.split(':')[0] for r in results)}), seed {opts.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
