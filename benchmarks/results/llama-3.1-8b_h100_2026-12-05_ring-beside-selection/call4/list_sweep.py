"""Why a retrieval head's list attention over ~36K of 1M keys takes ~40 us: locality vs launch shape (GPU)."""
import itertools

import torch

from rtpurbo.bench.attention_common import RECENT, _randn, graph_us
from rtpurbo.ops.triton import decode as kernels

SINKS = 4


def main():
    length, dim, group = 1048576, 128, 4
    q = _randn(1, group, 1, dim)
    k, v = _randn(1, 1, length, dim), _randn(1, 1, length, dim)
    q_pos, k_pos = torch.full((1, 1), length - 1, device="cuda"), torch.arange(length, device="cuda")[None]
    always = torch.cat([torch.arange(SINKS), torch.arange(length - RECENT, length)]).to("cuda", torch.int32)[None]
    n_sel = 36864
    lists = {
        "spread-1M": torch.sort(torch.randperm(length - RECENT - SINKS, device="cuda")[:n_sel])[0] + SINKS,
        "within-64K": torch.sort(torch.randperm(65536, device="cuda")[:n_sel])[0] + SINKS,
        "contiguous": torch.arange(n_sel, device="cuda") + SINKS,
        "spread-6K": torch.sort(torch.randperm(length - RECENT - SINKS, device="cuda")[:6144])[0] + SINKS,
    }
    for name, slots in lists.items():
        index = torch.zeros(1, 1, length, dtype=torch.int64, device="cuda")
        index[0, 0, : len(slots)] = slots
        n_index = torch.full((1, 1), len(slots), device="cuda")
        nbytes = 2 * len(slots) * dim * 2
        grid = [kernels.LIST_LAUNCH] + [kernels.DecodeLaunch(block_n=b, waves=w, num_warps=nw, num_stages=ns,
                                                             combine_chunk=256)
                                        for b, w, nw, ns in itertools.product((32, 64, 128), (2, 8), (4, 8), (None, 1))]
        for launch in grid if name in ("spread-1M", "spread-6K") else grid[:1]:
            fn = lambda l=launch: kernels.decode_attention(  # noqa: E731
                q, k, v, q_pos, k_pos, scale=dim**-0.5, index=index, n_index=n_index, always=always,
                skip_sinks=SINKS, skip_recent=RECENT, launch=l)[0]
            us = graph_us(fn, rep=60)
            print(f"list {name} n={len(slots)} block_n={launch.block_n} waves={launch.waves} warps={launch.num_warps} "
                  f"stages={launch.num_stages}: {us:.1f} us {nbytes / us / 1e3:.0f} GB/s", flush=True)
    # a dense pass over the same K/V bytes, for reference: every key of 36K contiguous slots
    fn = lambda: kernels.decode_attention(q, k[:, :, :n_sel], v[:, :, :n_sel], q_pos, k_pos[:, :n_sel],  # noqa: E731
                                          scale=dim**-0.5)[0]
    print(f"dense 36K keys: {graph_us(fn, rep=60):.1f} us", flush=True)


if __name__ == "__main__":
    main()
