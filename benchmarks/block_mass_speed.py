"""Speed of the ``mass`` block scores on a GPU: the PyTorch reference against the Triton kernels.

    PYTHONPATH=. python benchmarks/block_mass_speed.py --lengths 32768,131072,1048576 --json block_mass.json

One retrieval head of a plain prefill of L tokens (16-d bf16 indexer vectors, N(0, 4) entries, blocks of 128,
4 sinks, a 512-token band): the candidates a sparse prefill ranks (``block_roles``). Per length: the median
milliseconds of :func:`rtpurbo.ops.block_scores.block_mass`, of :func:`rtpurbo.ops.triton.block_mass.block_mass`
(any positions; the flex path's) and of :func:`rtpurbo.ops.triton.block_mass.aligned_block_mass` (the Triton
sparse prefill's: no PyTorch op besides its two kernels) (``rtpurbo.bench.attention_common.time_ms``, wall time with the
host's launches), and the largest difference of each kernel's log masses from the reference's over the candidate
entries. The end-to-end cost of the reference is in
``benchmarks/results/llama-3.1-8b_h200_2026-12-04_mass-ttft.md``. ``--sweep`` also times the kernel's launch
shapes (query blocks and key blocks per program, warps) and prints one line per shape.
"""
from __future__ import annotations

import argparse
import json

import torch

from rtpurbo.bench.attention import environment
from rtpurbo.bench.attention_common import time_ms
from rtpurbo.ops import block_scores
from rtpurbo.ops.triton import block_mass

BLOCK, SINKS, BAND, DIM = 128, 4, 512, 16


def run_point(length: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(length)
    q_idx = (torch.randn(1, 1, length, DIM, device="cuda", generator=g) * 2).to(torch.bfloat16)
    k_idx = (torch.randn(1, 1, length, DIM, device="cuda", generator=g) * 2).to(torch.bfloat16)
    pos = torch.arange(length, device="cuda")[None]
    seen, always = block_scores.block_roles(pos, pos, BLOCK, SINKS, BAND)
    candidates = seen & ~always
    args = (q_idx, k_idx, pos, pos, candidates, BLOCK)
    want = block_scores.block_mass(*args)
    row = dict(L=length)
    kernels = {"triton": lambda: block_mass.block_mass(*args),
               "aligned": lambda: block_mass.aligned_block_mass(q_idx, k_idx, SINKS, BAND, BLOCK)}
    for name, kernel in kernels.items():
        got = kernel()
        finite = torch.isfinite(want)
        row[f"{name}_same_candidate_entries"] = torch.equal(finite, torch.isfinite(got))
        row[f"{name}_max_abs_err"] = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
        del got
    del want
    row["torch_ms"] = time_ms(lambda: block_scores.block_mass(*args))
    for name, kernel in kernels.items():
        row[f"{name}_ms"] = time_ms(kernel)
        row[f"{name}_speedup"] = row["torch_ms"] / row[f"{name}_ms"]
    return row


def sweep_point(length: int) -> list[dict]:
    """Kernel milliseconds per launch shape (module constants of rtpurbo.ops.triton.block_mass) at one length."""
    g = torch.Generator(device="cuda").manual_seed(length)
    q_idx, k_idx = ((torch.randn(1, 1, length, DIM, device="cuda", generator=g) * 2).to(torch.bfloat16) for _ in "qk")
    pos = torch.arange(length, device="cuda")[None]
    seen, always = block_scores.block_roles(pos, pos, BLOCK, SINKS, BAND)
    args = (q_idx, k_idx, pos, pos, seen & ~always, BLOCK)
    shipped = (block_mass.QUERY_BLOCKS, block_mass.KEY_BLOCKS, block_mass.NUM_WARPS)
    rows = []
    try:
        for qb, kb, warps in [(8, 16, 4), (8, 16, 8), (8, 32, 4), (8, 8, 4), (4, 16, 4), (16, 16, 8), (16, 32, 8)]:
            block_mass.QUERY_BLOCKS, block_mass.KEY_BLOCKS, block_mass.NUM_WARPS = qb, kb, warps
            rows.append(dict(L=length, query_blocks=qb, key_blocks=kb, num_warps=warps,
                             triton_ms=time_ms(lambda: block_mass.block_mass(*args))))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        block_mass.QUERY_BLOCKS, block_mass.KEY_BLOCKS, block_mass.NUM_WARPS = shipped
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="32768,131072")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--sweep", action="store_true", help="also time the kernel's launch shapes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/block_mass_speed.py times GPU kernels: it needs CUDA")
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        rows.append(run_point(length))
        print(json.dumps(rows[-1]), flush=True)
    if args.sweep:
        for length in (int(x) for x in args.lengths.split(",")):
            rows += sweep_point(length)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(dict(environment=environment(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
