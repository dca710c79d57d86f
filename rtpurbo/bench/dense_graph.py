"""The dense baseline's fastest decode: Hugging Face ``StaticCache``, one step replayed from a CUDA graph.

At batch 1 an eager Hugging Face decode step is launch-bound too, so the sparse model's graphed
decode (:class:`rtpurbo.decode_graph.GraphedDecoder`) is compared with a graphed dense one, not
with eager dense. This is the usual recipe for fast dense decode in transformers (static cache
+ graph capture, what ``torch.compile(mode="reduce-overhead")`` does), without a compile.

The prompt is prefilled into a ``DynamicCache`` as in the eager runs (a ``StaticCache`` prefill
would build an ``L x capacity`` mask), then copied into a ``StaticCache`` of ``capacity`` slots,
layer by layer, freeing each copied layer. The static cache keeps its write position in a device
tensor and every step has the same shapes (attention over all ``capacity`` slots, later ones
masked), so a step has no host sync and can be captured.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import DynamicCache, StaticCache

from .._compat import cache_kwarg
from ..decode_graph import capture, eager_warmup


def static_from_dynamic(model: nn.Module, prefilled: DynamicCache, capacity: int) -> StaticCache:
    """A ``StaticCache`` of ``capacity`` slots holding ``prefilled``'s keys and values; ``prefilled`` is emptied."""
    length = prefilled.get_seq_length()
    if capacity <= length:
        raise ValueError(f"capacity {capacity} leaves no room after the {length} prefilled tokens")
    static = StaticCache(config=model.config, max_cache_len=capacity)
    for index, layer in enumerate(prefilled.layers):
        static.update(layer.keys, layer.values, index)
        layer.keys = layer.values = None  # free the copy as we go: peak = one layer more than the static cache
        layer.is_initialized = False
    return static


class GraphedDenseDecoder:
    """Decode steps of an unconverted model over a static copy of its prefilled cache.

    Same interface as :class:`rtpurbo.decode_graph.GraphedDecoder` (``step``), batch 1. The first
    ``warmup`` steps run eagerly; the next one is captured, and later steps are replays. Without
    a CUDA device the steps stay eager (the CPU tests check the static copy and the step).
    """

    def __init__(self, model: nn.Module, prefilled: DynamicCache, capacity: int, warmup: int = 1) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.model, self.warmup = model, warmup
        self.device = next(model.parameters()).device
        self.cache = static_from_dynamic(model, prefilled, capacity)
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.input_ids: torch.Tensor | None = None  # (1, 1) int64, static
        self.position_ids: torch.Tensor | None = None  # (1, 1) int64, static
        self.logits: torch.Tensor | None = None  # (1, 1, V), the graph's output

    def _forward(self) -> torch.Tensor:
        kw = {cache_kwarg(): self.cache}
        return self.model(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=True, **kw).logits

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (1, 1), position_ids (1, 1) -> logits (1, 1, V), a fresh tensor."""
        if self.input_ids is None:
            self.input_ids, self.position_ids = input_ids.clone(), position_ids.clone()
        else:
            self.input_ids.copy_(input_ids)
            self.position_ids.copy_(position_ids)
        if self.steps < self.warmup or self.device.type != "cuda":
            logits = eager_warmup(self._forward, self.device)
        else:
            if self.graph is None:
                self.graph, self.logits = capture(self._forward)  # records, runs nothing: no write yet
            self.graph.replay()
            logits = self.logits.clone()
        self.steps += 1
        return logits
