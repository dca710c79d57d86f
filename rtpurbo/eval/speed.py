"""Prefill and decode time of model rows on the current device, through the head-wise cache.

A random prompt of ``length - decode_steps`` tokens is prefilled in one chunk, then
``decode_steps`` tokens are decoded one by one. :func:`measure_speed` times one row: warm-up
runs come first and are dropped; the report is the median over repeats (prefill) and over every
timed step (decode). :func:`measure_speed_paired` times two rows side by side, so that a shared
machine's drift hits both: prefills in A B / B A rounds, decode steps alternating between the two
caches, and the speedups as medians of the paired ratios with bootstrap intervals.
CUDA events time the GPU (with a synchronisation after each measured call); the CPU is
timed with ``time.perf_counter``.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..cache import HeadwiseCache
from ..prefill import prefill
from .scoring import bootstrap, decode_step


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """A function that runs a callable and returns its duration in milliseconds."""
    if device.type == "cuda":
        def timed(fn: Callable[[], None]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
        return timed

    def timed_cpu(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - start)
    return timed_cpu


@torch.no_grad()
def measure_speed(model: nn.Module, length: int, decode_steps: int = 16, repeats: int = 3, warmup: int = 1,
                  seed: int = 0) -> dict[str, float]:
    """Median prefill time (ms) of ``length - decode_steps`` tokens and median decode time per token.

    Also reports the cache's used bytes per token after the run (at the cache's own dtype).
    """
    if length <= decode_steps:
        raise ValueError(f"length {length} must exceed decode_steps {decode_steps}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, length - decode_steps), generator=generator).to(device)
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    timed = _timer(device)
    prefill_ms, decode_ms = [], []
    for run in range(warmup + repeats):
        cache = HeadwiseCache(model)
        elapsed = timed(lambda: prefill(model, cache, ids, mask[:, : ids.shape[1]], ids.shape[1]))
        steps = []
        for t in range(decode_steps):
            position = torch.tensor([ids.shape[1] + t], device=device)
            token = ids[:, -1]
            step_mask = mask[:, : ids.shape[1] + t + 1]
            steps.append(timed(lambda: decode_step(model, cache, token, step_mask, position)))
        if run >= warmup:
            prefill_ms.append(elapsed)
            decode_ms += steps
    return _report(model, cache, length, decode_steps, prefill_ms, decode_ms, repeats, warmup)


def _report(model: nn.Module, cache: HeadwiseCache, length: int, decode_steps: int, prefill_ms: list[float],
            decode_ms: list[float], repeats: int, warmup: int) -> dict[str, float]:
    """One row's medians, and the bytes per token its cache holds after the last run."""
    device = next(model.parameters()).device
    return {
        "length": length,
        "prefill_ms": statistics.median(prefill_ms),
        "prefill_tokens": length - decode_steps,
        "decode_ms_per_token": statistics.median(decode_ms),
        "decode_steps": decode_steps,
        "repeats": repeats,
        "warmup": warmup,
        "cache_used_bytes_per_token": cache.used_bytes() / length,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def _median_interval(ratios: list[float], seed: int = 0) -> dict[str, Any]:
    """Median of paired ratios with a 95 % bootstrap interval (resampling the pairs); with fewer than 3 pairs,
    whose resamples hold no more than the pairs themselves, their range instead (``interval`` says which)."""
    if len(ratios) < 3:
        return {"median": float(np.median(ratios)), "lo": float(min(ratios)), "hi": float(max(ratios)),
                "pairs": len(ratios), "interval": "range"}
    lo, hi = bootstrap([ratios], np.median, seed=seed)
    return {"median": float(np.median(ratios)), "lo": lo, "hi": hi, "pairs": len(ratios), "interval": "95% bootstrap"}


@torch.no_grad()
def measure_speed_paired(models: dict[str, nn.Module], length: int, decode_steps: int = 16, rounds: int = 2,
                         seed: int = 0) -> dict[str, dict]:
    """Two model rows ``{first: model, second: model}`` timed side by side on one random prompt.

    Prefill: ``rounds`` rounds, in the order A B, then B A, and so on. Decode: after the last round,
    ``decode_steps`` steps per row, the rows taking turns (A B, then B A). Returns per row the fields of
    :func:`measure_speed` (medians), and ``"paired"``: the speedups first / second as the median of the
    per-round prefill ratios and of the per-step decode ratios, each with a 95 % bootstrap interval.
    """
    if len(models) != 2:
        raise ValueError(f"measure_speed_paired times exactly two rows, got {list(models)}")
    if length <= decode_steps or rounds < 1 or decode_steps < 1:
        raise ValueError(f"need length > decode_steps >= 1 and rounds >= 1; got {length}, {decode_steps}, {rounds}")
    names = list(models)
    device = next(models[names[0]].parameters()).device
    generator = torch.Generator().manual_seed(seed)
    vocab = min(m.config.vocab_size for m in models.values())
    ids = torch.randint(0, vocab, (1, length - decode_steps), generator=generator).to(device)
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    timed = _timer(device)
    prefill_ms: dict[str, list[float]] = {n: [] for n in names}
    decode_ms: dict[str, list[float]] = {n: [] for n in names}
    caches: dict[str, HeadwiseCache] = {}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            caches[name] = HeadwiseCache(models[name])
            prefill_ms[name].append(timed(lambda: prefill(models[name], caches[name], ids, mask[:, : ids.shape[1]],
                                                          ids.shape[1])))
    for t in range(decode_steps):
        position = torch.tensor([ids.shape[1] + t], device=device)
        for name in names if t % 2 == 0 else names[::-1]:
            decode_ms[name].append(timed(lambda: decode_step(models[name], caches[name], ids[:, -1],
                                                             mask[:, : ids.shape[1] + t + 1], position)))
    first, second = names
    result: dict[str, dict] = {name: _report(models[name], caches[name], length, decode_steps, prefill_ms[name],
                                             decode_ms[name], rounds, 0) for name in names}
    result["paired"] = {
        "speedup": f"{first} / {second}",
        "prefill": _median_interval([a / b for a, b in zip(prefill_ms[first], prefill_ms[second])], seed),
        "decode": _median_interval([a / b for a, b in zip(decode_ms[first], decode_ms[second])], seed),
        "prefill_ms": prefill_ms, "decode_ms": decode_ms,
    }
    return result
