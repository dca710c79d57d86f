"""The side-stream selecting step with the local heads' decode launched in shapes that leave room beside them (GPU)."""
import statistics

import torch
from triton.testing import do_bench

from rtpurbo.bench.attention_common import GEOMETRIES, INDEX_DIM, MIN_TOKENS, RECENT, TOP_P, _randn
from rtpurbo.bench.attention_decode import _ring_positions
from rtpurbo.ops import api
from rtpurbo.ops.triton import decode as kernels

SINKS, WINDOW = 4, 8192
GEOM = GEOMETRIES["llama-3.1-8b"]
LAUNCHES = {
    "default": kernels.DENSE_LAUNCH,
    "b32w1": kernels.DecodeLaunch(block_n=32, waves=1, combine_chunk=256),
    "b16w1": kernels.DecodeLaunch(block_n=16, waves=1, combine_chunk=256),
    "b32w1s2": kernels.DecodeLaunch(block_n=32, waves=1, num_stages=2, combine_chunk=256),
    "b64w1": kernels.DecodeLaunch(block_n=64, waves=1, combine_chunk=256),
}


def graph(fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def main():
    group, n_local, dim = GEOM.group, GEOM.n_kv - GEOM.n_retrieval(), GEOM.head_dim
    for length in (1048576, 131072, 32768):
        for scale, regime in ((0.64, "trained-like"), (1.0, "peaked")):
            torch.manual_seed(0)
            q = _randn(1, GEOM.n_q, 1, dim)
            k, v = _randn(1, 1, length, dim), _randn(1, 1, length, dim)
            ring_k, ring_v = _randn(1, n_local, SINKS + WINDOW, dim), _randn(1, n_local, SINKS + WINDOW, dim)
            ring_pos = _ring_positions(length, WINDOW, SINKS)
            q_idx, k_idx = _randn(1, 1, 1, INDEX_DIM), _randn(1, 1, length, INDEX_DIM) * scale
            q_pos, k_pos = torch.full((1, 1), length - 1, device="cuda"), torch.arange(length, device="cuda")[None]
            side = torch.cuda.Stream()

            def step(launch):
                main_s = torch.cuda.current_stream()
                side.wait_stream(main_s)
                with torch.cuda.stream(side):
                    local = kernels.decode_attention(q[:, group:], ring_k, ring_v, q_pos, ring_pos, scale=dim**-0.5,
                                                     window=WINDOW, sinks=SINKS, launch=launch)[0]
                out, counts = api.topp_attention(q[:, :group], k, v, q_pos, k_pos, q_idx, k_idx, top_p=TOP_P,
                                                 min_tokens=MIN_TOKENS, sinks=SINKS, recent=RECENT)
                main_s.wait_stream(side)
                return out, local, counts

            selected = int(step(LAUNCHES["default"])[2].sum())
            graphs = {n: graph(lambda l=l: step(l)) for n, l in LAUNCHES.items()}
            samples = {n: [] for n in graphs}
            names = list(graphs)
            for r in range(6):
                for n in names[r % len(names):] + names[: r % len(names)]:
                    samples[n].append(1000 * do_bench(graphs[n].replay, warmup=10, rep=40, return_mode="median"))
            med = {n: statistics.median(s) for n, s in samples.items()}
            diffs = {n: statistics.fmean(b - a for a, b in zip(samples["default"], samples[n])) for n in names[1:]}
            print(f"L={length} {regime} selected={selected}: default {med['default']:.1f} us | "
                  + " ".join(f"{n} {med[n]:.1f} ({diffs[n]:+.2f})" for n in names[1:]), flush=True)


if __name__ == "__main__":
    main()
