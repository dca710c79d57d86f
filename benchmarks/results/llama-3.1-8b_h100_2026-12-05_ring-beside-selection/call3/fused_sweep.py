"""Launch shapes of selecting_two_role_decode's first launch (scores + ring), against the side-stream step (GPU)."""
import itertools
import statistics

import torch

from rtpurbo.bench.attention_common import GEOMETRIES, INDEX_DIM, MIN_TOKENS, RECENT, TOP_P, _randn, graph_us
from rtpurbo.bench.attention_decode import _ring_positions
from rtpurbo.ops import api
from rtpurbo.ops.triton import decode as kernels
from rtpurbo.ops.triton import decode_roles

SINKS, WINDOW = 4, 8192
GEOM = GEOMETRIES["llama-3.1-8b"]


def newest(fn):
    caches = list(fn.device_caches.values())
    if not caches:
        return None
    kern = list(caches[0][0].values())
    return kern[-1] if kern else None


def regs(fn):
    k = newest(fn)
    return None if k is None else (k.n_regs, k.n_spills, k.metadata.num_warps)


def timeline(fn, label):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
    ev = sorted([(e.time_range.start, e.device_time, e.name[:28]) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA], key=lambda r: r[0])
    if not ev:
        print("timeline", label, "none")
        return
    last = ev[-(len(ev) // 3):]
    t0 = last[0][0]
    print(f"timeline {label}: " + "; ".join(f"{n}@{s - t0:.1f}+{d:.1f}" for s, d, n in last), flush=True)


def main():
    group, n_local, dim = GEOM.group, GEOM.n_kv - GEOM.n_retrieval(), GEOM.head_dim
    for length in (1048576, 131072):
        torch.manual_seed(0)
        q = _randn(1, GEOM.n_q, 1, dim)
        k, v = _randn(1, 1, length, dim), _randn(1, 1, length, dim)
        ring_k, ring_v = _randn(1, n_local, SINKS + WINDOW, dim), _randn(1, n_local, SINKS + WINDOW, dim)
        ring_pos = _ring_positions(length, WINDOW, SINKS)
        q_idx, k_idx = _randn(1, 1, 1, INDEX_DIM), _randn(1, 1, length, INDEX_DIM) * 0.64
        q_pos, k_pos = torch.full((1, 1), length - 1, device="cuda"), torch.arange(length, device="cuda")[None]
        side = torch.cuda.Stream()

        def side_step(launch=None):
            main_s = torch.cuda.current_stream()
            side.wait_stream(main_s)
            with torch.cuda.stream(side):
                local = kernels.decode_attention(q[:, group:], ring_k, ring_v, q_pos, ring_pos, scale=dim**-0.5,
                                                 window=WINDOW, sinks=SINKS, launch=launch)[0]
            out, _ = api.topp_attention(q[:, :group], k, v, q_pos, k_pos, q_idx, k_idx, top_p=TOP_P,
                                        min_tokens=MIN_TOKENS, sinks=SINKS, recent=RECENT)
            main_s.wait_stream(side)
            return out, local

        def scored(ring_launch):
            return decode_roles.selecting_two_role_decode(
                q[:, :group], k, v, k_pos, q_idx, k_idx, q[:, group:], ring_k, ring_v, ring_pos, q_pos,
                scale=dim**-0.5, window=WINDOW, sinks=SINKS, keep_sinks=SINKS, recent=RECENT, top_p=TOP_P,
                min_tokens=MIN_TOKENS, ring_launch=ring_launch)[0]

        def local_only(launch):
            return kernels.decode_attention(q[:, group:], ring_k, ring_v, q_pos, ring_pos, scale=dim**-0.5,
                                            window=WINDOW, sinks=SINKS, launch=launch)[0]

        base = [graph_us(side_step) for _ in range(2)]
        print(f"L={length} side-stream default: {statistics.median(base):.1f} us", flush=True)
        for bn, w in itertools.product((16, 32), (1, 2)):
            launch = kernels.DecodeLaunch(block_n=bn, waves=w, combine_chunk=256)
            t = graph_us(lambda: side_step(launch))
            lo = graph_us(lambda: local_only(launch))
            print(f"L={length} side-stream block_n={bn} waves={w}: {t:.1f} us (local alone {lo:.1f}, regs "
                  f"{regs(kernels._decode_attention_kernel)})", flush=True)
        for sb, sw, bn, w in itertools.product((1024, 2048), (4, 8), (16, 32, 64), (1, 2)):
            decode_roles.SCORE_BLOCK, decode_roles.SCORE_WARPS = sb, sw
            launch = kernels.DecodeLaunch(block_n=bn, waves=w, combine_chunk=256)
            t = graph_us(lambda: scored(launch))
            print(f"L={length} scored score_block={sb} warps={sw} ring block_n={bn} waves={w}: {t:.1f} us regs "
                  f"{regs(decode_roles._scores_ring_kernel)}", flush=True)
        decode_roles.SCORE_BLOCK, decode_roles.SCORE_WARPS = 1024, 8
        if length == 1048576:
            timeline(lambda: scored(kernels.DENSE_LAUNCH), "scored default 1M")
            launch = kernels.DecodeLaunch(block_n=32, waves=1, combine_chunk=256)
            timeline(lambda: side_step(launch), "side block_n=32 waves=1 1M")
            decode_roles.SCORE_BLOCK, decode_roles.SCORE_WARPS = 2048, 4
            timeline(lambda: scored(kernels.DecodeLaunch(block_n=16, waves=1, combine_chunk=256)), "scored 2048/4 16/1 1M")
            decode_roles.SCORE_BLOCK, decode_roles.SCORE_WARPS = 1024, 8
    print("regs index_scores", regs(kernels._index_scores_kernel))


if __name__ == "__main__":
    main()
