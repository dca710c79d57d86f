"""Triton kernels for one-query (decode) attention, GQA-native and split over the keys.

Layouts follow :mod:`rtpurbo.ops.reference`: ``q`` (B, Hq, 1, D), ``k``/``v`` (B, Hkv, Lk, D),
``q_pos`` (B, 1), ``k_pos`` (B, Lk) with ``k_pos < 0`` = empty slot; query head ``h`` reads KV
head ``h // G``. Any strides are accepted (cache views included).

* :func:`index_scores` scores every cached indexer key against the query's indexer vector
  (fp32, ``-inf`` where not causally visible), with per-block softmax statistics, and writes the
  always-kept keys (sinks and the ``recent`` newest) to fixed slots of a small list.
* :func:`topp_count` walks the sorted scores of a row to the smallest prefix whose probability
  mass reaches ``top_p`` and applies the token clamps, in one program per row.
* :func:`decode_attention` runs the ``G`` query heads of one KV head together (one ``tl.dot``
  per key block) over either every key slot ("dense" mode: visibility from positions, window,
  sinks and an optional key mask) or a list of slot indices ("list" mode: the top-p selection
  plus the always list). The key range is split over programs; a combine kernel merges the
  partial softmax states. Its inner loop, part range, query load and part store are jit helpers
  that :mod:`rtpurbo.ops.triton.decode_roles` shares (both kinds of heads of a layer in one launch),
  and :func:`combine` merges the parts of either.

Nothing here syncs with the host and every shape depends only on the inputs' shapes, so a
decode step built from these kernels can be captured in a CUDA graph.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import dependent_launch
from .dependent_launch import let_next_launch, wait_for_previous

_NO_WINDOW = 1 << 62  # a window no position difference reaches (window=None)


class IndexScores(NamedTuple):
    """Output of :func:`index_scores` for B batch rows and Hkv retrieval heads (BH = B * Hkv).

    scores: (B, Hkv, Lk) fp32 indexer logits, ``-inf`` where the key is not visible.
    block_max, block_sum: (BH, n_blocks) fp32, max and sum of ``exp(s - block_max)`` per key block.
    block_count: (BH, n_blocks) int32, visible keys per block.
    always: (BH, sinks + recent) int32 slot indices of the always-kept keys, each at its fixed entry
        (:func:`always_entry`). Entries whose key is absent are not written: they hold whatever the memory held, so
        the list attention checks every entry (:func:`named_always` does the same on the host).
    block_min: (BH, n_blocks) fp32, min of the visible scores per block (``+inf`` where none).
    """

    scores: torch.Tensor
    block_max: torch.Tensor
    block_sum: torch.Tensor
    block_count: torch.Tensor
    always: torch.Tensor
    block_min: torch.Tensor


@triton.jit
def always_entry(k_pos, q_pos, sinks):
    """The always-list entry of the always-kept key at position ``k_pos``: sink ``p`` -> ``p``, recent ``p`` ->
    ``sinks + q_pos - p`` (positions are distinct within a row, so an entry names at most one key)."""
    return tl.where(k_pos < sinks, k_pos, sinks + q_pos - k_pos)


@triton.jit
def _index_scores_kernel(
    qi_ptr, ki_ptr, qpos_ptr, kpos_ptr, scores_ptr, bmax_ptr, bsum_ptr, bcount_ptr, always_ptr, bmin_ptr,
    n_kv_heads, n_keys, n_blocks, n_always, sinks, recent,
    s_qib, s_qih, s_qid, s_kib, s_kih, s_kin, s_kid, s_qpb, s_kpb, s_kpn, zero_ptr, n_zero,
    D_IDX: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, ZERO: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    if ZERO:  # the threshold search's workspace, zeroed here instead of by a launch of its own
        program = bh * n_blocks + blk
        share = tl.cdiv(n_zero, tl.num_programs(0) * n_blocks)
        end = tl.minimum(program * share + share, n_zero)
        for start in range(program * share, end, BLOCK):
            z_offs = start + tl.arange(0, BLOCK)
            tl.store(zero_ptr + z_offs, tl.zeros([BLOCK], tl.int64), mask=z_offs < end)
    b = (bh // n_kv_heads).to(tl.int64)
    h = (bh % n_kv_heads).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < n_keys
    d = tl.arange(0, D_PAD)
    d_ok = d < D_IDX

    # every load is issued before anything waits on one: the keys do not wait for the positions (one round trip to
    # memory instead of two). A slot no query sees may hold anything, NaN included; its score is -inf whatever it holds.
    q_pos = tl.load(qpos_ptr + b * s_qpb)
    k_pos = tl.load(kpos_ptr + b * s_kpb + offs.to(tl.int64) * s_kpn, mask=in_range, other=-1)
    q = tl.load(qi_ptr + b * s_qib + h * s_qih + d * s_qid, mask=d_ok, other=0.0)
    key_ptrs = ki_ptr + b * s_kib + h * s_kih + offs.to(tl.int64)[:, None] * s_kin + d[None, :] * s_kid
    keys = tl.load(key_ptrs, mask=in_range[:, None] & d_ok[None, :], other=0.0)
    seen = in_range & (k_pos >= 0) & (k_pos <= q_pos)
    s = tl.where(seen, tl.sum(keys.to(tl.float32) * q.to(tl.float32)[None, :], axis=1), float("-inf"))
    let_next_launch(PDL)
    tl.store(scores_ptr + bh.to(tl.int64) * n_keys + offs, s, mask=in_range)

    top = tl.max(s, axis=0)
    ref = tl.where(top == float("-inf"), 0.0, top)
    stat = bh * n_blocks + blk
    tl.store(bmax_ptr + stat, top)
    tl.store(bsum_ptr + stat, tl.sum(tl.exp(s - ref), axis=0))
    tl.store(bcount_ptr + stat, tl.sum(seen.to(tl.int32), axis=0))
    tl.store(bmin_ptr + stat, tl.min(tl.where(seen, s, float("inf")), axis=0))

    # always-kept keys go to fixed entries; the entries of absent keys are left as they are (no fill launch)
    is_sink = seen & (k_pos < sinks)
    is_recent = seen & (q_pos - k_pos < recent) & ~is_sink
    tl.store(always_ptr + bh * n_always + always_entry(k_pos, q_pos, sinks), offs, mask=is_sink | is_recent)


@triton.jit
def _topp_count_kernel(
    values_ptr, bmax_ptr, bsum_ptr, bcount_ptr, n_keep_ptr,
    n_values, n_blocks, top_p, min_tokens, max_tokens,
    NB_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    nb = tl.arange(0, NB_PAD)
    nb_ok = nb < n_blocks
    bmax = tl.load(bmax_ptr + row * n_blocks + nb, mask=nb_ok, other=float("-inf"))
    top = tl.max(bmax, axis=0)
    ref = tl.where(top == float("-inf"), 0.0, top)
    mass = tl.sum(tl.load(bsum_ptr + row * n_blocks + nb, mask=nb_ok, other=0.0) * tl.exp(bmax - ref), axis=0)
    mass = tl.maximum(mass, 1.1754943508222875e-38)
    n_visible = tl.sum(tl.load(bcount_ptr + row * n_blocks + nb, mask=nb_ok, other=0), axis=0)

    # walk the sorted scores until the mass before the next key reaches top_p
    carry = tl.full([], 0.0, tl.float32)
    count = tl.full([], 0, tl.int32)
    start = tl.full([], 0, tl.int32)
    values_row = values_ptr + row.to(tl.int64) * n_values
    while (start < n_values) & (carry < top_p):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n_values
        p = tl.where(ok, tl.exp(tl.load(values_row + offs, mask=ok, other=float("-inf")) - ref) / mass, 0.0)
        before = carry + tl.cumsum(p, axis=0) - p
        count += tl.sum((ok & (before < top_p)).to(tl.int32), axis=0)
        carry += tl.sum(p, axis=0)
        start += BLOCK
    n_keep = tl.minimum(tl.minimum(tl.maximum(count, min_tokens), n_visible), max_tokens)
    tl.store(n_keep_ptr + row, n_keep.to(tl.int64))


@triton.jit
def _attend_part(
    q, q_pos, k_row, v_row, kpos_row, mask_row, index_row, always_row,
    s_kn, s_kd, s_vn, s_vd, s_kpn, s_mn, s_in,
    split, lo, hi, n_keys, window, sinks, skip_sinks, skip_recent, qk_scale,
    LIST: tl.constexpr, HAS_MASK: tl.constexpr, G_PAD: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, D_OK,
):
    """Partial softmax state of the ``G`` queries ``q`` (G_PAD, D_PAD) of one KV head over slots (dense)
    or list entries ``lo..hi`` of one part. ``*_row``: pointers already at the row's batch / head.
    List mode: part 0 reads the always list, the other parts the selection. An always-list entry counts only if
    it names the always-kept key of that entry (:func:`always_entry`); any other value, -1 included, is empty.
    Returns (max (G_PAD,), sum (G_PAD,), output (G_PAD, D_PAD), keys used ())."""
    # the always-list part, per lane (a scalar bool in a load mask trips the Triton interpreter)
    always_lanes = tl.full([BLOCK_N], 0, tl.int32) + split == 0
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    n_used = tl.zeros([BLOCK_N], tl.int32)
    d = tl.arange(0, D_PAD)
    for start in range(lo, hi, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        ok = offs < hi
        if LIST:
            listed = tl.load(index_row + offs.to(tl.int64) * s_in, mask=ok & ~always_lanes, other=-1)
            forced = tl.load(always_row + offs, mask=ok & always_lanes, other=-1)
            slot = tl.where(always_lanes, forced.to(tl.int64), listed.to(tl.int64))
            ok = ok & (slot >= 0) & (slot < n_keys)  # the always list is not cleared: an entry may hold anything
        else:
            slot = offs.to(tl.int64)
        k_pos = tl.load(kpos_row + slot * s_kpn, mask=ok, other=-1)
        use = ok & (k_pos >= 0) & (k_pos <= q_pos)
        if LIST:
            # sinks / recent keys are counted once, by the always part, from the entry that names them
            always_kind = (k_pos < skip_sinks) | (q_pos - k_pos < skip_recent)
            named = always_kind & (always_entry(k_pos, q_pos, skip_sinks) == offs)
            use = use & tl.where(always_lanes, named, ~always_kind)
        else:
            use = use & ((q_pos - k_pos < window) | (k_pos < sinks))
            if HAS_MASK:
                allowed = tl.load(mask_row + slot * s_mn, mask=ok, other=0)
                use = use & (allowed != 0)
        # K and V rows load as soon as their slots are known, not after the positions: the loads of
        # one step are in flight together. Slots that turn out invisible get p = 0 and V = 0 (an
        # unwritten slot may hold anything, and 0 * NaN is NaN). Triton's pipeliner (3 stages) already issues a
        # list's entries and the K/V copies of the next steps ahead (sm_90): loading each step's entries one step
        # ahead by hand compiled to the same pipeline.
        kv_ok = ok[:, None] & D_OK[None, :]
        keys = tl.load(k_row + slot[:, None] * s_kn + d[None, :] * s_kd, mask=kv_ok, other=0.0)
        values = tl.load(v_row + slot[:, None] * s_vn + d[None, :] * s_vd, mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(keys), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(use[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        values = tl.where(use[:, None], values, 0.0).to(values.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values, input_precision=DOT_PRECISION)
        m_i = m_new
        n_used += use.to(tl.int32)
    return m_i, l_i, acc, tl.sum(n_used, axis=0)


@triton.jit
def _part_range(split, n_parts, n_keys, n_index_row, n_always, LIST: tl.constexpr, BLOCK_N: tl.constexpr):
    """(lo, hi) of part ``split`` of ``n_parts``: a contiguous run of ``n_keys`` slots (dense), or in list
    mode the always list (part 0) and a share of the row's ``n_index`` selected entries (parts 1..)."""
    if LIST:
        n_sel = tl.load(n_index_row).to(tl.int32)
        chunk = tl.cdiv(tl.cdiv(n_sel, n_parts - 1), BLOCK_N) * BLOCK_N
        lo = tl.where(split == 0, 0, (split - 1) * chunk)
        hi = tl.where(split == 0, n_always, tl.minimum((split - 1) * chunk + chunk, n_sel))
    else:
        chunk = tl.cdiv(tl.cdiv(n_keys, n_parts), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(lo + chunk, n_keys)
    return lo, hi


@triton.jit
def _row_part(index, parts, n_kv_heads):
    """(row, part, batch row, KV head) of part ``index`` when each row of ``n_kv_heads``-head rows has ``parts``."""
    row = index // parts
    return row, index % parts, (row // n_kv_heads).to(tl.int64), (row % n_kv_heads).to(tl.int64)


@triton.jit
def _load_group(q_ptr, b, h, group, head_dim, s_qb, s_qh, s_qd, G_PAD: tl.constexpr, D_PAD: tl.constexpr):
    """The ``group`` query rows of KV head ``h`` in batch row ``b``: (G_PAD, D_PAD), zeros past them."""
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    return tl.load(q_ptr + b * s_qb + (h * group + g)[:, None] * s_qh + d[None, :] * s_qd,
                   mask=(g < group)[:, None] & (d < head_dim)[None, :], other=0.0)


@triton.jit
def _store_part(part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, part, m_i, l_i, acc, n_used, group,
                G_PAD: tl.constexpr, D_PAD: tl.constexpr):
    """Write one part's softmax state at index ``part`` of the (parts, G_PAD[, D_PAD]) scratch."""
    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    g_ok = g < group
    row = part * G_PAD + g
    tl.store(part_m_ptr + row, m_i, mask=g_ok)
    tl.store(part_l_ptr + row, l_i, mask=g_ok)
    tl.store(part_o_ptr + row[:, None] * D_PAD + d[None, :], acc, mask=g_ok[:, None])
    tl.store(part_n_ptr + part, n_used)


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, qpos_ptr, kpos_ptr, mask_ptr, index_ptr, n_index_ptr, always_ptr,
    part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr,
    n_kv_heads, group, head_dim, n_keys, n_always, n_parts, window, sinks, skip_sinks, skip_recent, qk_scale,
    s_qb, s_qh, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
    s_qpb, s_kpb, s_kpn, s_mb, s_mh, s_mn, s_ib, s_ih, s_in,
    LIST: tl.constexpr, HAS_MASK: tl.constexpr, G_PAD: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    bh, _, b, h = _row_part(tl.program_id(0), 1, n_kv_heads)
    split = tl.program_id(1)
    q = _load_group(q_ptr, b, h, group, head_dim, s_qb, s_qh, s_qd, G_PAD, D_PAD)
    q_pos = tl.load(qpos_ptr + b * s_qpb)
    lo, hi = _part_range(split, n_parts, n_keys, n_index_ptr + bh, n_always, LIST, BLOCK_N)
    m_i, l_i, acc, n_used = _attend_part(
        q, q_pos, k_ptr + b * s_kb + h * s_kh, v_ptr + b * s_vb + h * s_vh, kpos_ptr + b * s_kpb,
        mask_ptr + b * s_mb + h * s_mh, index_ptr + b * s_ib + h * s_ih, always_ptr + bh * n_always,
        s_kn, s_kd, s_vn, s_vd, s_kpn, s_mn, s_in,
        split, lo, hi, n_keys, window, sinks, skip_sinks, skip_recent, qk_scale,
        LIST, HAS_MASK, G_PAD, D_PAD, BLOCK_N, DOT_PRECISION, tl.arange(0, D_PAD) < head_dim,
    )
    let_next_launch(PDL)
    _store_part(part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, bh * n_parts + split, m_i, l_i, acc, n_used, group,
                G_PAD, D_PAD)


@triton.jit
def _combine_kernel(
    part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, out_ptr, count_ptr, heads_ptr, sums_ptr, bcount_ptr,
    rows_a, n_kv_a, n_kv_b, group, head_dim, parts_a, parts_b, s_ob, s_oh, s_od, n_blocks,
    HAS_MAP: tl.constexpr, G_PAD: tl.constexpr, D_PAD: tl.constexpr, D_CHUNK: tl.constexpr, P_CHUNK: tl.constexpr,
    KEY_SUMS: tl.constexpr, BLOCK_COUNTS: tl.constexpr, NB_CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    """One (row, query head, ``D_CHUNK`` of the head dim) per program. Each step loads the max, sum and
    output of ``P_CHUNK`` partial results together (one memory round trip) and merges them online.

    Rows come in two segments: ``rows_a`` rows of ``n_kv_a`` KV heads with ``parts_a`` parts each, then rows
    of ``n_kv_b`` KV heads with ``parts_b`` parts each (a single segment: no rows past ``rows_a``). Query head
    ``j`` of the segments' heads (segment a's first) is output head ``heads[j]`` (``HAS_MAP``), else ``j``.

    ``KEY_SUMS``: the program that writes row ``r``'s count also adds it to ``sums[r, 0]`` and the row's visible keys
    to ``sums[r, 1]`` (the sum of ``bcount[r, :n_blocks]``, the index scores' visible keys per block, with
    ``BLOCK_COUNTS``; else the count itself: every visible key was used). One program owns each row's entries, so
    plain loads and stores add them."""
    wait_for_previous(PDL)
    r = tl.program_id(0)
    gi = tl.program_id(1)
    dc = tl.program_id(2)
    in_a = r < rows_a
    rb = r - rows_a
    b = tl.where(in_a, r // n_kv_a, rb // n_kv_b).to(tl.int64)
    h = tl.where(in_a, r % n_kv_a, rb % n_kv_b)
    first = tl.where(in_a, r * parts_a, rows_a * parts_a + rb * parts_b)
    n_parts = tl.where(in_a, parts_a, parts_b)
    head = tl.where(in_a, 0, n_kv_a * group) + h * group + gi
    if HAS_MAP:
        head = tl.load(heads_ptr + head)
    d = dc * D_CHUNK + tl.arange(0, D_CHUNK)
    d_ok = d < head_dim
    ref = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([D_CHUNK], tl.float32)
    for start in range(0, n_parts, P_CHUNK):
        pc = start + tl.arange(0, P_CHUNK)
        p_ok = pc < n_parts
        row = (first + pc) * G_PAD + gi
        m = tl.load(part_m_ptr + row, mask=p_ok, other=float("-inf"))
        l = tl.load(part_l_ptr + row, mask=p_ok, other=0.0)
        part = tl.load(part_o_ptr + row[:, None] * D_PAD + d[None, :], mask=p_ok[:, None] & d_ok[None, :], other=0.0)
        new_ref = tl.maximum(ref, tl.max(m, axis=0))
        base = tl.where(new_ref == float("-inf"), 0.0, new_ref)
        scale = tl.exp2(ref - base)  # 0 while nothing was used (ref = -inf)
        weight = tl.exp2(m - base)  # 0 for unused parts (m = -inf); their outputs are zeros
        total = total * scale + tl.sum(weight * l, axis=0)
        acc = acc * scale + tl.sum(part * weight[:, None], axis=0)
        ref = new_ref
    out = acc / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + b * s_ob + head.to(tl.int64) * s_oh + d * s_od, out.to(out_ptr.dtype.element_ty), mask=d_ok)
    if (gi == 0) & (dc == 0):
        n_used = tl.zeros([P_CHUNK], tl.int32)
        for start in range(0, n_parts, P_CHUNK):
            pc = start + tl.arange(0, P_CHUNK)
            n_used += tl.load(part_n_ptr + first + pc, mask=pc < n_parts, other=0)
        n_row = tl.sum(n_used, axis=0).to(tl.int64)
        tl.store(count_ptr + r, n_row)
        if KEY_SUMS:
            seen = n_row
            if BLOCK_COUNTS:
                per_block = tl.zeros([NB_CHUNK], tl.int32)
                for start in range(0, n_blocks, NB_CHUNK):
                    nb = start + tl.arange(0, NB_CHUNK)
                    per_block += tl.load(bcount_ptr + r * n_blocks + nb, mask=nb < n_blocks, other=0)
                seen = tl.sum(per_block, axis=0).to(tl.int64)
            tl.store(sums_ptr + 2 * r, tl.load(sums_ptr + 2 * r) + n_row)
            tl.store(sums_ptr + 2 * r + 1, tl.load(sums_ptr + 2 * r + 1) + seen)


@dataclass(frozen=True)
class DecodeLaunch:
    """Launch shape of :func:`decode_attention` (the results do not depend on it beyond rounding).

    block_n: keys per inner step; waves: programs aimed at per SM, over all rows (the key range
    is split into ``waves * SMs / rows`` parts); split_keys: at least this many keys per part
    (fewer, longer programs and fewer partial results to combine; 0 = no floor); num_warps /
    num_stages: Triton's (``None``: Triton's default stages); combine_chunk: partial results the
    combine kernel reads per step (a power of two); combine_d: head-dim slice per combine program.
    """

    block_n: int = 64
    waves: int = 2
    num_warps: int = 4
    num_stages: int | None = None
    split_keys: int = 0
    combine_chunk: int = 16
    combine_d: int = 32

    def splits(self, span: int, rows: int, device: torch.device, extra: int = 0) -> int:
        """Parts the key range (``span`` slots or list entries) of each of ``rows`` rows is split into, where each
        row's launch has ``extra`` programs beside them (a list's part for its always-kept keys) that count against
        the ``waves`` programs per SM."""
        most = triton.cdiv(span, max(self.block_n, self.split_keys))
        return max(1, min(triton.cdiv(self.waves * _num_sms(device), rows) - extra, most))

    def parts(self, span: int, rows: int, device: torch.device, listed: bool) -> int:
        """Programs per row: the splits of its ``span`` keys or list entries, and with a list (``listed``) the part of
        its always-kept keys, which counts among the ``waves`` programs per SM (:meth:`splits`' ``extra``)."""
        return self.splits(span, rows, device, extra=int(listed)) + int(listed)

    def options(self) -> dict[str, int]:
        return {"num_warps": self.num_warps, **({} if self.num_stages is None else {"num_stages": self.num_stages})}


# H200 sweeps (benchmarks/decode_kernel_sweep.py --parts dense,list,combine). The combine loads the max, sum and
# output of 256 partial results together and merges them online (one memory round trip per 256), one program per
# 32 of the head dim: the local heads' ring 25.2 -> 22.1 us, a retrieval head over all keys at 32K / 128K
# 28.0 -> 20.6 / 43.8 -> 36.3 us, lists of 14K / 944K keys 19.3 -> 15.0 / 175.6 -> 165.6 us (against the
# earlier combine reading 64 parts a step after loading all their maxima; with 16 a step: 25.3, 38.0, 54.0, 23.5,
# 206.9 us).
DENSE_LAUNCH = DecodeLaunch(combine_chunk=256)  # every slot of a KV head (local heads: S + W ring slots)
# A selected list (retrieval heads): about one program per SM over all rows. Fewer, longer programs than two per SM
# (the earlier waves=2, which LIST_GRID's sweeps started from) made the list alone 27.4 -> 22.9 us over 36,864 keys of
# 1M, 15.7 -> 14.6 over 6,144 and 15.9 -> 13.3 over 1,408 (H100), and the selecting layer step 3.0 us faster at 128K
# and 3.8 at 1M, paired (benchmarks/results/llama-3.1-8b_h100_2026-12-05_list-launch-pdl.md). 64-key steps (56 KB of
# shared memory instead of 138, so that its programs fit beside the local heads' ring) made the step 4.9 / 16.9 / 24.3
# us slower per layer at 256K / 512K / 1M (benchmarks/results/llama-3.1-8b_h100_2026-12-06_step-streams-stamps.md).
# The part of the always-kept keys counts as one of those programs (``DecodeLaunch.splits``' ``extra``): with one
# retrieval head, 131 splits and it on 132 SMs, where 132 splits and it left one program for a second wave (it ended
# 0.7 us after the others in the 256K stamps). Per layer of 8 on an H100 beside the launch changes of the search
# (benchmarks/results/llama-3.1-8b_h100_2026-12-06_launch-triggers-substamps.md): -0.8 us at 256K, -0.3 at 512K, none
# resolved at 128K and 1M.
LIST_LAUNCH = DecodeLaunch(block_n=128, waves=1, combine_chunk=256)
# The local heads' ring on a side stream beside a selecting step's chain of kernels (HeadwiseCache's static decode):
# programs of 2 warps, about two per SM over all rows, 32-key steps. DENSE_LAUNCH's programs (two per SM of 4 warps,
# 64-key steps) fill the SMs' registers, so the index scores waited for the ring to finish and nothing overlapped; one
# 4-warp program per SM (the shape before this one) gained -3.8 / -6.6 / -0.8 us per layer against DENSE_LAUNCH at 32K /
# 128K / 1M keys on an H200 and -4.9 / -7.3 / -2.1 on an H100
# (benchmarks/results/llama-3.1-8b_h100_2026-12-05_ring-beside-selection.md). Against that shape, per layer of 8 on an
# H100 (three calls, trained-like scores): -1.3 / +0.2 / -0.8 us at 256K keys, -2.9 / -3.3 at 512K, -0.8 / -0.0 / -0.4
# at 1M, where the model selects; +0.7 / +1.0 / +1.2 at 128K, where by default it does not (identical code reads within
# 0.3 us in this harness); the ring alone 20.5-21.7 us per layer against 23.8-24.9. Beside the selection at 256K the
# earlier shape's programs landed about three to an SM on a third of the SMs, these on half of them; other shapes (one
# 2-warp or two 4-warp programs per SM, 4 or 8 stages, 64-key steps, at most 112 registers) and values loaded under the
# visibility mask made the step slower
# (benchmarks/results/llama-3.1-8b_h100_2026-12-06_step-streams-stamps.md). A step that does not select runs both kinds
# of heads in one launch instead (decode_roles.two_role_decode).
BESIDE_LAUNCH = DecodeLaunch(block_n=32, waves=2, num_warps=2, combine_chunk=256)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def index_scores(
    q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, *,
    sinks: int, recent: int, block: int = 1024, num_warps: int = 8, zero: torch.Tensor | None = None,
    pdl: bool = False,
) -> IndexScores:
    """Indexer scores of one query per batch row against every cached key.

    Args:
        q_idx: (B, Hkv, 1, d_idx); k_idx: (B, Hkv, Lk, d_idx); q_pos: (B, 1); k_pos: (B, Lk).
        sinks, recent: the always-kept keys (``k_pos < sinks`` or ``q_pos - k_pos < recent``).
        zero: optional contiguous int64 tensor the kernel sets to 0 (the threshold search's workspace: one launch
            fewer in the chain than a memset of its own).
        pdl: launch with programmatic dependent launch (:mod:`rtpurbo.ops.triton.dependent_launch`).
    Positions must be distinct within a row (true of any cache); two visible keys at one position
    would share an always-list slot.
    """
    batch, n_kv, _, d_idx = q_idx.shape
    n_keys = k_idx.shape[2]
    n_blocks = triton.cdiv(n_keys, block)
    rows = batch * n_kv
    device = q_idx.device
    if zero is not None and (zero.dtype != torch.int64 or not zero.is_contiguous() or zero.device != device):
        raise ValueError(f"zero must be a contiguous int64 tensor on {device}, got {zero.dtype} on {zero.device}")
    scores = torch.empty(batch, n_kv, n_keys, dtype=torch.float32, device=device)
    block_max = torch.empty(rows, n_blocks, dtype=torch.float32, device=device)
    block_sum = torch.empty(rows, n_blocks, dtype=torch.float32, device=device)
    block_count = torch.empty(rows, n_blocks, dtype=torch.int32, device=device)
    block_min = torch.empty(rows, n_blocks, dtype=torch.float32, device=device)
    always = torch.empty(rows, max(1, sinks + recent), dtype=torch.int32, device=device)  # not filled: see IndexScores
    _index_scores_kernel[(rows, n_blocks)](
        q_idx, k_idx, q_pos, k_pos, scores, block_max, block_sum, block_count, always, block_min,
        n_kv, n_keys, n_blocks, always.shape[1], sinks, recent,
        q_idx.stride(0), q_idx.stride(1), q_idx.stride(3),
        k_idx.stride(0), k_idx.stride(1), k_idx.stride(2), k_idx.stride(3),
        q_pos.stride(0), k_pos.stride(0), k_pos.stride(1),
        scores if zero is None else zero, 0 if zero is None else zero.numel(),
        D_IDX=d_idx, D_PAD=_pad(d_idx), BLOCK=block, ZERO=zero is not None, PDL=pdl, num_warps=num_warps,
        **dependent_launch.options(pdl),
    )
    return IndexScores(scores, block_max, block_sum, block_count, always, block_min)


def named_always(always: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, *, n_kv: int, sinks: int,
                 recent: int) -> torch.Tensor:
    """The always list as the list attention reads it, on the host (for tests and inspection).

    Args:
        always: (B * Hkv, A) int32 from :func:`index_scores`; q_pos: (B, 1); k_pos: (B, Lk).
    Returns:
        (B * Hkv, A) int64: each entry's slot where it names the visible always-kept key of that entry
        (:func:`always_entry`), else -1.
    """
    slot = always.long()
    positions = k_pos.repeat_interleave(n_kv, 0)
    query = q_pos.repeat_interleave(n_kv, 0)
    in_range = (slot >= 0) & (slot < positions.shape[1])
    key = torch.where(in_range, positions.gather(1, slot.clamp(0, positions.shape[1] - 1)), -1)
    kept = (key >= 0) & (key <= query) & ((key < sinks) | (query - key < recent))
    entry = torch.where(key < sinks, key, sinks + query - key)
    named = in_range & kept & (entry == torch.arange(slot.shape[1], device=slot.device))
    return torch.where(named, slot, -1)


def topp_count(
    values: torch.Tensor, scored: IndexScores, *, top_p: float, min_tokens: int, max_tokens: int | None,
    block: int = 1024,
) -> torch.Tensor:
    """How many of the best keys the top-p rule keeps, per row.

    Args:
        values: (BH, C) indexer scores sorted descending (C = Lk, or a budget's top C).
        scored: the :func:`index_scores` output the values come from (softmax statistics).
    Returns:
        (BH,) int64: the number of leading keys whose preceding probability mass is below
        ``top_p``, clamped to ``[min_tokens, max_tokens]`` and to the visible keys.
    """
    rows, n_values = values.shape
    n_blocks = scored.block_max.shape[1]
    n_keep = torch.empty(rows, dtype=torch.int64, device=values.device)
    _topp_count_kernel[(rows,)](
        values, scored.block_max, scored.block_sum, scored.block_count, n_keep,
        n_values, n_blocks, top_p, min_tokens, n_values if max_tokens is None else max_tokens,
        NB_PAD=_pad(n_blocks), BLOCK=block, num_warps=4,
    )
    return n_keep


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    scale: float,
    window: int | None = None,
    sinks: int = 0,
    key_mask: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    n_index: torch.Tensor | None = None,
    always: torch.Tensor | None = None,
    skip_sinks: int = 0,
    skip_recent: int = 0,
    launch: DecodeLaunch | None = None,
    pdl: bool = False,
    out: torch.Tensor | None = None,
    out_heads: torch.Tensor | None = None,
    key_sums: torch.Tensor | None = None,
    block_count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query per row (Lq == 1) over its KV head's keys.

    Dense mode (``index`` None): every slot, visible per :func:`semantics.visible` with
    ``window``/``sinks``, AND ``key_mask`` (bool, broadcastable to (B, Hkv, 1, Lk)) if given.
    List mode: the slots ``index[b, h, :n_index[b, h]]`` ((B, Hkv, C) and (B, Hkv)) that are
    causally visible and not always-kept (``k_pos < skip_sinks`` or ``q_pos - k_pos <
    skip_recent``), plus the always-kept keys that ``always`` ((B * Hkv, A), as :func:`index_scores` writes it with
    ``sinks=skip_sinks, recent=skip_recent``) names at their entries (:func:`always_entry`; others are empty).
    ``launch``: the launch shape (default :data:`DENSE_LAUNCH` / :data:`LIST_LAUNCH` by mode). ``pdl``: the
    attention and its combine launch with programmatic dependent launch
    (:mod:`rtpurbo.ops.triton.dependent_launch`). ``out`` / ``out_heads``: see :func:`combined`. ``key_sums`` /
    ``block_count``: running sums the combine adds the step to (:func:`check_key_sums`).
    Any head dim works: lanes past it (up to the next power of two, at least 16) are masked. Multiples of
    16 let Triton vectorise the K/V loads; others are correct but load narrower.

    Returns:
        out (B, Hq, 1, D) in ``q.dtype`` (zeros where no key is used), or ``out``, and the number of keys
        used (B, Hkv) int64.
    """
    batch, n_q, _, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    group = n_q // n_kv
    rows = batch * n_kv
    listed = index is not None
    check_always(always, skip_sinks, skip_recent)
    check_out(out, out_heads, batch, n_q, head_dim, q.device)
    check_key_sums(key_sums, block_count, batch, n_kv, q.device, selects=listed)
    span = index.shape[-1] if listed else n_keys
    launch = launch or (DENSE_LAUNCH if index is None else LIST_LAUNCH)
    block_n = launch.block_n
    n_parts = launch.parts(span, rows, q.device, listed)
    g_pad, d_pad = _pad(group), _pad(head_dim)
    part_m, part_l, part_o, part_n = part_buffers(rows, n_parts, g_pad, d_pad, q.device)
    mask = None if key_mask is None else key_mask.expand(batch, n_kv, 1, n_keys)[:, :, 0].view(torch.uint8)
    mask_t = k_pos if mask is None else mask
    index_t = k_pos[:, None] if index is None else index
    _decode_attention_kernel[(rows, n_parts)](
        q, k, v, q_pos, k_pos, mask_t, index_t,
        k_pos if n_index is None else n_index.reshape(rows),
        k_pos if always is None else always,
        part_m, part_l, part_o, part_n,
        n_kv, group, head_dim, n_keys, 0 if always is None else always.shape[1], n_parts,
        _NO_WINDOW if window is None else window, sinks, skip_sinks, skip_recent, scale * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(3), k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        q_pos.stride(0), k_pos.stride(0), k_pos.stride(1),
        mask_t.stride(0), mask_t.stride(1) if mask is not None else 0, mask_t.stride(-1),
        index_t.stride(0), index_t.stride(1), index_t.stride(2),
        LIST=listed, HAS_MASK=mask is not None, G_PAD=g_pad, D_PAD=d_pad, BLOCK_N=block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PDL=pdl, **launch.options(),
        **dependent_launch.options(pdl),
    )
    return combined(part_m, part_l, part_o, part_n, q, n_kv, launch=launch, pdl=pdl, out=out, out_heads=out_heads,
                    key_sums=key_sums, block_count=block_count)


def part_buffers(rows: int, n_parts: int, g_pad: int, d_pad: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Scratch for ``n_parts`` partial softmax states per row: max and sum (rows, n_parts, g_pad) fp32, output
    (rows, n_parts, g_pad, d_pad) fp32, keys used (rows, n_parts) int32."""
    part_m = torch.empty(rows, n_parts, g_pad, dtype=torch.float32, device=device)
    return (part_m, torch.empty_like(part_m), torch.empty(rows, n_parts, g_pad, d_pad, dtype=torch.float32,
                                                          device=device),
            torch.empty(rows, n_parts, dtype=torch.int32, device=device))


def combined(part_m: torch.Tensor, part_l: torch.Tensor, part_o: torch.Tensor, part_n: torch.Tensor, q: torch.Tensor,
             n_kv: int, *, launch: DecodeLaunch, pdl: bool, out: torch.Tensor | None = None,
             out_heads: torch.Tensor | None = None, key_sums: torch.Tensor | None = None,
             block_count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The parts of :func:`part_buffers` (one segment of ``n_kv``-head rows) merged: out (B, Hq, 1, D) in ``q``'s
    dtype and the keys used (B, Hkv) int64.

    out: optional destination, written by the combine itself (any strides): (B, Hq, 1, D), or with ``out_heads``
    (an integer (Hq,) tensor on the device) (B, H_out, 1, D), query head ``h`` going to ``out[:, out_heads[h]]``
    (e.g. a layer's retrieval heads straight into the layer's merged output), as :func:`check_out` checks before the
    attention's launch. Returned as the output.
    key_sums / block_count: running sums the combine adds to (see :func:`check_key_sums`, checked by the callers before
    their launch)."""
    batch, n_q, _, head_dim = q.shape
    rows, n_parts = part_n.shape
    if out is None:
        out = torch.empty(batch, n_q, 1, head_dim, dtype=q.dtype, device=q.device)
    counts = torch.empty(batch, n_kv, dtype=torch.int64, device=q.device)
    combine(part_m, part_l, part_o, part_n, out[:, :, 0], counts.view(-1), out_heads, (rows, n_kv, n_parts), None,
            group=n_q // n_kv, head_dim=head_dim, launch=launch, pdl=pdl, key_sums=key_sums, block_count=block_count)
    return out, counts


def check_key_sums(key_sums: torch.Tensor | None, block_count: torch.Tensor | None, batch: int, n_kv: int,
                   device: torch.device, selects: bool = False) -> None:
    """``key_sums`` of :func:`combined`: running sums (B, Hkv, 2) int64, contiguous, on the device, to which a step adds
    each row's keys used (``[..., 0]``) and keys visible to it (``[..., 1]``): the sum of ``block_count``
    ((B * Hkv, n_blocks) int32, :class:`IndexScores`' visible keys per block) where given, else the keys used (a step
    over every visible key). ``selects``: the step attends over a selection, whose keys used are not its visible
    ones, so its ``key_sums`` need ``block_count``."""
    if key_sums is None:
        if block_count is not None:
            raise ValueError("block_count needs key_sums")
        return
    if selects and block_count is None:
        raise ValueError("the key_sums of a step over a selection need the index scores' block_count: its visible "
                         "keys are not the keys it uses")
    if (tuple(key_sums.shape) != (batch, n_kv, 2) or key_sums.dtype != torch.int64 or not key_sums.is_contiguous()
            or key_sums.device != device):
        raise ValueError(f"key_sums must be a contiguous ({batch}, {n_kv}, 2) int64 tensor on {device}; got "
                         f"{tuple(key_sums.shape)} {key_sums.dtype} on {key_sums.device}"
                         f"{'' if key_sums.is_contiguous() else ', not contiguous'}")
    if block_count is not None and (block_count.dim() != 2 or block_count.shape[0] != batch * n_kv
                                    or block_count.dtype != torch.int32 or not block_count.is_contiguous()
                                    or block_count.device != device):
        raise ValueError(f"block_count must be a contiguous ({batch * n_kv}, n_blocks) int32 tensor on {device}; got "
                         f"{tuple(block_count.shape)} {block_count.dtype} on {block_count.device}")


def check_out(out: torch.Tensor | None, out_heads: torch.Tensor | None, batch: int, n_q: int, head_dim: int,
              device: torch.device) -> None:
    """An ``out`` / ``out_heads`` pair of :func:`combined` must fit ``batch`` rows of ``n_q`` query heads."""
    if out is None:
        if out_heads is not None:
            raise ValueError("out_heads needs out")
        return
    if out.dim() != 4 or out.shape[0] != batch or out.shape[2] != 1 or out.shape[3] != head_dim:
        raise ValueError(f"out must be (B={batch}, H, 1, D={head_dim}); got {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"out is on {out.device}, the queries on {device}")
    if out_heads is None:
        if out.shape[1] != n_q:
            raise ValueError(f"out has {out.shape[1]} heads for {n_q} query heads; pass out_heads to map them")
    elif (out_heads.shape != (n_q,) or out_heads.dtype not in (torch.int32, torch.int64)
          or out_heads.device != device):
        raise ValueError(f"out_heads must be ({n_q},) int32 or int64 on {device}; got {tuple(out_heads.shape)} "
                         f"{out_heads.dtype} on {out_heads.device}")


def check_always(always: torch.Tensor | None, skip_sinks: int, skip_recent: int) -> None:
    """An always list must have one entry per always-kept place (:func:`index_scores` with the same sinks / recent)."""
    if always is not None and always.shape[-1] != max(1, skip_sinks + skip_recent):
        raise ValueError(f"always has {always.shape[-1]} entries per row; skip_sinks={skip_sinks} and "
                         f"skip_recent={skip_recent} need {max(1, skip_sinks + skip_recent)}")


def combine(
    part_m: torch.Tensor, part_l: torch.Tensor, part_o: torch.Tensor, part_n: torch.Tensor, out: torch.Tensor,
    counts: torch.Tensor, heads: torch.Tensor | None, segment_a: tuple[int, int, int],
    segment_b: tuple[int, int, int] | None, *, group: int, head_dim: int, launch: DecodeLaunch, pdl: bool = False,
    key_sums: torch.Tensor | None = None, block_count: torch.Tensor | None = None,
) -> None:
    """Merge the parts' softmax states into ``out`` (B, Hq, D) and the keys used per row into ``counts``.

    segment_a / segment_b: (rows, KV heads, parts per row) of the rows in part order (segment b's after
    segment a's; None: one segment). heads: (Hq,) int32, the output head of each query head in segment
    order (None: the same index). pdl: launch with programmatic dependent launch (after a kernel that lets it).
    key_sums / block_count: see :func:`check_key_sums` (one segment only).
    """
    if key_sums is not None and segment_b is not None:
        raise ValueError("key_sums adds the rows of one segment")
    rows_a, n_kv_a, parts_a = segment_a
    rows_b, n_kv_b, parts_b = segment_b or (0, 1, 1)
    g_pad, d_pad = part_o.shape[-2], part_o.shape[-1]
    d_chunk = min(d_pad, launch.combine_d)
    p_chunk = min(triton.next_power_of_2(max(parts_a, parts_b)), launch.combine_chunk)
    _combine_kernel[(rows_a + rows_b, group, d_pad // d_chunk)](
        part_m, part_l, part_o, part_n, out, counts, counts if heads is None else heads,
        counts if key_sums is None else key_sums, counts if block_count is None else block_count,
        rows_a, n_kv_a, n_kv_b, group, head_dim, parts_a, parts_b, out.stride(0), out.stride(1), out.stride(2),
        0 if block_count is None else block_count.shape[1],
        HAS_MAP=heads is not None, G_PAD=g_pad, D_PAD=d_pad, D_CHUNK=d_chunk, P_CHUNK=p_chunk,
        KEY_SUMS=key_sums is not None, BLOCK_COUNTS=block_count is not None,
        NB_CHUNK=min(1024, triton.next_power_of_2(max(1, 0 if block_count is None else block_count.shape[1]))), PDL=pdl,
        num_warps=4 if p_chunk * d_chunk <= 4096 else 8, **dependent_launch.options(pdl),
    )
