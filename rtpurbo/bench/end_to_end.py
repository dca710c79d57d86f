"""End-to-end model benchmark: a whole Llama-geometry model, dense vs head-wise sparse, batch 1.

One model with random weights is measured in turn as each of its variants (``dense``, ``dense-flash``,
``dense-graph``, ``sparse`` and its budgeted, sparse-prefill and two-launch forms; described in
:mod:`rtpurbo.bench.model_variants`), with the step and timing primitives of :mod:`rtpurbo.bench.steps`.

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
"""
from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from ..cache import HeadwiseCache
from ..config import HeadPlan
from ..decode_graph import GraphedDecoder
from .decode_profile import profile
from .model_report import JsonLines, compare, describe, environment
from .model_variants import FLASH_DENSE, Variants, build_model, conversions, spread_plan
from .oom import attempt, free_memory, oom_search
from .settings import ModelBenchSettings, ModelGeometry
from .steps import (cache_bytes, eager_step, fill_random, forward_last_logits, graphed_step, greedy_decode,
                     pick_sdpa_backends, sdpa_context, timed)

__all__ = ["attention_flop_ratio", "run_benchmark"]  # what the CLI and the tests import from here

GIB = 2**30


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
