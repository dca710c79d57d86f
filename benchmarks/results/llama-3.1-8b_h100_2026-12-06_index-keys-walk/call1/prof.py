"""Where the selecting step's time goes (GPU): graph timelines of one layer's step with and without
the local heads' ring, and one eager step between cudaProfilerStart / Stop for ncu.

    PYTHONPATH=. python3 prof.py timeline 128K,1M
    RTPURBO_PDL=0 ncu --profile-from-start off --csv --page details ... python3 prof.py ncu 128K,1M

Run from the root of a tree holding benchmarks/decode_step_ab.py; the tree measured is the one run from."""
import os
import sys

import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import decode_step_ab as ab
from triton.testing import do_bench

mode = sys.argv[1]
lengths = [ab.LENGTHS[x] for x in sys.argv[2].split(",")]
trees = ab.load_trees(["new=."])
tree = trees["new"]
for L in lengths:
    calls = ab.step_case(trees, L, [], 1)
    step = calls["new"]
    x = ab._layer_inputs(L, 0)
    q_pos, k_pos = torch.full((1, 1), L - 1, device="cuda"), torch.arange(L, device="cuda")[None]
    def chain_only():
        return tree["topp"].topp_attention(x["q"][:, :4], x["k"], x["v"], q_pos, k_pos, x["q_idx"], x["k_idx"],
                                           top_p=ab.TOP_P, min_tokens=ab.MIN_TOKENS, sinks=ab.SINKS, recent=ab.RECENT)
    if mode == "ncu":
        for _ in range(3):
            step(); chain_only()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        step(); torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        continue
    for name, fn in (("step", step), ("chain_only", chain_only)):
        g = ab._graph(fn)
        us = [1000 * do_bench(g.replay, warmup=10, rep=60, return_mode="median") for _ in range(5)]
        print(f"{L} {name}: median {sorted(us)[2]:.1f} us; timeline {ab.timeline(g)}", flush=True)
