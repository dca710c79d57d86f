"""Where should the local heads run in a selecting decode step? Timing variants of one layer step (GPU)."""
import json
import sys

import torch

from rtpurbo.bench.attention_common import DEVICE, GEOMETRIES, INDEX_DIM, MIN_TOKENS, RECENT, TOP_P, _randn, graph_us
from rtpurbo.bench.attention_decode import _ring_positions
from rtpurbo.ops.triton import decode as kernels
from rtpurbo.ops.triton import threshold

WINDOW, SINKS = 8192, 4
real_search = threshold._search_kernel


class Hook:
    """Stands in for the search kernel: launches it, then runs ``after`` once phase ``phase`` is launched."""

    def __init__(self):
        self.phase, self.after = None, None

    def __getitem__(self, grid):
        launch = real_search[grid]

        def call(*args, **kw):
            out = launch(*args, **kw)
            if self.after is not None and kw["FIRST"] == self.phase:
                self.after()
            return out

        return call

    def __getattr__(self, name):
        return getattr(real_search, name)


hook = Hook()
threshold._search_kernel = hook
LAUNCHES = {
    "default": None,
    "w1": kernels.DecodeLaunch(waves=1, combine_chunk=256),
    "w1b128": kernels.DecodeLaunch(block_n=128, waves=1, combine_chunk=256),
    "w4": kernels.DecodeLaunch(waves=4, combine_chunk=256),
    "w1nw8": kernels.DecodeLaunch(waves=1, num_warps=8, combine_chunk=256),
}


def case(length, scale=1.0):
    geom = GEOMETRIES["llama-3.1-8b"]
    n_ret, group, dim = geom.n_retrieval(), geom.group, geom.head_dim
    split, n_local = n_ret * group, geom.n_kv - n_ret
    q = _randn(1, geom.n_q, 1, dim)
    k, v = _randn(1, n_ret, length, dim), _randn(1, n_ret, length, dim)
    ring_k, ring_v = _randn(1, n_local, SINKS + WINDOW, dim), _randn(1, n_local, SINKS + WINDOW, dim)
    ring_pos = _ring_positions(length, WINDOW, SINKS)
    q_idx, k_idx = _randn(1, n_ret, 1, INDEX_DIM), _randn(1, n_ret, length, INDEX_DIM) * scale
    q_pos, k_pos = torch.full((1, 1), length - 1, device=DEVICE), torch.arange(length, device=DEVICE)[None]
    side = torch.cuda.Stream(DEVICE)

    def local(launch):
        return kernels.decode_attention(q[:, split:], ring_k, ring_v, q_pos, ring_pos, scale=dim**-0.5, window=WINDOW,
                                        sinks=SINKS, launch=launch)[0]

    def step(where, launch):
        main = torch.cuda.current_stream(DEVICE)
        got = {}

        def fork():
            side.wait_stream(torch.cuda.current_stream(DEVICE))
            with torch.cuda.stream(side):
                got["local"] = local(launch)

        if where == "start":
            fork()
        sc = kernels.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=SINKS, recent=RECENT)
        if where == "scores":
            fork()
        hook.phase, hook.after = {"level0": 0, "level1": 1, "level2": 2}.get(where), fork
        if hook.phase is None:
            hook.after = None
        order, n_keep = threshold.topp_threshold(sc.scores.view(n_ret, length), sc.block_max, sc.block_sum,
                                                 sc.block_count, sc.block_min, top_p=TOP_P, min_tokens=MIN_TOKENS,
                                                 max_tokens=None)
        hook.after = None
        if where == "search":
            fork()
        out = kernels.decode_attention(q[:, :split], k, v, q_pos, k_pos, scale=dim**-0.5, index=order.view(1, n_ret, -1),
                                       n_index=n_keep.view(1, n_ret), always=sc.always, skip_sinks=SINKS,
                                       skip_recent=RECENT)[0]
        if where == "serial":
            got["local"] = local(launch)
        else:
            main.wait_stream(side)
        return torch.cat([out, got["local"]], dim=1)

    def retrieval_only():
        hook.after = None
        sc = kernels.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=SINKS, recent=RECENT)
        order, n_keep = threshold.topp_threshold(sc.scores.view(n_ret, length), sc.block_max, sc.block_sum,
                                                 sc.block_count, sc.block_min, top_p=TOP_P, min_tokens=MIN_TOKENS,
                                                 max_tokens=None)
        return kernels.decode_attention(q[:, :split], k, v, q_pos, k_pos, scale=dim**-0.5, index=order.view(1, n_ret, -1),
                                        n_index=n_keep.view(1, n_ret), always=sc.always, skip_sinks=SINKS,
                                        skip_recent=RECENT)[0]

    return step, retrieval_only, local


def timeline(fn, label):
    """Kernel start offsets and durations of one graph replay (profiler over a replay)."""
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
    ev = sorted([(e.time_range.start, e.device_time, e.name[:40]) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA], key=lambda r: r[0])
    if not ev:
        print(f"timeline {label}: no kernel events", flush=True)
        return
    n = len(ev) // 3
    last = ev[-n:]
    t0 = last[0][0]
    print(f"timeline {label}: " + "; ".join(f"{n_}@{s - t0:.1f}+{d:.1f}" for s, d, n_ in last), flush=True)


def regs():
    for name, fn in (("search", real_search), ("index_scores", kernels._index_scores_kernel),
                     ("decode", kernels._decode_attention_kernel), ("combine", kernels._combine_kernel)):
        try:
            for dev_cache in fn.device_caches.values():
                for key, kern in dev_cache[0].items():
                    print(f"regs {name}: n_regs={kern.n_regs} spills={kern.n_spills} shared={kern.metadata.shared} "
                          f"warps={kern.metadata.num_warps}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print("regs", name, "failed", exc)


def main():
    rows = []
    for length in (1048576, 131072):
        step, retrieval_only, local = case(length)
        base = dict(L=length)
        r = dict(base, what="retrieval_only", us=graph_us(retrieval_only))
        print(json.dumps(r), flush=True)
        rows.append(r)
        for name, launch in LAUNCHES.items():
            r = dict(base, what="local_only", launch=name, us=graph_us(lambda l=launch: local(l)))
            print(json.dumps(r), flush=True)
            rows.append(r)
        for where in ("start", "scores", "level0", "level1", "level2", "search", "serial"):
            for name, launch in LAUNCHES.items():
                if where in ("serial",) and name != "default":
                    continue
                r = dict(base, what="step", where=where, launch=name,
                         us=graph_us(lambda w=where, l=launch: step(w, l)))
                print(json.dumps(r), flush=True)
                rows.append(r)
        if length == 1048576:
            timeline(lambda: step("start", None), "start/default 1M")
            timeline(lambda: step("scores", None), "scores/default 1M")
            timeline(lambda: step("level0", "w1"), "level0/w1 1M")
    regs()
    if len(sys.argv) > 1:
        json.dump(rows, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
