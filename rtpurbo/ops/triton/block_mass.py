"""The ``mass`` block scores of the sparse prefill without materialising token logits: one Triton kernel for the
per-key-block log-sum-exps, then the reference's last steps in PyTorch.

:func:`rtpurbo.ops.block_scores.block_mass` (readable PyTorch, the reference) writes the fp32 indexer logits of
the representative queries against every key, chunk by chunk, then reduces each key block by log-sum-exp and
takes a softmax over the candidate blocks. At long contexts that is memory traffic: on an H200 it added
about 25 ms per retrieval head to a 128K prefill and 0.9 s at 1M
(``benchmarks/results/llama-3.1-8b_h200_2026-12-04_mass-ttft.md``).

Here, per chunk of query blocks:

1. ``_block_lse_kernel`` writes, for every representative query and candidate key block, the log-sum-exp of the
   query's logits over the block's visible keys (``-inf`` where none, or where the block is no candidate of the
   query's block): ``1 / block`` of the logits' size. One program per (batch row x head, ``QUERY_BLOCKS`` query
   blocks, ``KEY_BLOCKS`` key blocks). These pairs are independent, so the grid fills the card at any length,
   every exponential is taken once, and logits stay in registers. A program none of whose key blocks is a
   candidate of its query blocks (the causal future) returns at once.
2. :func:`rtpurbo.ops.block_scores.log_block_mass`, the reference's own last steps: per query the softmax over
   its blocks, averaged over the block's queries that see some candidate; its log.

Chunks hold at most :data:`~rtpurbo.ops.block_scores.MASS_CHUNK_ELEMENTS` block log-sum-exps, as the reference
bounds its logits. Logits are fp32: bf16 / fp16 indexer vectors are read as they are and go to the tensor cores as
tf32, which holds their values exactly (so the products are exact and sum in fp32); fp32 ones go through an
``ieee`` dot. The reference computes the same products in fp32, so only summation orders differ. (The Triton 3.9
interpreter gets a bf16 ``tl.dot`` wrong; the tf32 route also keeps the kernel testable there.) Output entries
that are not candidates are ``-inf``. No host sync.

The sparse prefill on CUDA (:func:`rtpurbo.ops.flex.block_sparse_plan`) calls this; the reference
(:func:`rtpurbo.ops.block_scores.block_scores`) defines it and runs elsewhere. Checked against it in the Triton
interpreter (``tests/test_block_mass_interpret.py``) and on a GPU (``tests/test_ops_gpu.py``);
``benchmarks/block_mass_speed.py`` times the two.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..block_scores import MASS_CHUNK_ELEMENTS, MASS_QUERIES, log_block_mass, mass_inputs

QUERY_BLOCKS = 8  # query blocks per program: 64 representative queries share each loaded key block
KEY_BLOCKS = 16  # key blocks per program
NUM_WARPS = 4


@triton.jit
def _block_lse_kernel(
    q_ptr, qpos_ptr, k_ptr, kpos_ptr, cand_ptr, lse_ptr,
    n_heads, q_first, q_end, n_k, d_idx, n_rows,
    s_qb, s_qh, s_qi, s_qr, s_qd, s_pb, s_pi, s_pr, s_kb, s_kh, s_kn, s_kd, s_kpb, s_kpn,
    s_cb, s_ch, s_ci, s_cj,
    R: tl.constexpr, QB: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr, D_PAD: tl.constexpr,
    HALF: tl.constexpr,
):
    bh = tl.program_id(0)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    first = q_first + tl.program_id(1) * QB  # this program's first query block
    j_first = tl.program_id(2) * KB
    j_end = tl.minimum(j_first + KB, n_k)
    cand_at = cand_ptr + b * s_cb + h * s_ch
    g = first + tl.arange(0, QB)
    jt = j_first + tl.arange(0, KB)
    tile = tl.load(cand_at + g[:, None] * s_ci + jt[None, :] * s_cj, mask=(g < q_end)[:, None] & (jt < n_k)[None, :],
                   other=0)
    if tl.sum(tl.sum((tile != 0).to(tl.int32), axis=1), axis=0) > 0:
        m = tl.arange(0, QB * R)
        qblock = first + m // R  # the query block of each row
        rep = m % R
        row_ok = qblock < q_end
        d = tl.arange(0, D_PAD)
        d_ok = d < d_idx
        q = tl.load(q_ptr + b * s_qb + h * s_qh + qblock[:, None] * s_qi + rep[:, None] * s_qr + d[None, :] * s_qd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        qp = tl.load(qpos_ptr + b * s_pb + qblock * s_pi + rep * s_pr, mask=row_ok, other=-1)
        if HALF:  # bf16 / fp16 values are exact in tf32: tensor cores, exact products, fp32 sums
            q = q.to(tl.float32)
        n = tl.arange(0, BLOCK)
        out_at = lse_ptr + (bh * n_k).to(tl.int64) * n_rows + (qblock - q_first) * R + rep
        for j in range(j_first, j_end):
            cand = tl.load(cand_at + qblock * s_ci + j * s_cj, mask=row_ok, other=0) != 0
            kp = tl.load(kpos_ptr + b * s_kpb + (j * BLOCK + n) * s_kpn)
            keys = tl.load(k_ptr + b * s_kb + h * s_kh + (j * BLOCK + n)[:, None].to(tl.int64) * s_kn
                           + d[None, :] * s_kd, mask=d_ok[None, :], other=0.0)
            if HALF:
                logits = tl.dot(q, tl.trans(keys.to(tl.float32)), input_precision="tf32")  # (QB * R, BLOCK)
            else:
                logits = tl.dot(q, tl.trans(keys), input_precision="ieee")
            seen = (kp[None, :] >= 0) & (kp[None, :] <= qp[:, None]) & cand[:, None]
            logits = tl.where(seen, logits, float("-inf"))
            top = tl.max(logits, axis=1)
            ref = tl.where(top == float("-inf"), 0.0, top)
            total = tl.sum(tl.exp(logits - ref[:, None]), axis=1)
            lse = tl.where(top == float("-inf"), float("-inf"), ref + tl.log(total))
            tl.store(out_at + j * n_rows, lse, mask=row_ok)  # j * n_rows < the chunk's elements: int32


def block_mass(q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               candidates: torch.Tensor, block: int, queries: int = MASS_QUERIES,
               chunk_elements: int = MASS_CHUNK_ELEMENTS) -> torch.Tensor:
    """:func:`rtpurbo.ops.block_scores.block_mass` with the block log-sum-exps from one kernel per chunk; same
    arguments and result (up to fp32 summation order). ``block`` must be a power of two of at least 16,
    ``queries`` a power of two."""
    if block < 16 or block & (block - 1) or queries & (queries - 1):
        raise ValueError(f"the mass kernel needs a power-of-two block >= 16 and queries, got {block} and {queries}")
    half = q_idx.dtype in (torch.bfloat16, torch.float16) and k_idx.dtype == q_idx.dtype
    q_rep, q_rep_pos, keys, key_pos = mass_inputs(q_idx, k_idx, q_pos, k_pos, block, queries,
                                                  q_idx.dtype if half else torch.float32)
    batch, heads, n_q, _, d_idx = q_rep.shape
    n_k = key_pos.shape[1] // block
    cand = candidates.expand(batch, candidates.shape[1], n_q, n_k).to(torch.uint8)
    out = torch.empty(batch, heads, n_q, n_k, dtype=torch.float32, device=q_idx.device)
    group = max(QUERY_BLOCKS, triton.cdiv(16, queries))  # tl.dot needs 16 rows or more
    step = max(1, chunk_elements // max(1, batch * heads * n_k * queries))
    for lo in range(0, n_q, step):
        hi = min(n_q, lo + step)
        lse = torch.full((batch, heads, n_k, hi - lo, queries), float("-inf"), dtype=torch.float32,
                         device=q_idx.device)
        _block_lse_kernel[(batch * heads, triton.cdiv(hi - lo, group), triton.cdiv(n_k, KEY_BLOCKS))](
            q_rep, q_rep_pos, keys, key_pos, cand, lse, heads, lo, hi, n_k, d_idx, (hi - lo) * queries,
            *q_rep.stride(), *q_rep_pos.stride(), *keys.stride(), *key_pos.stride(),
            cand.stride(0), cand.stride(1) if cand.shape[1] > 1 else 0, cand.stride(2), cand.stride(3),
            R=queries, QB=group, KB=KEY_BLOCKS, BLOCK=block, D_PAD=max(16, triton.next_power_of_2(d_idx)),
            HALF=half, num_warps=NUM_WARPS,
        )
        out[:, :, lo:hi] = log_block_mass(lse.permute(0, 1, 3, 4, 2), cand[:, :, lo:hi] != 0)
    return out
