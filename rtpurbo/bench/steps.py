"""Step and timing primitives of the end-to-end benchmark: filling and sizing a cache, one forward through
the model and its cache, eager or CUDA-graphed greedy decode steps, the timer, and the SDPA backend choice.

GPU times come from CUDA events followed by a synchronisation; CPU times from ``time.perf_counter``
(:func:`timed`).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.attention import sdpa_kernel
from transformers import DynamicCache

from .._compat import cache_kwarg
from ..cache import HeadwiseCache
from ..decode_graph import GraphedDecoder
from .model_variants import Variants
from .settings import DEFAULT_SDPA, SDPA_BACKENDS

PROBE_TOKENS = 256


def cache_bytes(cache) -> int:
    """Bytes of the K/V (and indexer) tensors a cache holds."""
    if isinstance(cache, HeadwiseCache):
        return cache.allocated_bytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers if getattr(layer, "is_initialized", False)
               for t in (layer.keys, layer.values))


def fill_random(variants: Variants, cache, length: int) -> None:
    """Fill an empty cache as if ``length`` tokens had been prefilled (random K/V; see ``HeadwiseCache.fill_random``)."""
    if isinstance(cache, HeadwiseCache):
        cache.fill_random(variants.model, length)
        return
    config = variants.model.config
    weight = variants.model.get_input_embeddings().weight
    for layer in range(config.num_hidden_layers):
        shape = (1, config.num_key_value_heads, length, config.head_dim)
        keys = torch.randn(shape, dtype=weight.dtype, device=weight.device)
        values = torch.randn(shape, dtype=weight.dtype, device=weight.device)
        cache.update(keys, values, layer)
        del keys, values


# --- running it ---------------------------------------------------------------------------------------
def forward_last_logits(model: nn.Module, cache, ids: torch.Tensor, start: int) -> torch.Tensor:
    """ids (1, n) at positions ``start .. start + n - 1`` through the model and its cache -> logits (1, V) of the last."""
    positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_kwarg(): cache})
    return out.logits[:, -1]


def eager_step(model: nn.Module, cache) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Decode step through ``model`` and ``cache``: (token (1, 1), position) -> logits (1, V)."""
    return lambda token, position: forward_last_logits(model, cache, token, position)


def graphed_step(decoder: GraphedDecoder) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The same step through a :class:`GraphedDecoder` (batch 1)."""
    def step(token: torch.Tensor, position: int) -> torch.Tensor:
        return decoder.step(token, torch.full((1, 1), position, dtype=torch.long, device=token.device))[:, -1]

    return step


def greedy_decode(step: Callable[[torch.Tensor, int], torch.Tensor], token: torch.Tensor, start: int,
                  steps: int) -> torch.Tensor:
    """``steps`` greedy tokens after ``token`` (1,) at position ``start``; returns them (steps,), on the device."""
    tokens = torch.empty(steps, dtype=torch.long, device=token.device)
    for i in range(steps):
        token = step(token.view(1, 1), start + i).argmax(-1)
        tokens[i] = token[0]
    return tokens


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), milliseconds): CUDA events + synchronisation on the GPU, ``perf_counter`` on the CPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        result = fn()
        return result, 1000 * (time.perf_counter() - start)
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start_event.record()
    result = fn()
    end_event.record()
    end_event.synchronize()
    return result, start_event.elapsed_time(end_event)


def sdpa_context(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if name == DEFAULT_SDPA else sdpa_kernel([SDPA_BACKENDS[name]])


def pick_sdpa_backends(model: nn.Module, candidates: list[str], device: torch.device) -> dict[str, str]:
    """{"prefill": name, "decode": name}: per phase the first candidate SDPA backend that runs this model.

    Probed on a ``PROBE_TOKENS``-token prompt (and one decode step after it) with only that
    backend enabled; ``default`` (torch's own choice) when none runs, and always on the CPU.
    """
    if device.type != "cuda":
        return {"prefill": DEFAULT_SDPA, "decode": DEFAULT_SDPA}
    ids = torch.randint(0, model.config.vocab_size, (1, PROBE_TOKENS), device=device)

    def runs(phase: str, name: str) -> bool:
        cache = DynamicCache(config=model.config)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a refused backend warns before it raises
                if phase == "prefill":
                    with sdpa_context(name):
                        forward_last_logits(model, cache, ids, 0)
                else:
                    forward_last_logits(model, cache, ids, 0)
                    with sdpa_context(name):
                        forward_last_logits(model, cache, ids[:, -1:], PROBE_TOKENS)
            torch.cuda.synchronize(device)
            return True
        except RuntimeError:
            return False

    return {phase: next((n for n in candidates if runs(phase, n)), DEFAULT_SDPA) for phase in ("prefill", "decode")}
