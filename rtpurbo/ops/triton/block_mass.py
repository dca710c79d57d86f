"""The ``mass`` block scores of the sparse prefill in one Triton kernel, without materialising token logits.

:func:`rtpurbo.ops.block_scores.block_mass` (readable PyTorch, the reference) writes the fp32 indexer logits of
the representative queries against every key, chunk by chunk, then reduces each key block by log-sum-exp and
takes a softmax over the candidate blocks. At long contexts that is memory traffic: on an H200 it added
about 25 ms per retrieval head to a 128K prefill and 0.9 s at 1M
(``benchmarks/results/llama-3.1-8b_h200_2026-12-04_mass-ttft.md``).

Here one program takes ``QB`` query blocks (``QB * r`` representative queries, ``r`` per block) of one
(batch row, head) and walks the key blocks twice, keeping the logits of one key block in registers:

1. for every query, the log-sum-exp over its visible keys of each candidate key block, folded online into
   ``Z`` = log-sum-exp over all its candidate blocks;
2. the same block log-sum-exps again; ``exp(lse - Z)`` is the query's mass on the block, averaged over the
   block's queries that see some candidate, and its log is written.

Key blocks that no query block of the program has as a candidate are skipped (the causal future among
them). Logits are fp32 dot products of fp32 inputs (``ieee``), as in the reference; only summation orders
differ. Output entries that are not candidates keep ``-inf``. No host sync.

The sparse prefill (:func:`rtpurbo.ops.block_scores.block_scores`) calls the reference. This kernel is checked
against it in the Triton interpreter (``tests/test_block_mass_interpret.py``) and on a GPU
(``tests/test_ops_gpu.py``); ``benchmarks/block_mass_speed.py`` times the two.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..block_scores import MASS_QUERIES, mass_inputs

QUERY_BLOCKS = 8  # query blocks per program: 64 representative queries share each loaded key block


@triton.jit
def _block_lse(q, qp, key_ptrs, kp_ptrs, d_ok, cand, BLOCK: tl.constexpr):
    """Per query row: log-sum-exp of its logits over the visible keys of one key block (``-inf`` if none or if
    the block is not its candidate). q (M, D) fp32, qp (M,) positions, cand (M,) candidate flags."""
    kp = tl.load(kp_ptrs)
    keys = tl.load(key_ptrs, mask=d_ok[None, :], other=0.0)
    logits = tl.dot(q, tl.trans(keys), input_precision="ieee")  # (M, BLOCK)
    seen = (kp[None, :] >= 0) & (kp[None, :] <= qp[:, None]) & cand[:, None]
    logits = tl.where(seen, logits, float("-inf"))
    top = tl.max(logits, axis=1)
    ref = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.exp(logits - ref[:, None]), axis=1)
    return tl.where(top == float("-inf"), float("-inf"), ref + tl.log(total))


@triton.jit
def _block_mass_kernel(
    q_ptr, qpos_ptr, k_ptr, kpos_ptr, cand_ptr, out_ptr,
    n_heads, n_q, n_k, d_idx,
    s_qb, s_qh, s_qi, s_qr, s_qd, s_pb, s_pi, s_pr, s_kb, s_kh, s_kn, s_kd, s_kpb, s_kpn,
    s_cb, s_ch, s_ci, s_cj, s_ob, s_oh, s_oi, s_oj,
    R: tl.constexpr, QB: tl.constexpr, BLOCK: tl.constexpr, D_PAD: tl.constexpr,
):
    bh = tl.program_id(0)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    m = tl.arange(0, QB * R)
    qblock = tl.program_id(1) * QB + m // R  # the query block of each row
    rep = m % R
    row_ok = qblock < n_q
    d = tl.arange(0, D_PAD)
    d_ok = d < d_idx
    q = tl.load(q_ptr + b * s_qb + h * s_qh + qblock[:, None] * s_qi + rep[:, None] * s_qr + d[None, :] * s_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    qp = tl.load(qpos_ptr + b * s_pb + qblock * s_pi + rep * s_pr, mask=row_ok, other=-1)
    cand_row = cand_ptr + b * s_cb + h * s_ch + qblock * s_ci
    n = tl.arange(0, BLOCK)
    keys_at = k_ptr + b * s_kb + h * s_kh + n[:, None] * s_kn + d[None, :] * s_kd
    kpos_at = kpos_ptr + b * s_kpb + n * s_kpn

    z = tl.full([QB * R], float("-inf"), tl.float32)
    for j in range(0, n_k):
        cand = tl.load(cand_row + j * s_cj, mask=row_ok, other=0) != 0
        if tl.max(cand.to(tl.int32), axis=0) > 0:
            lse = _block_lse(q, qp, keys_at + j * BLOCK * s_kn, kpos_at + j * BLOCK * s_kpn, d_ok, cand, BLOCK)
            top = tl.maximum(z, lse)
            ref = tl.where(top == float("-inf"), 0.0, top)
            z = tl.where(top == float("-inf"), float("-inf"), ref + tl.log(tl.exp(z - ref) + tl.exp(lse - ref)))

    sees = z > float("-inf")
    g = tl.arange(0, QB)
    member = (m // R)[None, :] == g[:, None]  # (QB, M): the rows of each query block
    n_sees = tl.maximum(tl.sum(tl.where(member & sees[None, :], 1.0, 0.0), axis=1), 1.0)
    out_at = out_ptr + b * s_ob + h * s_oh + (tl.program_id(1) * QB + g) * s_oi
    g_ok = tl.program_id(1) * QB + g < n_q
    for j in range(0, n_k):
        cand = tl.load(cand_row + j * s_cj, mask=row_ok, other=0) != 0
        if tl.max(cand.to(tl.int32), axis=0) > 0:
            lse = _block_lse(q, qp, keys_at + j * BLOCK * s_kn, kpos_at + j * BLOCK * s_kpn, d_ok, cand, BLOCK)
            p = tl.where(sees & (lse > float("-inf")), tl.exp(lse - tl.where(sees, z, 0.0)), 0.0)
            mass = tl.sum(tl.where(member, p[None, :], 0.0), axis=1) / n_sees  # (QB,)
            chosen = tl.max(tl.where(member, cand[None, :].to(tl.int32), 0), axis=1) > 0
            value = tl.log(tl.maximum(mass, 1.1754943508222875e-38))
            tl.store(out_at + j * s_oj, value, mask=g_ok & chosen)


def block_mass(q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               candidates: torch.Tensor, block: int, queries: int = MASS_QUERIES) -> torch.Tensor:
    """:func:`rtpurbo.ops.block_scores.block_mass` in one kernel launch; same arguments and result (up to fp32
    summation order). ``block`` must be a power of two of at least 16, ``queries`` a power of two."""
    if block < 16 or block & (block - 1) or queries & (queries - 1):
        raise ValueError(f"the mass kernel needs a power-of-two block >= 16 and queries, got {block} and {queries}")
    q_rep, q_rep_pos, keys, key_pos = mass_inputs(q_idx, k_idx, q_pos, k_pos, block, queries)
    batch, heads, n_q, _, d_idx = q_rep.shape
    n_k = key_pos.shape[1] // block
    cand = candidates.expand(batch, candidates.shape[1], n_q, n_k).to(torch.uint8)
    out = torch.full((batch, heads, n_q, n_k), float("-inf"), dtype=torch.float32, device=q_idx.device)
    group = max(QUERY_BLOCKS, triton.cdiv(16, queries))  # tl.dot needs 16 rows or more
    _block_mass_kernel[(batch * heads, triton.cdiv(n_q, group))](
        q_rep, q_rep_pos, keys, key_pos, cand, out, heads, n_q, n_k, d_idx,
        *q_rep.stride(), *q_rep_pos.stride(), *keys.stride(), *key_pos.stride(),
        cand.stride(0), cand.stride(1) if cand.shape[1] > 1 else 0, cand.stride(2), cand.stride(3),
        *out.stride(),
        R=queries, QB=group, BLOCK=block, D_PAD=max(16, triton.next_power_of_2(d_idx)), num_warps=4,
    )
    return out
