"""The ``mass`` block scores of the sparse prefill without materialising token logits: :func:`block_mass` (any
positions and candidates) runs one Triton kernel for the per-key-block log-sum-exps, then the reference's last steps
in PyTorch; :func:`aligned_block_mass` (the aligned layout) runs both in Triton, with no other PyTorch op.

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

:func:`aligned_block_mass` is the same computation for the aligned layout of
:mod:`rtpurbo.ops.triton.block_sparse`, where positions, representative slots and candidates are arithmetic: the
gathers, padding copies, candidate mask and the ~40 small PyTorch ops around the kernel above (each a launch and
host time, once per layer) go. ``_aligned_lse_kernel`` reads q_idx and k_idx in place and writes the candidate
entries of the block log-sum-exps; ``_log_mass_kernel`` (one program per batch row x head and query block) does
:func:`~rtpurbo.ops.block_scores.log_block_mass`'s work on them, reading the candidates only, in steps of
:data:`LOG_MASS_KEY_BLOCKS` key blocks (an online softmax max and sum, then the masses), so no entry needs a fill.

The sparse prefill on CUDA calls these (:func:`block_mass` from :func:`rtpurbo.ops.flex_plans.block_sparse_plan`,
:func:`aligned_block_mass` from :func:`rtpurbo.ops.triton.block_sparse.sparse_prefill`); the reference
(:func:`rtpurbo.ops.block_scores.block_scores`) defines them and runs elsewhere. Checked against it in the Triton
interpreter (``tests/test_block_mass_interpret.py``, ``tests/test_block_mass_aligned_interpret.py``) and on a GPU
(``tests/test_ops_gpu.py``); ``benchmarks/block_mass_speed.py`` times the reference and :func:`block_mass`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..block_scores import MASS_CHUNK_ELEMENTS, MASS_QUERIES, log_block_mass, mass_inputs
from .block_roles import aligned_block_roles

QUERY_BLOCKS = 8  # query blocks per program: 64 representative queries share each loaded key block
KEY_BLOCKS = 16  # key blocks per program
LOG_MASS_KEY_BLOCKS = 1024  # key blocks per step of the aligned path's log-mass loops
NUM_WARPS = 4
_HALF = (torch.bfloat16, torch.float16)  # their values are exact in tf32
_TINY = tl.constexpr(torch.finfo(torch.float32).tiny)  # the reference's floor of a candidate's mass


@triton.jit
def _row_lse(q, keys, seen, HALF: tl.constexpr):
    """Per row of q (M, D) fp32: the log-sum-exp of its logits against keys (N, D) over the entries that seen (M, N)
    marks, ``-inf`` where it marks none. HALF: q's and the keys' values are bf16 / fp16, exact in tf32 (tensor
    cores, exact products, fp32 sums); otherwise an ``ieee`` fp32 dot."""
    keys = keys.to(tl.float32)
    if HALF:
        logits = tl.dot(q, tl.trans(keys), input_precision="tf32")
    else:
        logits = tl.dot(q, tl.trans(keys), input_precision="ieee")
    logits = tl.where(seen, logits, float("-inf"))
    top = tl.max(logits, axis=1)
    ref = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.exp(logits - ref[:, None]), axis=1)
    return tl.where(top == float("-inf"), float("-inf"), ref + tl.log(total))


@triton.jit
def _program_tile(n_heads, q_first, n_k, QB: tl.constexpr, KB: tl.constexpr):
    """What a block-LSE program covers: its (batch row x head) index ``bh`` and that row ``b`` and head ``h``
    (int64), its first query block, and its key blocks ``[j_first, j_end)``."""
    bh = tl.program_id(0)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    first = q_first + tl.program_id(1) * QB
    j_first = tl.program_id(2) * KB
    return bh, b, h, first, j_first, tl.minimum(j_first + KB, n_k)


@triton.jit
def _block_lse_kernel(
    q_ptr, qpos_ptr, k_ptr, kpos_ptr, cand_ptr, lse_ptr,
    n_heads, q_first, q_end, n_k, d_idx, n_rows,
    s_qb, s_qh, s_qi, s_qr, s_qd, s_pb, s_pi, s_pr, s_kb, s_kh, s_kn, s_kd, s_kpb, s_kpn,
    s_cb, s_ch, s_ci, s_cj,
    R: tl.constexpr, QB: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr, D_PAD: tl.constexpr,
    HALF: tl.constexpr,
):
    bh, b, h, first, j_first, j_end = _program_tile(n_heads, q_first, n_k, QB, KB)
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
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        qp = tl.load(qpos_ptr + b * s_pb + qblock * s_pi + rep * s_pr, mask=row_ok, other=-1)
        n = tl.arange(0, BLOCK)
        out_at = lse_ptr + (bh * n_k).to(tl.int64) * n_rows + (qblock - q_first) * R + rep
        for j in range(j_first, j_end):
            cand = tl.load(cand_at + qblock * s_ci + j * s_cj, mask=row_ok, other=0) != 0
            kp = tl.load(kpos_ptr + b * s_kpb + (j * BLOCK + n) * s_kpn)
            keys = tl.load(k_ptr + b * s_kb + h * s_kh + (j * BLOCK + n)[:, None].to(tl.int64) * s_kn
                           + d[None, :] * s_kd, mask=d_ok[None, :], other=0.0)
            seen = (kp[None, :] >= 0) & (kp[None, :] <= qp[:, None]) & cand[:, None]
            lse = _row_lse(q, keys, seen, HALF)
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


@triton.jit
def _aligned_lse_kernel(
    q_ptr, k_ptr, lse_ptr,
    n_heads, q_len, k_len, q_block0, q_first, q_end, n_k, d_idx, n_rows, sinks, band,
    s_qb, s_qh, s_ql, s_qd, s_kb, s_kh, s_kl, s_kd,
    R: tl.constexpr, QB: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr, D_PAD: tl.constexpr,
    HALF: tl.constexpr,
):
    """:func:`_block_lse_kernel` for the aligned layout, reading q_idx and k_idx in place: representative query
    slots, positions and candidates are arithmetic. Writes the candidate entries of lse (B * H, nk, n_rows) only."""
    bh, b, h, first, j_first, j_end = _program_tile(n_heads, q_first, n_k, QB, KB)
    g = first + tl.arange(0, QB)
    tile_seen, tile_kept = aligned_block_roles((j_first + tl.arange(0, KB))[None, :], q_block0 + g[:, None], n_k,
                                               k_len, sinks, band, BLOCK)
    tile = tile_seen & ~tile_kept & (g < q_end)[:, None]  # (QB, KB): candidate pairs
    if tl.sum(tl.sum(tile.to(tl.int32), axis=1), axis=0) > 0:
        m = tl.arange(0, QB * R)
        qblock = first + m // R  # the query block of each row
        rep = m % R
        row_ok = qblock < q_end
        slot = tl.where(rep < R - 1, (rep + 1) * (BLOCK // R) - 1, tl.minimum(BLOCK - 1, q_len - 1 - qblock * BLOCK))
        t = qblock * BLOCK + slot  # the query's index in q_idx; at or past Lq: absent (sees nothing)
        present = row_ok & (t < q_len)
        q_pos = k_len - q_len + t
        d = tl.arange(0, D_PAD)
        d_ok = d < d_idx
        q = tl.load(q_ptr + b * s_qb + h * s_qh + t.to(tl.int64)[:, None] * s_ql + d[None, :] * s_qd,
                    mask=present[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        n = tl.arange(0, BLOCK)
        out_at = lse_ptr + (bh * n_k).to(tl.int64) * n_rows + (qblock - q_first) * R + rep
        for j in range(j_first, j_end):
            key = j * BLOCK + n  # index and position
            key_ok = key < k_len
            keys = tl.load(k_ptr + b * s_kb + h * s_kh + key.to(tl.int64)[:, None] * s_kl + d[None, :] * s_kd,
                           mask=key_ok[:, None] & d_ok[None, :], other=0.0)
            j_rows = tl.full([QB * R], j, tl.int32)  # a vector: the interpreter mis-broadcasts scalar booleans
            seen, always = aligned_block_roles(j_rows, q_block0 + qblock, n_k, k_len, sinks, band, BLOCK)
            cand = seen & ~always
            visible = key_ok[None, :] & (key[None, :] <= q_pos[:, None]) & (present & cand)[:, None]
            lse = _row_lse(q, keys, visible, HALF)
            tl.store(out_at + j * n_rows, lse, mask=row_ok & cand)  # j * n_rows < the chunk's elements: int32


@triton.jit
def _log_mass_kernel(
    lse_ptr, out_ptr, n_q, n_k, q_block0, q_first, k_len, sinks, band, n_rows,
    R: tl.constexpr, BLOCK: tl.constexpr, KC: tl.constexpr,
):
    """:func:`rtpurbo.ops.block_scores.log_block_mass` for one (batch row x head, query block ``q_first +
    program_id(1)``): reads the candidate entries of its R queries' rows of lse (B * H, nk, n_rows), writes its row of
    out (B, H, nq, nk). Key blocks in steps of KC: each query's softmax max and sum online, then the masses."""
    bh = tl.program_id(0)
    i = q_first + tl.program_id(1)
    qb = q_block0 + i
    lse_at = lse_ptr + (bh * n_k).to(tl.int64) * n_rows + tl.program_id(1) * R + tl.arange(0, R)[:, None]
    top = tl.full([R], float("-inf"), tl.float32)
    total = tl.zeros([R], tl.float32)
    for j0 in range(0, n_k, KC):
        j = j0 + tl.arange(0, KC)
        seen, always = aligned_block_roles(j, qb, n_k, k_len, sinks, band, BLOCK)
        x = tl.load(lse_at + j[None, :] * n_rows, mask=(seen & ~always)[None, :], other=float("-inf"))  # (R, KC)
        new_top = tl.maximum(top, tl.max(x, axis=1))
        ref = tl.where(new_top == float("-inf"), 0.0, new_top)
        total = total * tl.exp(top - ref) + tl.sum(tl.exp(x - ref[:, None]), axis=1)
        top = new_top
    sees = top > float("-inf")  # the query sees some candidate; the others have no softmax (the reference's NaN -> 0)
    ref = tl.where(sees, top, 0.0)
    weight = tl.where(sees, 1.0 / tl.where(sees, total, 1.0), 0.0)
    count = tl.maximum(tl.sum(sees.to(tl.float32), axis=0), 1.0)
    out_at = out_ptr + (bh.to(tl.int64) * n_q + i) * n_k
    for j0 in range(0, n_k, KC):
        j = j0 + tl.arange(0, KC)
        seen, always = aligned_block_roles(j, qb, n_k, k_len, sinks, band, BLOCK)
        cand = seen & ~always
        x = tl.load(lse_at + j[None, :] * n_rows, mask=cand[None, :], other=float("-inf"))
        mass = tl.sum(tl.exp(x - ref[:, None]) * weight[:, None], axis=0) / count
        tl.store(out_at + j, tl.where(cand, tl.log(tl.maximum(mass, _TINY)), float("-inf")), mask=j < n_k)


def aligned_block_mass(q_idx: torch.Tensor, k_idx: torch.Tensor, sinks: int, band: int, block: int = 128,
                       queries: int = MASS_QUERIES, chunk_elements: int = MASS_CHUNK_ELEMENTS) -> torch.Tensor:
    """The ``mass`` block scores of the sparse prefill's candidates in the aligned layout, from two kernels per chunk
    of query blocks and no other PyTorch op.

    The aligned layout (:mod:`rtpurbo.ops.triton.block_sparse`): key slot ``j`` holds position ``j``, query slot ``i``
    position ``Lk - Lq + i``, in every batch row; ``Lk - Lq`` a multiple of ``block``. The candidates are the blocks
    a query block sees that are neither sink blocks nor in the band (``candidate_blocks``' arithmetic, for this
    ``block``). Returns what :func:`rtpurbo.ops.block_scores.block_mass` returns for these positions and candidates,
    up to fp32 summation order.

    Args: q_idx (B, H, Lq, d), k_idx (B, H, Lk, d), any strides, fp32 / bf16 / fp16; sinks, band as
    :func:`rtpurbo.ops.triton.block_sparse.select_block_lists`; ``block`` a power of two of at least 16, ``queries`` a
    power of two dividing it. Returns (B, H, nq, nk) fp32, nq = ceil(Lq / block), nk = ceil(Lk / block): log mass of
    each candidate, ``-inf`` elsewhere. No gradient; no host sync.
    """
    batch, heads, q_len, d_idx = q_idx.shape
    k_len = k_idx.shape[2]
    if block < 16 or block & (block - 1) or queries & (queries - 1) or block % queries:
        raise ValueError(f"the mass kernel needs a power-of-two block >= 16 and queries dividing it, got {block} and "
                         f"{queries}")
    if k_idx.shape[:2] != (batch, heads) or k_idx.shape[3] != d_idx or q_len < 1 or (k_len - q_len) % block:
        raise ValueError(f"aligned block mass needs q_idx (B, H, Lq, d), k_idx (B, H, Lk, d) with Lq >= 1 and Lk - Lq "
                         f"a multiple of {block}; got q_idx {tuple(q_idx.shape)}, k_idx {tuple(k_idx.shape)}")
    half = q_idx.dtype in _HALF and k_idx.dtype in _HALF
    n_q, n_k = triton.cdiv(q_len, block), triton.cdiv(k_len, block)
    step = max(1, chunk_elements // max(1, batch * heads * n_k * queries))  # query blocks per chunk
    rows = min(step, n_q) * queries  # representative queries per chunk
    out = torch.empty(batch, heads, n_q, n_k, dtype=torch.float32, device=q_idx.device)
    lse = torch.empty(batch * heads, n_k, rows, dtype=torch.float32, device=q_idx.device)  # reused by every chunk
    if batch * heads == 0:
        return out
    group = max(QUERY_BLOCKS, triton.cdiv(16, queries))  # tl.dot needs 16 rows or more
    roles = dict(q_block0=(k_len - q_len) // block, k_len=k_len, sinks=sinks, band=band)
    for lo in range(0, n_q, step):
        hi = min(n_q, lo + step)
        _aligned_lse_kernel[(batch * heads, triton.cdiv(hi - lo, group), triton.cdiv(n_k, KEY_BLOCKS))](
            q_idx, k_idx, lse, n_heads=heads, q_len=q_len, q_first=lo, q_end=hi, n_k=n_k, d_idx=d_idx, n_rows=rows,
            **roles, s_qb=q_idx.stride(0), s_qh=q_idx.stride(1), s_ql=q_idx.stride(2), s_qd=q_idx.stride(3),
            s_kb=k_idx.stride(0), s_kh=k_idx.stride(1), s_kl=k_idx.stride(2), s_kd=k_idx.stride(3),
            R=queries, QB=group, KB=KEY_BLOCKS, BLOCK=block, D_PAD=max(16, triton.next_power_of_2(d_idx)), HALF=half,
            num_warps=NUM_WARPS,
        )
        _log_mass_kernel[(batch * heads, hi - lo)](
            lse, out, n_q=n_q, n_k=n_k, q_first=lo, n_rows=rows, **roles, R=queries, BLOCK=block,
            KC=min(LOG_MASS_KEY_BLOCKS, max(16, triton.next_power_of_2(n_k))), num_warps=NUM_WARPS,
        )
    return out
