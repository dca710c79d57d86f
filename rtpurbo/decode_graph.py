"""One-token decode steps of a converted model, replayed from a CUDA graph.

At batch 1 a decode step is a few hundred small kernels, and launching them from Python costs
more than running them. With the cache in static-shape mode
(:meth:`rtpurbo.cache.HeadwiseCache.static_decode`) every step launches the same kernels with
the same shapes and arguments, reading what changes (token, positions, next retrieval slot)
from device tensors, so one step can be captured into a ``torch.cuda.CUDAGraph`` and replayed
per token.

Usage (``prompt`` (B, L) left-padded, ``mask`` (B, L))::

    cache = HeadwiseCache(model)
    prefill(model, cache, prompt[:, :-1], mask[:, :-1], chunk)
    cache.static_decode(capacity)  # >= prompt length + new tokens
    decoder = GraphedDecoder(model, cache)
    token, position = prompt[:, -1:], mask.sum(-1, keepdim=True) - 1
    for _ in range(new_tokens):
        logits = decoder.step(token, position)  # (B, 1, V)
        token, position = logits.argmax(-1), position + 1

A replay runs no Python, so the cache's Python counters (``seen``, ``r_len``, selection-stats
samples) are advanced here, by what the eager warm-up step advanced them. A step has one of two
kinds, decided on the host before it runs: retrieval heads over every key (a short cache) or over
their top-p selection (from ``SparseConfig.seqlen_threshold`` tokens on,
:meth:`HeadwiseCache.next_step_selects`); each kind gets its own warm-up and graph, so a decode
that crosses the threshold switches graphs without recapturing. On the CPU (or with
``graph=False``) the "replay" is an eager step whose own counter updates are replaced by that
same bookkeeping, so the CPU tests exercise it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ._compat import cache_kwarg
from .cache import HeadwiseCache


def eager_warmup(fn: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
    """``fn()`` run eagerly; on CUDA on a side stream, as warm-ups before a capture should be."""
    if device.type != "cuda":
        return fn()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        out = fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    return out


def capture(fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """(graph, output): ``fn`` recorded into a CUDA graph; each ``graph.replay()`` rewrites ``output``."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


class GraphedDecoder:
    """Decode steps of ``model`` through ``cache`` (already in static decode mode).

    Args:
        graph: capture a CUDA graph (default: when the model is on a CUDA device).
        warmup: eager steps before the capture (at least 1: it creates the lazily allocated
            state, compiles / autotunes kernels and measures the counter increments of a step).
    """

    def __init__(self, model: nn.Module, cache: HeadwiseCache, graph: bool | None = None, warmup: int = 1) -> None:
        if cache.static_capacity is None:
            raise ValueError("GraphedDecoder needs a HeadwiseCache in static decode mode (cache.static_decode)")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.device = next(model.parameters()).device
        self.use_graph = self.device.type == "cuda" if graph is None else graph
        if self.use_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, got {self.device}")
        self.model, self.cache, self.warmup = model, cache, warmup
        self.steps = 0
        self.input_ids: torch.Tensor | None = None  # (B, 1) int64, static
        self.position_ids: torch.Tensor | None = None  # (B, 1) int64, static; -1 = padding row
        self.kinds: dict[bool, _StepKind] = {}  # selects -> its warm-up count, counter increments, graph
        self.in_step = False  # inside a step's forward (warm-up, capture or CPU stand-in)

    def _forward(self) -> torch.Tensor:
        kw = {cache_kwarg(): self.cache}
        self.in_step = True  # the model's forward runs the step itself, not through this decoder again
        try:
            return self.model(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=True, **kw).logits
        finally:
            self.in_step = False

    def _load(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> None:
        ids = input_ids.to(self.device, torch.long)
        pos = position_ids.to(self.device, torch.long)
        if self.input_ids is None:
            self.input_ids, self.position_ids = ids.clone(), pos.clone()
        elif ids.shape != self.input_ids.shape or pos.shape != self.position_ids.shape:
            raise ValueError(f"shapes changed: {tuple(ids.shape)}, {tuple(pos.shape)} vs {tuple(self.input_ids.shape)}")
        else:
            self.input_ids.copy_(ids)
            self.position_ids.copy_(pos)

    def _capture(self, kind: "_StepKind") -> None:
        """Record one step into a CUDA graph. Capturing runs no kernel, so the counters are put back."""
        before, stats = self.cache.host_counters(), set(self.cache.stats.key_sums)
        kind.graph, kind.logits = capture(self._forward)
        if self._difference(before) != kind.delta or set(self.cache.stats.key_sums) != stats:
            raise RuntimeError("the captured step does not match the warm-up step; cannot replay it")
        self.cache.set_host_counters(before)
        self.cache._forward = None  # its tensors belong to the graph now

    def _difference(self, before: dict[str, list[int]]) -> dict[str, list[int]]:
        after = self.cache.host_counters()
        return {key: [a - b for a, b in zip(after[key], before[key])] for key in after}

    def _advance(self, before: dict[str, list[int]], delta: dict[str, list[int]]) -> None:
        """Set the counters to ``before`` plus one step."""
        self.cache.set_host_counters({key: [b + d for b, d in zip(before[key], delta[key])] for key in before})

    def _check_room(self) -> None:
        capacity = self.cache.static_capacity
        if any(layer is not None and not layer.r_ring and layer.r_len >= capacity for layer in self.cache.store):
            raise ValueError(f"static decode cache is full ({capacity} slots)")

    @property
    def graphs(self) -> int:
        """CUDA graphs captured so far (one per step kind that ran past its warm-up)."""
        return sum(kind.graph is not None for kind in self.kinds.values())

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, 1), position_ids (B, 1) (-1 = padding row) -> logits (B, 1, V), a fresh tensor."""
        self._check_room()
        self._load(input_ids, position_ids)
        kind = self.kinds.setdefault(self.cache.next_step_selects(), _StepKind())
        before = self.cache.host_counters()
        if kind.steps < self.warmup:
            logits = eager_warmup(self._forward, self.device)
            delta = self._difference(before)
            if kind.delta is not None and delta != kind.delta:
                raise RuntimeError(f"decode steps advance the cache counters unevenly: {delta} vs {kind.delta}")
            kind.delta = delta
        elif self.use_graph:
            if kind.graph is None:
                self._capture(kind)
            kind.graph.replay()
            logits = kind.logits.clone()
            self._advance(before, kind.delta)
        else:  # CPU stand-in for a replay: the step's own Python bookkeeping is replaced by _advance
            logits = self._forward()
            self._advance(before, kind.delta)
        kind.steps += 1
        self.steps += 1
        return logits


class _StepKind:
    """Warm-up count, counter increments of one step, and the captured graph of one kind of step."""

    def __init__(self) -> None:
        self.steps = 0
        self.delta: dict[str, list[int]] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # (B, 1, V), the graph's output
