"""Decode speed at long context, dense vs head-wise sparse, on the current device.

    python benchmarks/decode_cpu.py --context 8192 --new-tokens 32

The prompt is a window of development-pool text (Shakespeare). Dense = the base model
with transformers' DynamicCache (SDPA). Sparse = the same weights
converted with a plan (``--plan`` or a profile-like default: the 15% plan shipped in
benchmarks/results) decoding through HeadwiseCache. Both prefill the same prompt, then
time greedy decode steps (median per step after warm-up). Last stdout line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.models import load_base
from rtpurbo.data.task_data import perplexity_windows
from rtpurbo.quickstart import DEV_TEXT_SOURCES


def timed_steps(step, n_steps: int, warmup: int = 2) -> list[float]:
    times = []
    for i in range(n_steps + warmup):
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def decode_loop(model, prompt: torch.Tensor, cache, n_steps: int) -> tuple[float, list[float]]:
    """Prefill ``prompt`` (1, L) into ``cache``; return (prefill seconds, per-step decode seconds)."""
    kw = {cache_kwarg(): cache}
    start = time.perf_counter()
    out = model(prompt, use_cache=True, logits_to_keep=1, **kw)
    prefill = time.perf_counter() - start
    state = {"next": out.logits[:, -1].argmax(-1, keepdim=True)}

    def step():
        logits = model(state["next"], use_cache=True, **kw).logits
        state["next"] = logits[:, -1].argmax(-1, keepdim=True)

    return prefill, timed_steps(step, n_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--plan", help="head_plan.json (default: the shipped SmolLM2 15% plan)")
    args = parser.parse_args()
    from transformers import DynamicCache

    model, tokenizer = load_base()
    layers, n_kv, n_q, _ = geometry(model.config)
    length = args.context - args.new_tokens - 4
    prompt = torch.tensor(perplexity_windows(tokenizer, 1, length, sources=DEV_TEXT_SOURCES))  # real dev-pool text
    dense_prefill, dense_steps = decode_loop(model, prompt, DynamicCache(config=model.config), args.new_tokens)
    plan = HeadPlan.from_dict(json.load(open(args.plan))) if args.plan else default_plan(layers, n_kv, n_q)
    convert(model, plan, SparseConfig(window=args.window, sinks=4, top_p=args.top_p))
    cache = HeadwiseCache(model, initial_capacity=args.context)
    sparse_prefill, sparse_steps = decode_loop(model, prompt, cache, args.new_tokens)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "context": args.context,
        "dense_decode_tok_s": 1 / statistics.median(dense_steps),
        "sparse_decode_tok_s": 1 / statistics.median(sparse_steps),
        "dense_prefill_s": dense_prefill,
        "sparse_prefill_s": sparse_prefill,
        "sparse_cache_bytes": cache.used_bytes(),
        "selection": cache.stats.summary(),
    }
    print(f"context {args.context}: decode dense {result['dense_decode_tok_s']:.2f} tok/s, "
          f"sparse {result['sparse_decode_tok_s']:.2f} tok/s; prefill dense {dense_prefill:.1f} s, "
          f"sparse {sparse_prefill:.1f} s; mean selected fraction {result['selection']['mean_fraction']:.3f}")
    print(json.dumps(result))


def default_plan(layers: int, n_kv: int, n_q: int) -> HeadPlan:
    """The 14 KV heads the copy-score profile chose for SmolLM2 (2K prompts, W=1024)."""
    chosen = [(6, 0), (7, 2), (14, 0), (14, 1), (15, 2), (17, 1), (18, 2), (20, 1), (20, 2), (21, 0), (21, 2),
              (22, 2), (23, 0), (23, 2)]
    retrieval = [[h for (layer, h) in chosen if layer == i] for i in range(layers)]
    return HeadPlan(layers, n_kv, n_q, retrieval, criterion="copy-score profile, 2K prompts")


if __name__ == "__main__":
    main()
