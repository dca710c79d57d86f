"""Prefill and decode time of one model row on the current device, through the head-wise cache.

A random prompt of ``length - decode_steps`` tokens is prefilled in one chunk, then
``decode_steps`` tokens are decoded one by one. Warm-up runs come first and are dropped;
the report is the median over repeats (prefill) and over every timed step (decode).
CUDA events time the GPU (with a synchronisation after each measured call); the CPU is
timed with ``time.perf_counter``.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn as nn

from ..cache import HeadwiseCache
from ..generate import prefill
from .scoring import decode_step


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
    prefill_ms, decode_ms, used = [], [], 0
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
        used = cache.used_bytes()
    return {
        "length": length,
        "prefill_ms": statistics.median(prefill_ms),
        "prefill_tokens": int(ids.shape[1]),
        "decode_ms_per_token": statistics.median(decode_ms),
        "decode_steps": decode_steps,
        "repeats": repeats,
        "warmup": warmup,
        "cache_used_bytes_per_token": used / length,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
