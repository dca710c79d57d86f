"""Diagnostic (GPU): local-head prefill through flex, plain path vs position-mask path, at one length.

    PYTHONPATH=. python benchmarks/local_prefill_paths.py 131072

The model's first prefill chunk used to attend over [S + W empty ring slots, the new keys] (flex's
position-mask path, key length L + S + W); it now takes the plain path (cached window block mask,
key length L). ``plain_strided_kv``: K/V as the model hands them over, views of the projection
whose rows are strided by the other heads (the flex backend makes them contiguous). Llama-3.1-8B local heads: 7 KV x 4 q heads, d 128, bf16, W 8192, S 4. Prints one
JSON line: medians of 3 timed calls (CUDA events) after a warm-up, in ms.
"""
from __future__ import annotations

import json
import statistics
import sys

import torch

from rtpurbo.ops import api

W, S, N_KV, G, D = 8192, 4, 7, 4, 128


def _ms(fn) -> float:
    fn()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    hidden = torch.randn(1, length, 32, D, device=dev, dtype=bf16).transpose(1, 2)  # (1, 32, L, D) strided, as projected
    q = hidden[:, 4:]  # the local heads' queries: a view, as split_heads gives them
    k = torch.randn(1, N_KV, length, D, device=dev, dtype=bf16)
    v = torch.randn_like(k)
    pos = torch.arange(length, device=dev)[None]
    ring = torch.zeros(1, N_KV, S + W, D, device=dev, dtype=bf16)
    ring_pos = torch.full((1, S + W), -1, device=dev)
    keys, values, key_pos = torch.cat([ring, k], 2), torch.cat([ring, v], 2), torch.cat([ring_pos, pos], 1)
    kw = dict(window=W, sinks=S, impl="flex")
    row = {"L": length, "device": torch.cuda.get_device_name(dev)}
    row["plain_ms"] = _ms(lambda: api.attention(q, k, v, pos, pos, **kw))
    row["plain_contiguous_q_ms"] = _ms(lambda: api.attention(q.contiguous(), k, v, pos, pos, **kw))
    row["position_mask_ms"] = _ms(lambda: api.attention(q, keys, values, pos, key_pos, **kw))
    projected = torch.randn(1, length, 8, D, device=dev, dtype=bf16).transpose(1, 2)  # head-interleaved rows
    k_view, v_view = projected[:, 1:], projected[:, 1:].flip(1)
    row["plain_strided_kv_ms"] = _ms(lambda: api.attention(q, k_view, v_view, pos, pos, **kw))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
