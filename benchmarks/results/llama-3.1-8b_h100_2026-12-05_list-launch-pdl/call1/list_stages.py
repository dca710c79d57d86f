"""List-mode decode: launch shapes incl. pipeline stages, the kernel/combine split, and step-level A/B (GPU)."""
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from decode_step_ab import measure, step_case, load_tree  # noqa: E402

from rtpurbo.bench.attention_common import GEOMETRIES, RECENT, _randn, graph_us
from rtpurbo.ops.triton import decode as kernels

SINKS = 4
OUT = os.environ.get("OUT", ".")
rows = []


def rec(r):
    rows.append(r)


def split_times(fn):
    """Device us per call of each kernel name in one graph replay."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            g.replay()
        torch.cuda.synchronize()
    ev = sorted([(e.time_range.start, e.device_time, e.name[:28]) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA])
    per = len(ev) // 10
    last = ev[-per:]
    t0 = last[0][0]
    return "; ".join(f"{n}@{s - t0:.1f}+{d:.1f}" for s, d, n in last)


def meta(fn):
    out = []
    for dev_cache in fn.device_caches.values():
        for key, kern in dev_cache[0].items():
            out.append((kern.n_regs, kern.n_spills, kern.metadata.shared, kern.metadata.num_warps,
                        kern.metadata.num_stages))
    return out


def lists():
    geom = GEOMETRIES["llama-3.1-8b"]
    length, dim, group = 1048576, geom.head_dim, geom.group
    torch.manual_seed(0)
    q = _randn(1, group, 1, dim)
    k, v = _randn(1, 1, length, dim), _randn(1, 1, length, dim)
    q_pos, k_pos = torch.full((1, 1), length - 1, device="cuda"), torch.arange(length, device="cuda")[None]
    always = torch.cat([torch.arange(SINKS), torch.arange(length - RECENT, length)]).to("cuda", torch.int32)[None]
    grid = [kernels.DecodeLaunch(block_n=b, waves=w, num_warps=nw, num_stages=ns, combine_chunk=256)
            for b, w, nw, ns in itertools.product((32, 64, 128), (1, 2, 4), (4, 8), (1, 2, None))]
    best = {}
    for n_sel in (1408, 6144, 36864):
        slots = torch.sort(torch.randperm(length - RECENT - SINKS, device="cuda")[:n_sel])[0] + SINKS
        index = torch.zeros(1, 1, length, dtype=torch.int64, device="cuda")
        index[0, 0, :n_sel] = slots
        n_index = torch.full((1, 1), n_sel, device="cuda")

        def call(launch):
            return kernels.decode_attention(q, k, v, q_pos, k_pos, scale=dim**-0.5, index=index, n_index=n_index,
                                            always=always, skip_sinks=SINKS, skip_recent=RECENT, launch=launch)[0]
        base = graph_us(lambda: call(kernels.LIST_LAUNCH), rep=60)
        res = []
        for launch in grid:
            try:
                us = graph_us(lambda l=launch: call(l), rep=40)
            except Exception as exc:  # noqa: BLE001
                print("fail", launch, str(exc)[:100], flush=True)
                continue
            res.append((us, launch))
            rec(dict(case="list", n=n_sel, block_n=launch.block_n, waves=launch.waves, warps=launch.num_warps,
                     stages=launch.num_stages, us=us))
        res.sort(key=lambda r: r[0])
        print(f"list n={n_sel}: LIST_LAUNCH {base:.1f} us; best " + ", ".join(
            f"b{l.block_n}/w{l.waves}/nw{l.num_warps}/st{l.num_stages} {u:.1f}" for u, l in res[:6]), flush=True)
        by_stage = {}
        for u, l in res:
            by_stage.setdefault(l.num_stages, []).append(u)
        print(f"list n={n_sel}: best per stages " + ", ".join(f"{s}: {min(v):.1f}" for s, v in by_stage.items()),
              flush=True)
        best[n_sel] = res[0][1]
        print(f"split n={n_sel} LIST_LAUNCH: {split_times(lambda: call(kernels.LIST_LAUNCH))}", flush=True)
        print(f"split n={n_sel} best: {split_times(lambda: call(res[0][1]))}", flush=True)
    print("list kernel meta (regs, spills, shared, warps, stages):", meta(kernels._decode_attention_kernel)[:60],
          flush=True)
    return best


def ring():
    geom = GEOMETRIES["llama-3.1-8b"]
    from rtpurbo.bench.attention_decode import _ring_positions
    n_local, dim = geom.n_kv - geom.n_retrieval(), geom.head_dim
    q = _randn(1, n_local * geom.group, 1, dim)
    rk, rv = _randn(1, n_local, SINKS + 8192, dim), _randn(1, n_local, SINKS + 8192, dim)
    rpos = _ring_positions(1048576, 8192, SINKS)
    q_pos = torch.full((1, 1), 1048575, device="cuda")
    res = []
    for b, w, nw, ns in itertools.product((32, 64), (1, 2), (4, 8), (1, 2, None)):
        launch = kernels.DecodeLaunch(block_n=b, waves=w, num_warps=nw, num_stages=ns, combine_chunk=256)
        us = graph_us(lambda l=launch: kernels.decode_attention(q, rk, rv, q_pos, rpos, scale=dim**-0.5, window=8192,
                                                                sinks=SINKS, launch=l)[0], rep=40)
        res.append((us, launch))
        rec(dict(case="ring", block_n=b, waves=w, warps=nw, stages=ns, us=us))
    res.sort(key=lambda r: r[0])
    base = [u for u, l in res if l == kernels.DENSE_LAUNCH]
    print("ring alone: DENSE_LAUNCH", base, "best", ", ".join(
        f"b{l.block_n}/w{l.waves}/nw{l.num_warps}/st{l.num_stages} {u:.1f}" for u, l in res[:6]), flush=True)


def step_ab(best):
    tree = load_tree("cur", ".")
    dec = tree["decode"]
    cands = {"shipped": dec.LIST_LAUNCH}
    for n, l in best.items():
        cands[f"best{n}"] = dataclass_replace(l)
    cands["stages1"] = dec.DecodeLaunch(block_n=128, waves=2, num_stages=1, combine_chunk=256)
    cands["b64st1"] = dec.DecodeLaunch(block_n=64, waves=2, num_stages=1, combine_chunk=256)
    for length in (131072, 1048576):
        base_calls = step_case({"cur": tree}, length)
        step = base_calls["cur"]
        calls = {}
        for name, launch in cands.items():
            def fn(launch=launch):
                old = dec.LIST_LAUNCH
                dec.LIST_LAUNCH = dec.DecodeLaunch(**launch.__dict__)
                try:
                    return step()
                finally:
                    dec.LIST_LAUNCH = old
            calls[name] = fn
        res = measure("step", calls, rounds=8, rep=40)
        rec(dict(case="step_ab", L=length, **{k: v for k, v in res.items() if k != "samples_us"}))
        print(f"step L={length}: medians " + ", ".join(f"{k} {v:.1f}" for k, v in res["median_us"].items()), flush=True)
        print(f"step L={length}: vs shipped " + ", ".join(
            f"{k} {v['mean_diff_us']:+.2f} [{v['ci95'][0]:+.2f},{v['ci95'][1]:+.2f}]" for k, v in res["vs_shipped"].items()),
            "same:", res["same_selection"], flush=True)
        print(f"timeline L={length} shipped: {split_times(step)}", flush=True)


def dataclass_replace(l):
    return kernels.DecodeLaunch(**l.__dict__)


if __name__ == "__main__":
    t = time.time()
    best = lists()
    print(f"lists done {time.time() - t:.0f}s", flush=True)
    ring()
    print(f"ring done {time.time() - t:.0f}s", flush=True)
    step_ab(best)
    json.dump(rows, open(f"{OUT}/list_stages.json", "w"), indent=1)
