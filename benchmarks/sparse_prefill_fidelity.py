"""Perplexity of a converted model with its retrieval heads on dense vs sparse prefill, and the
fraction of key blocks the sparse prefill keeps (CPU or GPU).

    PYTHONPATH=. python benchmarks/sparse_prefill_fidelity.py --model smollm2-135m-rtpurbo --windows 2 --length 8192

Each window of dev-pool text runs once through a fresh head-wise cache as one plain prefill chunk;
the retrieval heads run ``retrieval_prefill="dense"`` and then ``"sparse"`` at each ``--top-p``.
Prints one JSON object: perplexity and kept block fractions per row.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from rtpurbo import io
from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.data.task_data import perplexity_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-rtpurbo", help="rtpurbo artifact or shipped adapter")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--top-p", type=float, nargs="+", default=[0.9, 0.8])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = io.load(args.model, device=device, merge_adapters=True)
    windows = perplexity_windows(tokenizer, args.windows, args.length)
    rows = {}
    for mode, top_p in [("dense", 1.0)] + [("sparse", p) for p in args.top_p]:
        model.rtpurbo_sparse.retrieval_prefill, model.rtpurbo_sparse.prefill_top_p = mode, top_p
        nll, count, kept = 0.0, 0, []
        for window in windows:
            ids = torch.tensor([window], device=device)
            cache = HeadwiseCache(model)
            cache.plain_prompt = True
            with torch.no_grad():
                logits = model(ids, use_cache=True, **{cache_kwarg(): cache}).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
            kept.append(cache.stats.summary().get("prefill_block_fraction"))
        rows[f"{mode} top-p {top_p}"] = {"perplexity": math.exp(nll / count), "kept_block_fraction": kept}
    print(json.dumps({"model": args.model, "windows": len(windows), "length": args.length, "rows": rows}))


if __name__ == "__main__":
    main()
