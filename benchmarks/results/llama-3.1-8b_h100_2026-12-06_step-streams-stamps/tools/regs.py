"""Registers, spills and shared memory of every compiled kernel of each tree, after one 256K step of each."""
import sys
import torch
sys.path.insert(0, "benchmarks")
from decode_step_ab import load_trees, step_case

trees = load_trees(sys.argv[1:])
calls = step_case(trees, 262144, [], 1)
for name, call in calls.items():
    call()
    torch.cuda.synchronize()
    tree = trees[name]
    for mod in ("decode", "threshold"):
        m = tree[mod]
        for attr in dir(m):
            fn = getattr(m, attr)
            caches = getattr(fn, "device_caches", None)
            if not caches:
                continue
            for dev, entry in caches.items():
                kernels = entry[0] if isinstance(entry, tuple) else entry
                for key, k in kernels.items():
                    try:
                        k._init_handles()
                    except Exception:
                        pass
                    md = k.metadata
                    consts = {c: v for c, v in getattr(k.src, "constants", {}).items()} if hasattr(k, "src") else {}
                    print(f"{name:8s} {attr:26s} regs {getattr(k, 'n_regs', '?'):>4} spills {getattr(k, 'n_spills', '?'):>3} "
                          f"shared {md.shared:>6} warps {md.num_warps} maxnreg {getattr(md, 'maxnreg', None)} "
                          f"{str(key)[-160:]}")
