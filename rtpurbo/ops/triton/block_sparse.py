"""Sparse prefill of retrieval heads over aligned blocks, as two Triton kernels: the block choice and the attention.

The same function as :func:`rtpurbo.ops.reference.select_blocks` followed by block-sparse causal attention
(:func:`rtpurbo.ops.api.sparse_prefill`), for the layout the model's plain prompts have (``aligned``): every row's
key slot ``j`` holds position ``j`` (``0..Lk-1``) and query slot ``i`` position ``Lk - Lq + i``, the chunk starting on
a block of :data:`BLOCK` positions. So a block's role is arithmetic: for the query block at global block index
``qb`` (lowest position ``128 qb``), key block ``j`` is

* seen when ``j <= qb``;
* always kept when seen and it holds a sink (``128 j < sinks``) or a key at or after ``128 qb - band`` (the band,
  the diagonal included);
* a candidate otherwise.

:func:`select_block_lists`, one program per (row x KV head, query block): the softmax of the block scores over the
candidates, the candidates ranked by it (ties: lower ``j`` first; a bitonic sort of ``(p, j)`` packed into one
int64 key), the top-p count ``n* = #{rank r : mass of the r better blocks < top_p}`` counted over all key blocks as
the reference does, clamped to ``[min_blocks, max_blocks]`` and the candidates; then the always-kept blocks and the
chosen candidates as one ascending list. It replaces the ~30 small PyTorch ops of the flex path's planning (softmax,
top-k, cumulative sum, scatter, two list compactions), each a launch on the host's critical path (the sparse
prefill's host time at 32K exceeded its device time, ``benchmarks/results/llama-3.1-8b_h200_2026-12-05_prefill-host-
cudnn-plans.md``).

:func:`block_sparse_attention`, one program per (row x query head, query block of 128), heads fastest (a KV head's
query heads run side by side and share its blocks in L2): the listed key blocks but the last without a mask (every
query of the block sees all of a block below its own), then the diagonal block, the last of every list, under the
causal rule. Softmax in base 2, online, fp32 accumulators; K / V read in place through tensor descriptors (TMA) or
pointers, as :mod:`rtpurbo.ops.triton.window`. A query block's blocks may also be split over several programs
(``splits``), whose partial outputs one more kernel merges by log-sum-exp.

:func:`dense_causal_attention` is the same kernel over every block a query block sees, split over keys: a sparse
prefill's dense tail (its last queries, where a prompt's question sits), a few query blocks over many keys.

No host sync; shapes only change the compiled variant through the key-block count's power of two (the sort's size).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .block_roles import aligned_block_roles
from .decode import _num_sms
from .window import _LOG2E, WindowLaunch, _allocate, _attend_blocks, default_launch
from .window import unsupported as _window_unsupported

MAX_SPLITS = 32  # key splits of a dense tail's query block (the merge unrolls over them)
BLOCK = 128  # positions per query / key block (flex's block-mask tile; rtpurbo.ops.api.BLOCK_SIZE)
_NO_WINDOW = tl.constexpr(1 << 30)  # full causal attention in window._attend_blocks' rule (kernels read constexprs)
_LOW32 = tl.constexpr(4294967295)  # 2^32 - 1: the block part of a rank key
_HIGH = tl.constexpr(4294967296)  # 2^32: the probability part


@triton.jit
def _select_kernel(
    scores_ptr, lists_ptr, counts_ptr, seen_ptr,
    s_sb, s_sh, s_si, s_sj, s_lb, s_lh, s_li,
    n_heads, n_k, q_block0, k_len, sinks, band, top_p, min_blocks, max_blocks, width,
    BLOCK: tl.constexpr, NK_PAD: tl.constexpr,
):
    bh = tl.program_id(0)
    i = tl.program_id(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    qb = q_block0 + i
    j = tl.arange(0, NK_PAD).to(tl.int64)
    seen, always = aligned_block_roles(j, qb, n_k, k_len, sinks, band, BLOCK)
    cand = seen & ~always
    s = tl.load(scores_ptr + b * s_sb + h * s_sh + i.to(tl.int64) * s_si + j * s_sj, mask=cand, other=float("-inf"))
    top = tl.max(s, axis=0)
    e = tl.where(cand, tl.exp(s - tl.where(top == float("-inf"), 0.0, top)), 0.0)
    z = tl.sum(e, axis=0)
    p = tl.where(z > 0.0, e / tl.where(z > 0.0, z, 1.0), 0.0)  # torch.softmax(...).nan_to_num(0)
    # best first: probability (non-negative fp32: its bits order as integers), then the lower block
    key = tl.where(j < n_k, p.to(tl.int32, bitcast=True).to(tl.int64) * _HIGH + (_LOW32 - j), -1)
    key = tl.sort(key, descending=True)
    ranked = _LOW32 - (key & _LOW32)  # the block of each rank
    p_ranked = tl.where(key >= 0, (key >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
    before = tl.cumsum(p_ranked, axis=0) - p_ranked  # mass of the better blocks
    n_star = tl.sum(((before < top_p) & (j < n_k)).to(tl.int32), axis=0)
    n_keep = tl.minimum(tl.minimum(tl.maximum(n_star, min_blocks), tl.sum(cand.to(tl.int32), axis=0)), max_blocks)
    r_seen, r_always = aligned_block_roles(ranked, qb, n_k, k_len, sinks, band, BLOCK)
    chosen = (j < n_k) & (r_always | ((j < n_keep) & r_seen))  # rank j: the always-kept or a kept candidate
    listed = tl.sort(tl.where(chosen, ranked, 2147483647), descending=False)
    count = tl.sum(chosen.to(tl.int32), axis=0)
    at = lists_ptr + b * s_lb + h * s_lh + i.to(tl.int64) * s_li
    tl.store(at + j, listed.to(tl.int32), mask=(j < count) & (j < width))
    tl.store(counts_ptr + bh * tl.num_programs(1) + i, count)
    tl.store(seen_ptr + bh * tl.num_programs(1) + i, tl.sum(seen.to(tl.int32), axis=0))


def list_width(n_k: int, sinks: int, band: int, max_blocks: int | None) -> int:
    """Entries of a query block's list: the always-kept blocks (at most ``ceil(sinks / 128)`` sink blocks and
    ``ceil(band / 128) + 1`` of the band) plus at most ``max_blocks`` chosen ones, never more than ``n_k``."""
    chosen = n_k if max_blocks is None else max_blocks
    return max(1, min(n_k, chosen + -(-sinks // BLOCK) + -(-band // BLOCK) + 1))


def select_block_lists(
    scores: torch.Tensor, q_len: int, k_len: int, *, top_p: float, min_blocks: int = 0, max_blocks: int | None = None,
    sinks: int = 0, band: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The key blocks each query block attends to, as ascending lists.

    Args:
        scores: (B, H, nq, nk) fp32 block scores (:func:`rtpurbo.ops.block_scores.block_scores`; only the candidates
            are read), nq = ceil(Lq / 128), nk = ceil(Lk / 128).
        q_len, k_len: Lq and Lk of the aligned layout (module docstring); ``Lk - Lq`` a multiple of 128.
        top_p, min_blocks, max_blocks, sinks, band: as :func:`rtpurbo.ops.reference.select_blocks`.
    Returns:
        lists (B, H, nq, width) int32: the first ``counts`` entries are the kept blocks, ascending (the last is the
        diagonal block), the rest unspecified; counts (B, H, nq) int32; seen (B, H, nq) int32, the blocks each query
        block sees at all.
    """
    batch, heads, n_q, n_k = scores.shape
    if (k_len - q_len) % BLOCK or q_len < 1 or k_len < q_len:
        raise ValueError(f"aligned block lists need Lk - Lq a multiple of {BLOCK}, Lq >= 1; got Lq {q_len}, Lk {k_len}")
    if n_q != -(-q_len // BLOCK) or n_k != -(-k_len // BLOCK):
        raise ValueError(f"scores {tuple(scores.shape)} do not have the blocks of Lq {q_len}, Lk {k_len}")
    if not 0 < top_p < 1 or band < 1 or sinks < 0 or min_blocks < 0 or (max_blocks is not None and max_blocks < 0):
        raise ValueError(f"need 0 < top_p < 1 (1 is dense prefill), band >= 1, sinks, min_blocks, max_blocks >= 0; "
                         f"got top_p={top_p}, band={band}, sinks={sinks}, min_blocks={min_blocks}, "
                         f"max_blocks={max_blocks}")
    width = list_width(n_k, sinks, band, max_blocks)
    lists = torch.empty(batch, heads, n_q, width, dtype=torch.int32, device=scores.device)
    counts = torch.empty(batch, heads, n_q, dtype=torch.int32, device=scores.device)
    seen = torch.empty_like(counts)
    if scores.numel():
        _select_kernel[(batch * heads, n_q)](
            scores, lists, counts, seen, *scores.stride(), *lists.stride()[:3], heads, n_k, (k_len - q_len) // BLOCK,
            k_len, sinks, band, float(top_p), min_blocks, n_k if max_blocks is None else max_blocks, width,
            BLOCK=BLOCK, NK_PAD=max(16, triton.next_power_of_2(n_k)), num_warps=4 if n_k <= 1024 else 8,
        )
    return lists, counts, seen


@triton.jit
def _attend_listed(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, list_row, t_lo, t_hi, qk_scale,
                   BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr, DENSE: tl.constexpr):
    """Online-softmax update of (acc (M, D), l_i (M,), m_i (M,)) over the key blocks ``list_row[t_lo:t_hi]`` (DENSE:
    the blocks ``t_lo..t_hi-1`` themselves), each of ``BLOCK`` slots that every row sees whole."""
    for t in tl.range(t_lo, t_hi):
        if DENSE:
            first = t * BLOCK
        else:
            first = tl.load(list_row + t).to(tl.int32) * BLOCK
        for sub in tl.static_range(BLOCK // BLOCK_N):
            start = tl.multiple_of(first + sub * BLOCK_N, BLOCK_N)
            if TMA:
                k = k_desc.load([start, 0])
                v = v_desc.load([start, 0])
            else:
                k = tl.load(k_ptrs + start * s_kn)
                v = tl.load(v_ptrs + start * s_vn)
            qk = tl.dot(q, tl.trans(k))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _block_sparse_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, part_ptr, lse_ptr, lists_ptr, counts_ptr,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_om, s_lb, s_lh, s_li, s_cb, s_ch,
    n_q_heads, group, q_len, n_keys, q_start, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, TMA: tl.constexpr, DENSE: tl.constexpr,
    N_SPLITS: tl.constexpr,
):
    """One (row x query head, query block, split of its key blocks). The unmasked blocks (listed but the last, or
    DENSE: every block below the diagonal) are cut into ``N_SPLITS`` runs; the last split also takes the diagonal.
    One split writes the output; several write fp32 partial outputs and base-2 log-sum-exps for
    :func:`_merge_kernel`."""
    bh = tl.program_id(0)
    i = tl.program_id(1)
    split = tl.program_id(2)
    start_m = i * BLOCK
    b = bh // n_q_heads
    h = bh % n_q_heads
    kv = h // group
    q_base = q_ptr + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    k_base = k_ptr + b.to(tl.int64) * s_kb + kv.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + kv.to(tl.int64) * s_vh
    offs_m = start_m + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = k_base + offs_n[:, None] * s_kn + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * s_vn + offs_d[None, :]
    if TMA:
        q_desc = tl.make_tensor_descriptor(q_base, shape=[q_len, HEAD_DIM], strides=[s_qm, 1],
                                           block_shape=[BLOCK, HEAD_DIM])
        k_desc = tl.make_tensor_descriptor(k_base, shape=[n_keys, HEAD_DIM], strides=[s_kn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[n_keys, HEAD_DIM], strides=[s_vn, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        q = q_desc.load([start_m, 0])
    else:
        k_desc = None
        v_desc = None
        q = tl.load(q_base + offs_m[:, None] * s_qm + offs_d[None, :], mask=(offs_m < q_len)[:, None], other=0.0)
    diag = q_start + start_m  # the first slot of the block holding the queries' own keys (the last listed)
    list_row = lists_ptr + b.to(tl.int64) * s_lb + kv.to(tl.int64) * s_lh + i.to(tl.int64) * s_li
    if DENSE:
        n_whole = diag // BLOCK
    else:
        n_whole = tl.load(counts_ptr + b.to(tl.int64) * s_cb + kv.to(tl.int64) * s_ch + i) - 1
    per_split = tl.cdiv(n_whole, N_SPLITS)
    t_lo = tl.minimum(split * per_split, n_whole)
    t_hi = tl.minimum(t_lo + per_split, n_whole)
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    acc, l_i, m_i = _attend_listed(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, list_row, t_lo, t_hi,
                                   qk_scale, BLOCK, BLOCK_N, TMA, DENSE)
    if split == N_SPLITS - 1:
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_desc, v_desc, k_ptrs, v_ptrs, s_kn, s_vn, q_start + offs_m,
                                       diag, tl.minimum(diag + BLOCK, n_keys), n_keys, _NO_WINDOW, 0, 0, 0, qk_scale,
                                       2, BLOCK_N, TMA, False)
    rows_ok = offs_m < q_len
    if N_SPLITS == 1:
        o_base = o_ptr + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh
        out = (acc / l_i[:, None]).to(o_ptr.dtype.element_ty)
        if TMA:
            o_desc = tl.make_tensor_descriptor(o_base, shape=[q_len, HEAD_DIM], strides=[s_om, 1],
                                               block_shape=[BLOCK, HEAD_DIM])
            o_desc.store([start_m, 0], out)
        else:
            tl.store(o_base + offs_m[:, None] * s_om + offs_d[None, :], out, mask=rows_ok[:, None])
    else:  # (B * Hq, N_SPLITS, Lq, D) fp32 partial outputs and (B * Hq, N_SPLITS, Lq) log2-sum-exps
        seen = l_i > 0.0
        part = acc / tl.where(seen, l_i, 1.0)[:, None]
        at = (bh * N_SPLITS + split).to(tl.int64) * q_len
        tl.store(part_ptr + (at + offs_m)[:, None] * HEAD_DIM + offs_d[None, :], part, mask=rows_ok[:, None])
        tl.store(lse_ptr + at + offs_m, tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf")),
                 mask=rows_ok)


@triton.jit
def _merge_kernel(part_ptr, lse_ptr, o_ptr, s_ob, s_oh, s_om, n_q_heads, q_len,
                  HEAD_DIM: tl.constexpr, N_SPLITS: tl.constexpr, S_PAD: tl.constexpr, ROWS: tl.constexpr):
    """The output rows of one (row x query head, ``ROWS`` queries) from their splits' partial outputs, weighted by
    the splits' softmax mass (base 2)."""
    bh = tl.program_id(0)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    splits = tl.arange(0, S_PAD)
    d = tl.arange(0, HEAD_DIM)
    rows_ok = rows < q_len
    at = (bh * N_SPLITS + splits).to(tl.int64)[:, None] * q_len + rows[None, :]  # (S, ROWS)
    ok = (splits < N_SPLITS)[:, None] & rows_ok[None, :]
    lse = tl.load(lse_ptr + at, mask=ok, other=float("-inf"))
    top = tl.max(lse, axis=0)
    w = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top)[None, :])  # (S, ROWS)
    out = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    for s in tl.static_range(N_SPLITS):
        w_s = tl.sum(tl.where(splits[:, None] == s, w, 0.0), axis=0)  # (ROWS,)
        part = tl.load(part_ptr + ((bh * N_SPLITS + s).to(tl.int64) * q_len + rows)[:, None] * HEAD_DIM + d[None, :],
                       mask=rows_ok[:, None], other=0.0)
        out += w_s[:, None] * part
    out = out / tl.maximum(tl.sum(w, axis=0), 1e-30)[:, None]  # rows past Lq: no split saw a key
    b = bh // n_q_heads
    h = bh % n_q_heads
    o_at = o_ptr + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh + rows.to(tl.int64)[:, None] * s_om + d[None, :]
    tl.store(o_at, out.to(o_ptr.dtype.element_ty), mask=rows_ok[:, None])


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, launch: WindowLaunch | None = None) -> str | None:
    """Why :func:`block_sparse_attention` cannot take these tensors (None: it can)."""
    launch = default_launch(q.shape[-1]) if launch is None else launch
    if launch.block_m != BLOCK or BLOCK % launch.block_n:
        return f"it needs {BLOCK}-row query tiles and key tiles dividing {BLOCK}, got {launch.block_m} x {launch.block_n}"
    if k.dim() == 4 and (k.shape[2] - q.shape[2]) % BLOCK:
        return f"it needs Lk - Lq a multiple of {BLOCK} (aligned blocks); got Lq {q.shape[2]}, Lk {k.shape[2]}"
    return _window_unsupported(q, k, v, launch, n_keys=k.shape[2] if k.dim() == 4 else None)


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lists: torch.Tensor, counts: torch.Tensor, *, scale: float,
    launch: WindowLaunch | None = None, splits: int = 1,
) -> torch.Tensor:
    """Causal attention of each query block over its listed key blocks (aligned layout, module docstring).

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D), ``Lk - Lq`` a multiple of 128; the last dim contiguous, D a power
            of two in [16, 256], fp16 or bf16.
        lists, counts: :func:`select_block_lists` of these lengths, per KV head ((B, Hkv, nq, width), (B, Hkv, nq)):
            ascending, each ending with the query block's own (diagonal) block.
        launch: its ``block_n`` (keys per tile, dividing 128), warps, stages and TMA (``block_m`` must be 128).
        splits: programs per query block and head, each over a run of its listed blocks, merged by log-sum-exp
            (for lists long enough to leave the GPU idle with one program each).
    Returns:
        out (B, Hq, Lq, D) in q's dtype.
    """
    n_blocks = -(-q.shape[2] // BLOCK)
    if lists.shape[:3] != (q.shape[0], k.shape[1], n_blocks) or counts.shape != (q.shape[0], k.shape[1], n_blocks):
        raise ValueError(f"lists {tuple(lists.shape)} / counts {tuple(counts.shape)} do not fit q{tuple(q.shape)}, "
                         f"k{tuple(k.shape)}: need (B, Hkv, {n_blocks}, width) and (B, Hkv, {n_blocks})")
    return _attend(q, k, v, lists, counts, scale, launch, dense=False, splits=splits)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                           launch: WindowLaunch | None = None, splits: int | None = None) -> torch.Tensor:
    """Causal attention of queries over every key they see, aligned layout: shapes as :func:`block_sparse_attention`.
    For a sparse prefill's dense tail: few query blocks over many keys, so each query block's keys are split over
    ``splits`` programs (default: enough for about two programs per SM, at least 8 key blocks each)."""
    if splits is None:
        programs = q.shape[0] * q.shape[1] * -(-q.shape[2] // BLOCK)
        splits = max(1, min(-(-2 * _num_sms(q.device) // programs), k.shape[2] // (8 * BLOCK), MAX_SPLITS))
    return _attend(q, k, v, None, None, scale, launch, dense=True, splits=splits)


def _attend(q, k, v, lists, counts, scale: float, launch: WindowLaunch | None, *, dense: bool, splits: int
            ) -> torch.Tensor:
    launch = default_launch(q.shape[-1]) if launch is None else launch
    problem = unsupported(q, k, v, launch)
    if problem is not None:
        raise ValueError(f"the Triton block-sparse kernel cannot run this: {problem}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    batch, n_q, q_len, dim = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    parts = lse = out  # unused with one split
    if splits > 1:
        parts = torch.empty(batch * n_q, splits, q_len, dim, dtype=torch.float32, device=q.device)
        lse = torch.empty(batch * n_q, splits, q_len, dtype=torch.float32, device=q.device)
    if dense:  # read by no program (the dense mode lists nothing)
        lists = counts = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device=q.device)
    if launch.tma:
        triton.set_allocator(_allocate)
    _block_sparse_kernel[(batch * n_q, -(-q_len // BLOCK), splits)](
        q, k, v, out, parts, lse, lists, counts, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *out.stride()[:3], *lists.stride()[:3], *counts.stride()[:2], n_q, n_q // k.shape[1], q_len, k.shape[2],
        k.shape[2] - q_len, scale * _LOG2E, HEAD_DIM=dim, BLOCK=BLOCK, BLOCK_N=launch.block_n, TMA=launch.tma,
        DENSE=dense, N_SPLITS=splits, num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    if splits > 1:
        rows = 64
        _merge_kernel[(batch * n_q, triton.cdiv(q_len, rows))](
            parts, lse, out, *out.stride()[:3], n_q, q_len, HEAD_DIM=dim, N_SPLITS=splits,
            S_PAD=triton.next_power_of_2(splits), ROWS=rows, num_warps=4,
        )
    return out


def candidate_blocks(q_len: int, k_len: int, sinks: int, band: int, device: torch.device) -> torch.Tensor:
    """(1, 1, nq, nk) bool: the blocks each query block ranks in the aligned layout (seen, not always kept), from
    the block arithmetic of the module docstring (:mod:`rtpurbo.ops.triton.block_roles` in Triton; what
    :func:`rtpurbo.ops.block_scores.block_roles` finds from positions)."""
    qb = (k_len - q_len) // BLOCK + torch.arange(-(-q_len // BLOCK), device=device)[:, None]
    j = torch.arange(-(-k_len // BLOCK), device=device)
    k_hi = (j * BLOCK + BLOCK - 1).clamp(max=k_len - 1)
    return ((j <= qb) & (j * BLOCK >= sinks) & (k_hi < qb * BLOCK - band))[None, None]


def sparse_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
    q_idx: torch.Tensor, k_idx: torch.Tensor, *, top_p: float, min_blocks: int = 0, max_blocks: int | None = None,
    sinks: int = 0, band: int = 1, scoring: str = "pooled", scale: float, tail: int = 0,
    launch: WindowLaunch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`rtpurbo.ops.api.sparse_prefill` (``aligned``, ``top_p < 1``) through the kernels: block scores
    (:func:`rtpurbo.ops.block_scores.block_scores`; ``mass`` from :mod:`rtpurbo.ops.triton.block_mass` on CUDA),
    :func:`select_block_lists`, :func:`block_sparse_attention`, and for the last ``tail`` queries
    :func:`dense_causal_attention` (from the block holding the first of them; that block's earlier queries keep their
    sparse result). Shapes as there; q_pos / k_pos must be the aligned layout (not checked here:
    :func:`rtpurbo.ops.api.sparse_prefill` checks it on a CPU).

    Returns out (B, Hq, Lq, D), kept blocks () and the blocks their query blocks see (), summed over rows, KV heads
    and query blocks."""
    from ..block_scores import block_scores, check_scoring

    check_scoring(scoring)
    q_len, k_len = q.shape[2], k.shape[2]
    problem = unsupported(q, k, v, launch)
    if problem is not None:
        raise ValueError(f"the Triton block-sparse kernel cannot run this: {problem}")
    if scoring == "pooled":  # scores every block pair; the selection kernel reads the candidates only
        scores = block_scores(q_idx, k_idx, q_pos, k_pos, None, BLOCK, scoring)
    elif q_idx.is_cuda:
        from .block_mass import aligned_block_mass

        scores = aligned_block_mass(q_idx, k_idx, sinks, band, BLOCK)
    else:
        scores = block_scores(q_idx, k_idx, q_pos, k_pos, candidate_blocks(q_len, k_len, sinks, band, q.device), BLOCK,
                              scoring)
    lists, counts, seen = select_block_lists(scores, q_len, k_len, top_p=top_p, min_blocks=min_blocks,
                                             max_blocks=max_blocks, sinks=sinks, band=band)
    out = block_sparse_attention(q, k, v, lists, counts, scale=scale, launch=launch)
    if tail > 0:
        first = max(0, q_len - tail)
        lo = first // BLOCK * BLOCK
        out[:, :, first:] = dense_causal_attention(q[:, :, lo:], k, v, scale=scale, launch=launch)[:, :, first - lo:]
    return out, counts.sum(), seen.sum()
