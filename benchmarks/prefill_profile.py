"""Diagnostic (GPU): where the time to first token goes, dense vs sparse, one profiled prefill each.

    PYTHONPATH=. python benchmarks/prefill_profile.py 131072

The model of ``rtpurbo bench model`` (Llama-3.1-8B geometry, 8 layers, random weights, bf16). Per
variant: one warm-up prefill of L tokens through a fresh cache, then one under ``torch.profiler``
(:func:`rtpurbo.bench.decode_profile.profile`, 20 top operators). One JSON line per variant.
"""
from __future__ import annotations

import json
import sys

import torch

from rtpurbo.bench import decode_profile
from rtpurbo.bench.model_variants import Variants, build_model, conversions, spread_plan
from rtpurbo.bench.settings import ModelBenchSettings
from rtpurbo.bench.steps import forward_last_logits, timed


def main() -> None:
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
    settings = ModelBenchSettings(lengths=[length])
    model = build_model(settings)
    geo = settings.geometry
    variants = Variants(model, conversions(settings, spread_plan(settings.layers, geo.kv_heads, geo.q_heads, 0.15)))
    ids = torch.randint(0, geo.vocab, (1, length), device="cuda")
    decode_profile.TOP = 20
    for name in ("dense", "sparse"):
        variants.use(name)

        def prefill() -> float:
            cache = variants.new_cache(capacity=length + 1)
            with torch.no_grad():
                return timed(lambda: forward_last_logits(model, cache, ids, 0), torch.device("cuda"))[1]

        prefill()
        row = decode_profile.profile(prefill, 1, True)
        print(json.dumps({"variant": name, "L": length, **row}), flush=True)


if __name__ == "__main__":
    main()
