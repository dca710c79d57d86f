"""Records every launch of a tree's selecting chain (index_scores, topp_threshold, decode_attention in list and
ring mode, combine; with and without PDL) through the interpreter's entry point without running any, as launch specs
for tests.triton_interpreter, which compiles each for sm_90 on the CPU and holds the PDL ones to the ordering rules
(compile_tree.sh runs both steps):

    cd TREE && PYTHONPATH=. TRITON_INTERPRET=1 python3 compile_check.py specs.json
    cd TREE && PYTHONPATH=. python3 -m tests.triton_interpreter specs.json tests/test_decode_interpret.py
"""
import json
import sys

import torch
from triton.runtime.interpreter import InterpretedFunction

sys.path.insert(0, ".")
from tests import triton_interpreter as ti  # noqa: E402

seen = {}


def recording_run(self, *args, grid, warmup, **kwargs):
    spec = ti.launch_spec(self.fn, args, kwargs)
    seen.setdefault(json.dumps(spec, sort_keys=True, default=str), spec)




def main():
    InterpretedFunction.run = recording_run
    from rtpurbo.ops.triton import decode, threshold

    n, d_idx, hd, group = 4096, 16, 128, 4
    q_idx = torch.randn(1, 1, 1, d_idx)
    k_idx = torch.randn(1, 1, n, d_idx)
    q_pos = torch.tensor([[n - 1]])
    k_pos = torch.arange(n)[None]
    flat = torch.zeros(threshold.workspace_size(1), dtype=torch.int64)
    for pdl in (False, True):
        scored = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=4, recent=64, zero=flat, pdl=pdl)
        work, sync = threshold.split_workspace(flat, 1)
        order, n_keep = threshold.topp_threshold(scored.scores.view(1, n), scored.block_max, scored.block_sum,
                                                 scored.block_count, scored.block_min, top_p=0.9, min_tokens=64,
                                                 max_tokens=None, work=work, sync=sync, pdl=pdl)
        q = torch.randn(1, group, 1, hd, dtype=torch.bfloat16)
        k = torch.randn(1, 1, n, hd, dtype=torch.bfloat16)
        decode.decode_attention(q, k, k, q_pos, k_pos, scale=hd ** -0.5, index=order.view(1, 1, -1),
                                n_index=n_keep.view(1, 1), always=scored.always, skip_sinks=4, skip_recent=64, pdl=pdl)
        decode.decode_attention(q, k, k, q_pos, k_pos, scale=hd ** -0.5, window=1024, sinks=4,
                                launch=decode.BESIDE_LAUNCH)
    specs = list(seen.values())
    print(len(specs), "launches recorded")
    open(sys.argv[1], "w").write(json.dumps(specs, default=str))


if __name__ == "__main__":
    main()
