"""The retrieval heads' sparse prefill on its two kernel choices, flex and Triton, on a GPU.

    PYTHONPATH=. python benchmarks/sparse_prefill_kernels.py --lengths 32768,131072 --json sparse_prefill_kernels.json

One Llama-3.1-8B attention layer (32 query / 8 KV heads, head dim 128, bf16, random weights): 1 retrieval KV head (4
query heads) on the sparse prefill of an unpadded prompt (``aligned``, as the model calls it), 7 local KV heads at
W = 8192, S = 4 on the current window kernel. Random 16-d indexer vectors score blocks almost evenly, so top-p 0.999
keeps ``--blocks`` chosen key blocks per query block (``max_blocks``), plus the sink block and a 512-token band; the
last ``--tails`` queries attend densely.

Per length, scoring and kernel choice (:func:`rtpurbo.ops.flex.set_sparse_prefill_kernel`): median milliseconds of
the retrieval heads' call alone and of the whole layer (``rtpurbo.bench.attention_common.time_ms``: CUDA events, warm-up,
L2 flushed), and under torch.profiler (5 calls) the call's wall and device (summed kernel) time, kernel launches and
aten ops per call, and against the flex choice: the kept blocks (equal, or the counts) and the relative difference
of the outputs. The local heads alone are timed too: the layer's floor.
"""
from __future__ import annotations

import argparse
import json

import torch

from rtpurbo.bench.attention import environment
from rtpurbo.bench.attention_common import INDEX_DIM, _once_ms, _randn, time_ms
from rtpurbo.bench.attention_prefill import _merged_layer, _model_layout
from rtpurbo.bench.decode_profile import profile
from rtpurbo.bench.flags import comma_list, one_of, tokens
from rtpurbo.cli_args import positive_int
from rtpurbo.ops import api, flex

N_Q, N_KV, N_RET, DIM, WINDOW, SINKS, BAND = 32, 8, 1, 128, 8192, 4, 512


def _profile(fn, calls: int = 5) -> dict:
    """torch.profiler over ``calls`` calls: wall and device (summed kernel) ms per call, busy fraction, kernel
    launches and aten ops per call (:func:`rtpurbo.bench.decode_profile.profile`)."""
    got = profile(lambda: _once_ms(lambda: [fn() for _ in range(calls)]), calls, True)
    return {key: got[f"{key}_per_step"] for key in ("wall_ms", "device_ms", "kernels", "ops")}


def run_point(length: int, scoring: str, blocks: int, kernels: list[str], tail: int) -> list[dict]:
    split = N_RET * (N_Q // N_KV)
    q, k, v = (_model_layout(length, n, DIM) for n in (N_Q, N_KV, N_KV))
    pos = torch.arange(length, device="cuda")[None]
    q_idx, k_idx = _randn(1, N_RET, length, INDEX_DIM), _randn(1, N_RET, length, INDEX_DIM)
    plan = api.plan(pos, pos, window=WINDOW, sinks=SINKS, plain=True, impl="flex")

    def local(out=None):
        return api.attention(q[:, split:], k[:, N_RET:], v[:, N_RET:], pos, pos, window=WINDOW, sinks=SINKS,
                             impl="flex", plain=True, plan=plan, out=out)

    def retrieval():
        return api.sparse_prefill(q[:, :split], k[:, :N_RET], v[:, :N_RET], pos, pos, q_idx, k_idx, top_p=0.999,
                                  max_blocks=blocks, sinks=SINKS, band=BAND, scoring=scoring, impl="flex", aligned=True,
                                  tail=tail)

    rows, first = [], None
    for kernel in kernels:
        previous = flex.set_sparse_prefill_kernel(kernel)
        try:
            out, kept, seen = retrieval()  # compiles, outside the timing
            torch.cuda.synchronize()
            row = dict(L=length, scoring=scoring, blocks=blocks, tail=tail, kernel=kernel, kept=int(kept), seen=int(seen),
                       retrieval_ms=time_ms(lambda: retrieval()[0]),
                       layer_ms=time_ms(lambda: _merged_layer(q, split, lambda: retrieval()[0], local)))
            row.update({f"profiled_{key}": value for key, value in _profile(lambda: retrieval()[0]).items()})
        finally:
            flex.set_sparse_prefill_kernel(previous)
        if first is None:
            first = out
        else:
            row["rel_diff_vs_first"] = ((out.float() - first.float()).norm() / first.float().norm()).item()
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.append(dict(L=length, kernel="local heads alone", layer_ms=time_ms(local)))
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=comma_list(tokens), default=[32768, 131072])
    parser.add_argument("--scorings", type=comma_list(one_of(["pooled", "mass"])), default=["pooled", "mass"])
    parser.add_argument("--blocks", type=positive_int, default=16, help="chosen key blocks per query block")
    parser.add_argument("--tails", type=comma_list(int), default=[0], help="dense tails (last queries attending to "
                        "every key), comma-separated, e.g. 0,1024")
    parser.add_argument("--kernels", type=comma_list(one_of(flex.SPARSE_PREFILL_KERNELS)),
                        default=["flex", "triton"])
    parser.add_argument("--json", help="write the environment and every row here")
    args = parser.parse_args()
    rows = [row for length in args.lengths for scoring in args.scorings for tail in args.tails
            for row in run_point(length, scoring, args.blocks, args.kernels, tail)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=environment(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
