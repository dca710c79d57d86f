"""End-to-end model benchmark: a whole Llama-geometry model, dense vs head-wise sparse, batch 1.

One model with random weights (``LlamaConfig`` + ``AutoModelForCausalLM.from_config``) is measured
in turn as

* ``dense``: the unconverted Hugging Face model, ``attn_implementation="sdpa"``, ``DynamicCache``.
  SDPA is restricted to one backend per phase, the first of ``sdpa_backends`` (cuDNN, flash) that
  runs a 256-token prefill, resp. one decode step, of this model; the report names it.
* ``dense-graph`` (with ``cuda_graph``): the dense model with its decode launch overhead removed,
  as the graphed sparse variants have theirs. transformers' own ``StaticCache`` cannot be that
  baseline: its decode mask makes SDPA give up GQA (``repeat_kv`` of the whole cache every step),
  26 ms vs 6 ms per token eager at 128K on an H200 (2026-11-28). So the same weights are
  converted with *every* KV head a retrieval head at top-p 1: full causal attention, exactly the
  dense model's function (prefill through the dense kernel, decode through rtpurbo's GQA split-K
  Triton kernel over all cached keys, graph-captured).
* ``sparse``: the same weights converted by :func:`rtpurbo.convert.convert` (untrained indexers,
  ``top_p``), decoding through :class:`rtpurbo.cache.HeadwiseCache`; ``sparse-max{N}`` variants
  add a ``max_tokens = N`` budget to the retrieval heads' selection; ``sparse-prefill{N}`` variants
  prefill the retrieval heads sparsely (``retrieval_prefill="sparse"``): each query block over at most
  ``N`` key blocks that the indexer ranks highest (top-p ``prefill_top_p``), plus the sink block and
  the local band. Random weights give nearly flat block scores, so ``N`` sets what is kept; the row
  records the fraction of visible key blocks kept, and the Amdahl ceiling uses it. With ``index_logit_std`` the
  indexers of every converted variant are scaled after each conversion (:func:`calibrate_indexers`)
  so that decode scores against random-filled caches are as peaked as a trained indexer's. ``sparse-two-launch``
  (``two_launch``) decodes like ``sparse`` with ``HeadwiseCache.fuse_roles`` off: a layer's local and
  retrieval heads in two launches on two streams instead of one launch.

Per context length ``L`` and variant, after ``warmup`` dropped runs, medians over ``repeats`` runs of:

* time to first token: one forward of the whole ``L``-token prompt (one shot, logits of the last
  token only) and its argmax;
* decode: ``decode_warmup`` untimed greedy steps, then ``decode_steps`` timed as one block (ms per
  token; tokens/s); with ``cuda_graph`` the rtpurbo variants decode through a static-shape cache
  replayed from a CUDA graph (:class:`rtpurbo.decode_graph.GraphedDecoder`; its eager stand-in on
  the CPU), captured during the untimed steps (``decode_warmup >= 2``);
* peak memory (``torch.cuda.max_memory_allocated``, reset before each run, weights included) and the
  KV-cache bytes the cache holds after the run.

Decode-only points (``decode_lengths``) time the decode alone the same way (medians over ``repeats``
runs after ``warmup`` dropped ones), each run after a fresh cache filled with random K/V.

GPU times come from CUDA events followed by a synchronisation; CPU times from ``time.perf_counter``.

Retrieval heads: ``round(fraction * layers * kv_heads)`` KV heads, spread evenly over the layers,
the first KV heads of their layer (weights are random, so which heads does not matter, and leading
heads keep the roles contiguous, as a ``reorder_heads`` conversion would).
"""
from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen3MoeConfig

from .._compat import cache_kwarg, set_attn_implementation, use_grouped_experts
from ..cache import HeadwiseCache
from ..config import HeadPlan, SparseConfig
from ..convert import convert, is_converted, unconvert
from ..decode_graph import GraphedDecoder
from ..families import attention_modules
from .decode_profile import profile
from .model_report import JsonLines, compare, describe, environment
from .oom import attempt, free_memory, oom_search
from .settings import (DEFAULT_SDPA, GEOMETRIES, LLAMA_31_8B, QWEN3_30B_A3B, SDPA_BACKENDS, TINY,
                       TINY_MOE, TWO_LAUNCH, ModelBenchSettings, ModelGeometry)
from .token_chunks import chunk_mlps

# what tests and benchmark scripts import from here; the geometries and settings themselves live in .settings
__all__ = ["GEOMETRIES", "LLAMA_31_8B", "QWEN3_30B_A3B", "SDPA_BACKENDS", "TINY", "TINY_MOE", "ModelBenchSettings",
           "ModelGeometry", "Variants", "attention_flop_ratio", "build_model", "conversions", "forward_last_logits",
           "run_benchmark", "spread_plan", "timed"]

PROBE_TOKENS = 256
GIB = 2**30


# --- the model ----------------------------------------------------------------------------------------
def model_config(settings: ModelBenchSettings):
    """The transformers config of ``settings.geometry`` with ``settings.layers`` layers."""
    geo = settings.geometry
    longest = max([*settings.lengths, *settings.decode_lengths, *(settings.oom_lengths if settings.oom_search else []),
                   settings.profile_length or 0])
    common = dict(
        hidden_size=geo.hidden, num_attention_heads=geo.q_heads, num_key_value_heads=geo.kv_heads,
        head_dim=geo.head_dim, intermediate_size=geo.intermediate, vocab_size=geo.vocab,
        num_hidden_layers=settings.layers, rope_theta=geo.rope_theta, tie_word_embeddings=False,
        max_position_embeddings=max(131072, longest + settings.decode_steps + settings.decode_warmup + 1),
    )
    if geo.family == "qwen3_moe":
        return Qwen3MoeConfig(**common, num_experts=geo.experts, num_experts_per_tok=geo.experts_per_token,
                              moe_intermediate_size=geo.moe_intermediate, decoder_sparse_step=1, mlp_only_layers=[],
                              norm_topk_prob=True)
    return LlamaConfig(**common)


def build_model(settings: ModelBenchSettings) -> nn.Module:
    """A causal LM of ``settings.geometry`` with ``settings.layers`` layers, random weights, eval mode."""
    config = model_config(settings)
    torch.manual_seed(settings.seed)
    with torch.device(settings.device):  # initialise on the device: no multi-GB host copy
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, settings.dtype))
    set_attn_implementation(model, "sdpa")
    if settings.geometry.experts:
        use_grouped_experts(model)  # routed experts without host syncs: CUDA-graph capturable decode
    if settings.mlp_chunk:
        chunk_mlps(model, settings.mlp_chunk)  # token-wise: same output, dense one-shot prefill fits at 1M
    return model.to(settings.device).eval()  # already there unless from_config ignored the device context


def spread_plan(num_layers: int, num_kv: int, num_q: int, fraction: float) -> HeadPlan:
    """``max(1, round(fraction * layers * kv))`` retrieval KV heads, as even over the layers as they go.

    Every layer gets ``count // layers`` heads; the ``count % layers`` extra ones go to evenly spaced
    layers. A layer's retrieval heads are its first KV heads.
    """
    count = max(1, round(fraction * num_layers * num_kv))
    per_layer = [count // num_layers] * num_layers
    extra = count % num_layers
    for i in range(extra):
        per_layer[i * num_layers // extra] += 1
    return HeadPlan(num_layers, num_kv, num_q, [list(range(n)) for n in per_layer],
                    criterion=f"benchmark: {count} KV heads spread evenly (random weights)")


DENSE_GRAPH = "dense-graph"


def conversions(settings: ModelBenchSettings, plan: HeadPlan) -> dict[str, tuple[HeadPlan, SparseConfig]]:
    """Variant name -> (head plan, sparse configuration) for every converted variant, in measuring order.

    ``dense-graph`` (with ``cuda_graph``): every KV head a retrieval head at top-p 1, i.e. full
    attention, the dense model's function (see the module docstring).
    """
    out = {}
    if settings.cuda_graph:
        geo = settings.geometry
        full = spread_plan(settings.layers, geo.kv_heads, geo.q_heads, 1.0)
        out[DENSE_GRAPH] = (full, SparseConfig(window=settings.window, sinks=settings.sinks, top_p=1.0, impl="auto",
                                               decode_impl="auto"))
    out.update({name: (plan, config) for name, config in settings.sparse_configs().items()})
    return out


FLASH_DENSE = "dense-flash"  # the dense model's TTFT with SDPA's flash backend (FlashAttention-2 class)


class Variants:
    """The one model, put in the state a variant needs: unconverted (``dense``, ``dense-flash``) or converted."""

    def __init__(self, model: nn.Module, conversions: dict[str, tuple[HeadPlan, SparseConfig]],
                 flash: bool = False, index_logit_std: float | None = None) -> None:
        self.model, self.conversions = model, conversions
        self.dense_names = ["dense"] + ([FLASH_DENSE] if flash else [])
        self.index_logit_std = index_logit_std
        self.current = "dense"

    @property
    def names(self) -> list[str]:
        return [*self.dense_names, *self.conversions]

    def use(self, name: str) -> None:
        if name == self.current:
            return
        if is_converted(self.model):
            unconvert(self.model)
        if name in self.conversions:
            convert(self.model, *self.conversions[name])  # fresh, untrained indexers
            if self.index_logit_std is not None:  # the same scales every time: a fixed calibration prompt
                calibrate_indexers(self.model, self.index_logit_std)
        self.current = name

    def new_cache(self, capacity: int):
        """An empty cache for the current variant; a head-wise cache reserves ``capacity`` retrieval slots."""
        if self.current not in self.conversions:
            return DynamicCache(config=self.model.config)
        cache = HeadwiseCache(self.model, initial_capacity=capacity)
        cache.plain_prompt = True  # every prompt here is one unpadded row at positions 0..L-1
        cache.fuse_roles = self.current != TWO_LAUNCH
        return cache


CALIBRATION_TOKENS = 32


def indexer_query_norms(model: nn.Module, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Layer index -> mean L2 norm (Hr,) of each retrieval head's indexer queries over the tokens of ids (1, n).

    One cache-free forward of the converted ``model``; a pre-hook on every attention module with an
    indexer computes its indexer queries from the layer's input as the module does
    (:meth:`SparseAttention.project`, then :meth:`SparseAttention.index_vectors`).
    """
    norms: dict[int, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        q_raw, k_raw, _ = module.project(hidden)
        q_idx, _ = module.index_vectors(q_raw, k_raw, kwargs["position_embeddings"])  # (1, Hr, n, d_idx)
        norms[module.layer_idx] = q_idx.float().norm(dim=-1).mean(dim=(0, 2))

    modules = [m for m in attention_modules(model) if getattr(m, "indexer", None) is not None]
    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    try:
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return norms


@torch.no_grad()
def calibrate_indexers(model: nn.Module, sigma: float, tokens: int = CALIBRATION_TOKENS, seed: int = 0) -> None:
    """Scale every retrieval head's indexer query weights so its queries have mean L2 norm ``sigma``.

    A query ``q`` scores N(0, I) indexer keys (those of :meth:`HeadwiseCache.fill_random`) with
    std ``|q|`` across the keys, so decode scores get std ``sigma`` logits: peaked like a trained
    indexer's (top-p ``p`` keeps a fraction ``Phi(Phi^-1(p) - sigma)`` of Gaussian scores) instead
    of the nearly flat scores of an untrained one. The norms are measured on ``tokens`` random
    tokens (fixed by ``seed``), one cache-free forward; the layer input is RMS-normalised, so they
    carry over to decode steps. Only ``indexer.wq`` changes (in place, per head).
    """
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator).to(device)
    norms = indexer_query_norms(model, ids)
    for module in attention_modules(model):
        if module.layer_idx in norms:
            scale = sigma / norms[module.layer_idx].clamp_min(1e-12)  # (Hr,)
            module.indexer.wq.mul_(scale.to(module.indexer.wq).view(-1, 1, 1, 1))


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


@dataclass
class Bench:
    """What every measurement needs: the settings, the model in its variants, the dense SDPA backends."""

    settings: ModelBenchSettings
    variants: Variants
    device: torch.device
    dense_sdpa: dict[str, str]
    deadline: float

    def out_of_time(self) -> bool:
        return time.time() > self.deadline

    def phase(self, phase: str) -> contextlib.AbstractContextManager:
        """Dense runs under their chosen SDPA backend (dense-flash: flash); sparse variants pick their own kernels."""
        current = self.variants.current
        if current == FLASH_DENSE:
            return sdpa_context("flash")
        return sdpa_context(self.dense_sdpa[phase]) if current == "dense" else contextlib.nullcontext()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None


def decode_tokens(bench: Bench, cache, first: torch.Tensor, length: int) -> dict[str, Any]:
    """Greedy decode after ``length`` cached tokens (``first`` (1,) at position ``length``): ``decode_warmup``
    untimed steps, then ``decode_steps`` timed as one block; eager, or from a CUDA graph with ``cuda_graph``.

    Returns {"cache", "warm": warm-up tokens, "tokens": timed tokens, "decode_ms_per_token"}.
    """
    s, model = bench.settings, bench.variants.model
    with bench.phase("decode"):
        step = eager_step(model, cache)
        if s.cuda_graph and isinstance(cache, HeadwiseCache):
            cache.static_decode(length + s.decode_warmup + s.decode_steps + 1)
            step = graphed_step(GraphedDecoder(model, cache))
        decode = functools.partial(greedy_decode, step)
        warm = decode(first, length, s.decode_warmup)
        last = warm[-1:] if s.decode_warmup else first
        tokens, decode_ms = timed(lambda: decode(last, length + s.decode_warmup, s.decode_steps), bench.device)
    return {"cache": cache, "warm": warm, "tokens": tokens, "decode_ms_per_token": decode_ms / max(1, s.decode_steps)}


def _cache_fields(cache) -> dict[str, Any]:
    fields = {"kv_bytes": cache_bytes(cache)}
    if isinstance(cache, HeadwiseCache):
        fields["kv_used_bytes"] = cache.used_bytes()
        summary = cache.stats.summary()
        # None: no decode step selected (fewer cached tokens than the threshold): every key, not 0 keys
        fields["selected_keys_per_head"] = summary["mean_selected"] if summary["samples"] else None
        fields["seqlen_threshold"] = cache.sparse.seqlen_threshold
        if "prefill_block_fraction" in summary:  # sparse retrieval prefill: share of the visible key blocks kept
            fields["prefill_block_fraction"] = summary["prefill_block_fraction"]
    return fields


def prefill_logits(bench: Bench, cache, ids: torch.Tensor) -> torch.Tensor:
    """Logits (1, V) of the last prompt token: one shot, or in ``prefill_chunk`` chunks through a head-wise cache
    that knows where the prompt ends (a dense tail covers the prompt's last tokens, not every chunk's)."""
    model, chunk = bench.variants.model, bench.settings.prefill_chunk
    if chunk is None or not isinstance(cache, HeadwiseCache):
        return forward_last_logits(model, cache, ids, 0)
    with cache.prefilling_prompt(ids.shape[1]):
        for start in range(0, ids.shape[1], chunk):
            logits = forward_last_logits(model, cache, ids[:, start : start + chunk], start)
    return logits


@torch.no_grad()
def run_once(bench: Bench, ids: torch.Tensor) -> dict[str, Any]:
    """One fresh cache, prefill of ids (1, L) and greedy decode (not for ``dense-flash``: TTFT only): times (ms),
    tokens, bytes."""
    s = bench.settings
    length = ids.shape[1]
    bench.reset_peak()
    cache = bench.variants.new_cache(capacity=length + s.decode_warmup + s.decode_steps + 1)
    with bench.phase("prefill"):
        first, ttft_ms = timed(lambda: prefill_logits(bench, cache, ids).argmax(-1), bench.device)
    if bench.variants.current == FLASH_DENSE:
        return {"ttft_ms": ttft_ms, "decode_ms_per_token": None, "tokens": [int(first[0])],
                "peak_bytes": bench.peak_bytes(), **_cache_fields(cache)}
    decoded = decode_tokens(bench, cache, first, length)
    return {"ttft_ms": ttft_ms, "decode_ms_per_token": decoded["decode_ms_per_token"],
            "tokens": [int(first[0])] + decoded["warm"].tolist() + decoded["tokens"].tolist(),
            "peak_bytes": bench.peak_bytes(), **_cache_fields(decoded["cache"])}


@torch.no_grad()
def dense_attention_ms(bench: Bench, length: int, backend: str) -> float:
    """Milliseconds of the dense model's causal attention at ``length`` over all its layers: one layer's SDPA
    call (the model's q/k/v layout, GQA, ``backend``) timed once after a warm-up, times the layer count."""
    geo, device = bench.settings.geometry, bench.device
    dtype = getattr(torch, bench.settings.dtype)
    q, k, v = (torch.randn(1, length, heads, geo.head_dim, device=device, dtype=dtype).transpose(1, 2)
               for heads in (geo.q_heads, geo.kv_heads, geo.kv_heads))
    call = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    with sdpa_context(backend):
        call()
        return timed(call, device)[1] * bench.settings.layers


def attention_flop_ratio(plan: HeadPlan, geo: ModelGeometry, length: int, window: int, sinks: int,
                         retrieval_kept: float = 1.0) -> float:
    """Dense / sparse FLOPs of the attention of every layer at ``length`` (4 D per visible query-key pair).

    ``retrieval_kept``: the share of its causal query-key pairs a retrieval head computes (1: dense prefill; a
    sparse prefill's measured fraction of kept key blocks otherwise)."""
    causal = length * (length + 1) // 2
    local = sum(min(i + 1, window + min(sinks, max(0, i + 1 - window))) for i in range(min(length, window + sinks)))
    local += max(0, length - window - sinks) * (window + sinks)
    group = geo.q_heads // geo.kv_heads
    dense = plan.num_layers * geo.q_heads * causal
    sparse = sum(group * (len(r) * causal * retrieval_kept + (geo.kv_heads - len(r)) * local) for r in plan.retrieval)
    return dense / sparse


def measure(bench: Bench, variant: str, length: int) -> dict[str, Any]:
    """Medians over the timed runs of one variant at one context length (warm-up runs dropped).

    Once the deadline has passed, no further timed run starts (at least one always runs).
    """
    s = bench.settings
    bench.variants.use(variant)
    generator = torch.Generator().manual_seed(s.seed + length)  # same prompt for every variant
    ids = torch.randint(0, s.geometry.vocab, (1, length), generator=generator).to(bench.device)
    runs = []
    for index in range(s.warmup + s.repeats):
        if index > s.warmup and bench.out_of_time():
            break
        run = run_once(bench, ids)
        if index >= s.warmup:
            runs.append(run)
    ttft = statistics.median(r["ttft_ms"] for r in runs)
    decode = None if runs[0]["decode_ms_per_token"] is None else statistics.median(r["decode_ms_per_token"] for r in runs)
    peak = max((r["peak_bytes"] for r in runs if r["peak_bytes"] is not None), default=None)
    row = {"ttft_ms": ttft, "decode_ms_per_token": decode, "decode_tokens_per_s": None if decode is None else 1000 / decode,
           "peak_gib": None if peak is None else peak / GIB, "kv_bytes": runs[-1]["kv_bytes"],
           "timed_runs": len(runs), "tokens": runs[0]["tokens"]}
    row.update({k: runs[-1][k] for k in ("kv_used_bytes", "selected_keys_per_head", "seqlen_threshold",
                                         "prefill_block_fraction") if k in runs[-1]})
    if variant in bench.variants.conversions:
        row["attention_flop_ratio"] = attention_flop_ratio(bench.variants.conversions[variant][0], s.geometry, length,
                                                           s.window, s.sinks, row.get("prefill_block_fraction", 1.0))
    elif bench.device.type == "cuda":  # the dense model's attention share of its TTFT (Amdahl)
        backend = "flash" if variant == FLASH_DENSE else bench.dense_sdpa["prefill"]
        row["attention_ms"] = dense_attention_ms(bench, length, backend)
    return row


@torch.no_grad()
def decode_only(bench: Bench, variant: str, length: int) -> dict[str, Any]:
    """Decode speed after ``length`` cached tokens of random K/V (no prefill: hours of compute at 1M), as
    :func:`decode_tokens` times it (graphed with ``cuda_graph``): the median over the timed runs after ``warmup``
    dropped ones, each through a fresh cache; once the deadline has passed no further timed run starts."""
    s = bench.settings
    bench.variants.use(variant)
    token = torch.zeros(1, dtype=torch.long, device=bench.device)
    times, peaks = [], []
    for index in range(s.warmup + s.repeats):
        if index > s.warmup and bench.out_of_time():
            break
        bench.reset_peak()
        cache = bench.variants.new_cache(capacity=length + s.decode_warmup + s.decode_steps + 1)
        fill_random(bench.variants, cache, length)
        decoded = decode_tokens(bench, cache, token, length)
        if index >= s.warmup:
            times.append(decoded["decode_ms_per_token"])
            peaks.append(bench.peak_bytes())
        fields = _cache_fields(decoded["cache"])
        del cache, decoded
        free_memory()
    decode = statistics.median(times)
    peak = max((p for p in peaks if p is not None), default=None)
    return {"decode_ms_per_token": decode, "decode_tokens_per_s": 1000 / decode,
            "peak_gib": None if peak is None else peak / GIB, "timed_runs": len(times), **fields}


@torch.no_grad()
def long_context_try(bench: Bench, variant: str, length: int) -> dict[str, Any]:
    """OOM-search try: a cache filled with random K/V of ``length`` tokens, then a few greedy decode steps.

    A real prefill at these lengths is hours of attention compute; this measures whether the
    model can hold and decode such a context (weights + cache + decode working memory).
    """
    s, model = bench.settings, bench.variants.model
    bench.variants.use(variant)
    bench.reset_peak()
    cache = bench.variants.new_cache(capacity=length + s.oom_decode_steps + 2)
    fill_random(bench.variants, cache, length)
    token = torch.zeros(1, dtype=torch.long, device=bench.device)
    with bench.phase("decode"):
        step = eager_step(model, cache)
        greedy_decode(step, token, length, 1)
        _, decode_ms = timed(lambda: greedy_decode(step, token, length + 1, s.oom_decode_steps), bench.device)
    peak = bench.peak_bytes()
    return {"kv_bytes": cache_bytes(cache), "decode_ms_per_token": decode_ms / max(1, s.oom_decode_steps),
            "peak_gib": None if peak is None else peak / GIB}


@torch.no_grad()
def profile_decode(bench: Bench, variant: str, length: int) -> dict[str, Any]:
    """``settings.profile_steps`` greedy steps of ``variant`` after ``length`` random cached tokens, profiled
    (two untimed steps first: compilation, autotuning); see :mod:`.decode_profile`."""
    steps, model = bench.settings.profile_steps, bench.variants.model
    bench.variants.use(variant)
    cache = bench.variants.new_cache(capacity=length + steps + 3)
    fill_random(bench.variants, cache, length)
    token = torch.zeros(1, dtype=torch.long, device=bench.device)
    with bench.phase("decode"):
        step = eager_step(model, cache)
        greedy_decode(step, token, length, 2)
        run = lambda: timed(lambda: greedy_decode(step, token, length + 2, steps), bench.device)[1]  # noqa: E731
        return profile(run, steps, bench.device.type == "cuda")


def iter_points(settings: ModelBenchSettings, variants: Variants) -> Iterator[tuple[int, str]]:
    """(length, variant) in measuring order: lengths ascending, every variant at a length before the next."""
    for length in sorted(settings.lengths):
        for variant in variants.names:
            yield length, variant


# --- one whole run ------------------------------------------------------------------------------------
def _progress(row: dict[str, Any]) -> str:
    head = f"{row['variant']} L={row['length']}"
    if row["status"] != "ok":
        return f"{head}: {row['status']} {row.get('error', '')}"
    parts = [f"TTFT {row['ttft_ms']:.1f} ms" if "ttft_ms" in row else None,
             None if row.get("decode_ms_per_token") is None else f"decode {row['decode_ms_per_token']:.2f} ms/token",
             None if row.get("peak_gib") is None else f"peak {row['peak_gib']:.2f} GiB",
             f"KV {row['kv_bytes'] / GIB:.3f} GiB"]
    return f"{head}: " + ", ".join(p for p in parts if p)


def _profile_progress(row: dict[str, Any]) -> str:
    head = f"decode profile {row['variant']} L={row['length']}"
    if row["status"] != "ok":
        return f"{head}: {row['status']} {row.get('error', '')}"
    busy = "" if row["busy_fraction"] is None else f", device busy {row['busy_fraction']:.0%}"
    kernels = "" if row["kernels_per_step"] is None else f", {row['kernels_per_step']:.0f} kernels"
    return f"{head}: {row['wall_ms_per_step']:.2f} ms/step{busy}{kernels}, {row['ops_per_step']:.0f} aten ops"


def run_benchmark(settings: ModelBenchSettings, out_path: Path, log: Callable[[str], None] = lambda msg: None
                  ) -> dict[str, Any]:
    """Measure every (length, variant), then the optional OOM search; rows are appended to ``out_path`` as they
    come (the run's first line is its ``config`` record; earlier runs in the file stay).

    With a deadline and the OOM search, the measurements stop ``oom_reserve_s`` seconds early so the
    search keeps that much time. Returns {"environment", "config", "rows", "comparison", "oom_search",
    "wall_seconds"}; the same object is the last line of ``out_path``.
    """
    settings.check()  # before the results file is touched: a settings error loses nothing
    started = time.time()
    deadline = started + settings.deadline_s if settings.deadline_s is not None else math.inf
    device = torch.device(settings.device)
    stamp = lambda: f"[{time.time() - started:6.1f} s]"  # noqa: E731
    with JsonLines(out_path) as sink:
        env = environment(device)
        model = build_model(settings)
        geo = settings.geometry
        plan = spread_plan(settings.layers, geo.kv_heads, geo.q_heads, settings.retrieval_fraction)
        dense_sdpa = pick_sdpa_backends(model, settings.sdpa_backends, device)
        flash = (settings.flash_ttft and device.type == "cuda" and dense_sdpa["prefill"] != "flash"
                 and pick_sdpa_backends(model, ["flash"], device)["prefill"] == "flash")
        variants = Variants(model, conversions(settings, plan), flash=flash, index_logit_std=settings.index_logit_std)
        reserve = settings.oom_reserve_s if settings.oom_search else 0.0
        bench = Bench(settings, variants, device, dense_sdpa, deadline - reserve)
        config = describe(settings, plan, dense_sdpa, model, device)
        sink.write({"record": "config", "environment": env, "config": config})
        log(f"{stamp()} model built on {env['device']}; dense SDPA {dense_sdpa}; {plan.num_retrieval()} retrieval KV heads")

        def record(kind: str, row: dict[str, Any]) -> None:
            sink.write({"record": kind, **row})
            text = _profile_progress(row) if kind == "profile" else _progress(row)
            log(f"{stamp()} {'oom search ' if kind == 'oom_try' else ''}{text}")

        rows = measure_all(bench, lambda row: record("measurement", row))
        decoders = [name for name in variants.names if name != FLASH_DENSE]  # dense-flash: TTFT only
        decode_rows = run_points(bench, ((length, variant) for length in sorted(settings.decode_lengths)
                                         for variant in decoders), decode_only,
                                 lambda row: record("decode_only", row))
        profiles = profile_all(bench, lambda row: record("profile", row)) if settings.profile_steps else []
        oom = None
        if settings.oom_search:
            bench.deadline = deadline  # the reserved time is the search's
            oom = oom_search(lambda variant, length: long_context_try(bench, variant, length), settings.oom_lengths,
                             keep_going=settings.oom_keep_going, out_of_time=bench.out_of_time,
                             record=lambda row: record("oom_try", row))
            oom["method"] = (f"cache filled with random K/V of L tokens, then {settings.oom_decode_steps} greedy decode "
                             "steps; no prefill (hours of compute at these lengths)")
        result = {"environment": env, "config": config, "rows": rows, "comparison": compare(rows),
                  "decode_only": decode_rows, "decode_profile": profiles, "oom_search": oom, "wall_seconds": round(time.time() - started, 1)}
        sink.write({"record": "result", **result})
    return result


def measure_all(bench: Bench, record: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """One row per (length, variant): measured, failed (``oom`` / ``error``) or ``skipped`` past the deadline."""
    return run_points(bench, iter_points(bench.settings, bench.variants), measure, record)


def profile_all(bench: Bench, record: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """One decode profile per variant at ``profile_length`` (default: the shortest length), or a skipped / failed row."""
    length = bench.settings.profile_length or min(bench.settings.lengths)
    decoders = [name for name in bench.variants.names if name != FLASH_DENSE]
    return run_points(bench, ((length, variant) for variant in decoders), profile_decode, record)


def run_points(bench: Bench, points: Iterator[tuple[int, str]],
               run: Callable[[Bench, str, int], dict[str, Any]], record: Callable[[dict[str, Any]], None]
               ) -> list[dict[str, Any]]:
    """``run(bench, variant, length)`` per point into a row (failures caught, nothing after the deadline)."""
    rows = []
    for length, variant in points:
        row: dict[str, Any] = {"variant": variant, "length": length}
        if bench.out_of_time():
            row.update(status="skipped", error="deadline")
        else:
            attempt(lambda: run(bench, variant, length), row)
            free_memory()
        rows.append(row)
        record(row)
    return rows
