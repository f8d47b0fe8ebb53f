"""Decode through CUDA graphs: the masked fused MoE captured once per batch size, then replayed.

A decode step's MoE is a dozen small kernels (routing, two grouped GEMMs, activation, reduce) whose
launch cost rivals their run time at a few tokens. :class:`DecodeGraphRunner` captures
``fused_moe(mode="masked")`` for each batch size of a list into graphs that share one memory pool,
and a call copies its inputs into the captured buffers of the smallest batch size that fits, pads
the unused token slots with expert -1 (routed nowhere), and replays. The masked path reads no device
value on the host and every shape follows from the batch size, which is what makes it capturable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .fused import fused_moe, fused_moe_bf16
from .module import FusedMoE

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
"""Batch sizes captured by default: powers of two up to DeepEP's default low-latency batch per rank."""


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor  # bf16 [B, H]
    topk_ids: torch.Tensor  # int32 [B, k]
    topk_weights: torch.Tensor  # float32 [B, k]
    out: torch.Tensor  # bf16 [B, H]
    overflow: torch.Tensor  # int32 [E]


class DecodeGraphRunner:
    """Replays ``layer``'s masked forward from CUDA graphs captured for ``batch_sizes``.

    layer: a :class:`FusedMoE` on a CUDA device, weights loaded (the graphs read the parameters in
    place, so later in-place weight updates are seen; replacing the tensors is not). A
    ``precision="bf16"`` layer captures ``fused_moe_bf16(mode="masked")``.
    batch_sizes: token counts to capture; a call with T tokens replays the smallest one >= T.
    max_m: rows per expert of the masked buffers; default each batch size itself, which drops
    nothing when a token's k experts are distinct.

    Capture happens in the constructor: each size runs once eagerly (compiling every kernel), then
    is captured on a side stream. Calls must come from the stream the runner was built on or one
    ordered after it, as for any CUDA graph.
    """

    def __init__(self, layer: FusedMoE, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, *,
                 max_m: int | None = None) -> None:
        fn = "DecodeGraphRunner"
        if not isinstance(layer, FusedMoE):
            raise TypeError(f"{fn}: layer must be a dg_moe FusedMoE, got {type(layer).__name__}")
        device = layer.w13_weight.device
        if device.type != "cuda":
            raise ValueError(f"{fn}: CUDA graphs need the layer on a CUDA device, it is on {device}; call layer.cuda()")
        sizes = sorted(set(batch_sizes))
        if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in sizes):
            raise ValueError(f"{fn}: batch_sizes must be positive ints, got {list(batch_sizes)}")
        if max_m is not None and (not isinstance(max_m, int) or max_m <= 0):
            raise ValueError(f"{fn}: max_m must be a positive int or None, got {max_m!r}")
        self.layer = layer
        self.batch_sizes = tuple(sizes)
        self.max_m = max_m
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[int, _Graph] = {}
        with torch.cuda.device(device):
            # Largest first: later, smaller captures reuse the blocks the pool already holds.
            for size in reversed(sizes):
                self._graphs[size] = self._capture(size)

    def _forward(self, g: _Graph, size: int) -> None:
        layer = self.layer
        if layer.precision == "bf16":
            g.out, g.overflow = fused_moe_bf16(
                g.hidden, layer.w13_weight, layer.w2_weight, g.topk_ids, g.topk_weights, mode="masked",
                max_m=self.max_m or size, routed_scaling_factor=layer.routed_scaling_factor, return_overflow=True,
            )
            return
        out, overflow = fused_moe(
            g.hidden, layer.w13_weight, layer.w13_weight_scale_inv, layer.w2_weight, layer.w2_weight_scale_inv,
            g.topk_ids, g.topk_weights, mode="masked", max_m=self.max_m or size,
            routed_scaling_factor=layer.routed_scaling_factor, shared_expert=layer.shared_expert,
            return_overflow=True,
        )
        g.out, g.overflow = out, overflow

    def _capture(self, size: int) -> _Graph:
        layer = self.layer
        device = layer.w13_weight.device
        g = _Graph(
            graph=torch.cuda.CUDAGraph(),
            hidden=torch.zeros(size, layer.hidden_size, dtype=torch.bfloat16, device=device),
            topk_ids=torch.full((size, layer.top_k), -1, dtype=torch.int32, device=device),
            topk_weights=torch.zeros(size, layer.top_k, dtype=torch.float32, device=device),
            out=torch.empty(0), overflow=torch.empty(0),
        )
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._forward(g, size)  # compiles every kernel: no compilation may happen under capture
            with torch.cuda.graph(g.graph, pool=self._pool, stream=side):
                self._forward(g, size)
        torch.cuda.current_stream(device).wait_stream(side)
        return g

    def graph_for(self, num_tokens: int) -> int | None:
        """The captured batch size a call with ``num_tokens`` tokens replays, or None if none fits."""
        return next((b for b in self.batch_sizes if b >= num_tokens), None)

    def __call__(self, hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                 ) -> torch.Tensor:
        """bfloat16 [T, H], the layer's output for hidden bf16 [T, H], topk_ids int [T, k] (-1: not
        local) and topk_weights float [T, k], all on the layer's device.

        The result is a view of the graph's output buffer: the next call with the same captured size
        overwrites it, so consume or copy it first. A batch larger than every captured size raises;
        run the layer eagerly (contiguous mode) for those.
        """
        fn = "DecodeGraphRunner"
        num_tokens = hidden.shape[0] if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 else None
        if num_tokens is None or hidden.dtype != torch.bfloat16 or hidden.shape[1] != self.layer.hidden_size:
            got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"{fn}: hidden must be bf16 [T, {self.layer.hidden_size}], got {got}")
        shape = (num_tokens, self.layer.top_k)
        for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{fn}: {name} must be [T, top_k] = {list(shape)}, got {got}")
        size = self.graph_for(num_tokens)
        if size is None:
            raise ValueError(
                f"{fn}: {num_tokens} tokens exceed the largest captured batch size {self.batch_sizes[-1]}; "
                "capture a larger size or run the layer eagerly"
            )
        g = self._graphs[size]
        g.hidden[:num_tokens].copy_(hidden)
        g.topk_ids[:num_tokens].copy_(topk_ids)
        g.topk_ids[num_tokens:].fill_(-1)
        g.topk_weights[:num_tokens].copy_(topk_weights)
        g.graph.replay()
        return g.out[:num_tokens]

    def overflow(self, num_tokens: int) -> torch.Tensor:
        """int32 [E] on the device: entries the last replay for ``num_tokens`` tokens dropped per expert
        (all zero unless a token repeated an expert or ``max_m`` was set below the batch size)."""
        size = self.graph_for(num_tokens)
        if size is None:
            raise ValueError(f"DecodeGraphRunner.overflow: no captured batch size holds {num_tokens} tokens")
        return self._graphs[size].overflow
