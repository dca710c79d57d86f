"""Keys each layer's selection keeps in decode_step_ab's step case (seeds 0..7), at the given lengths (GPU).

    PYTHONPATH=. python3 layer_keys.py 128K,1M   # from the root of a tree holding benchmarks/decode_step_ab.py
"""
import os
import sys

import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import decode_step_ab as ab

tree = ab.load_trees(["new=."])["new"]
for label in sys.argv[1].split(","):
    L = ab.LENGTHS[label]
    q_pos, k_pos = torch.full((1, 1), L - 1, device="cuda"), torch.arange(L, device="cuda")[None]
    counts = []
    for seed in range(8):
        x = ab._layer_inputs(L, seed)
        _, n = tree["topp"].topp_attention(x["q"][:, :4], x["k"], x["v"], q_pos, k_pos, x["q_idx"], x["k_idx"],
                                           top_p=ab.TOP_P, min_tokens=ab.MIN_TOKENS, sinks=ab.SINKS, recent=ab.RECENT)
        counts.append(int(n.sum()))
    print(f"{label}: keys selected per layer (seeds 0-7) {counts}, mean {sum(counts) / 8:.0f}", flush=True)
