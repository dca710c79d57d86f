"""The threshold search's gather and the list attention in one launch (GPU decode, one query per row).

:func:`rtpurbo.ops.triton.topp.topp_attention` with the threshold method and the phased schedule would otherwise run
the gather (each chunk of keys writes its selected slots into the row's list) and then the list attention (the
list split into parts), two launches in the chain. Here one program per (row, chunk) does both for its chunk:

1. the gather of :func:`rtpurbo.ops.triton.threshold_phases.gather_phase` (the same entries of ``order``, at the
   same positions, from the tally's counts);
2. a barrier (its own writes are then visible to all its threads);
3. the list attention over the entries it wrote (:func:`rtpurbo.ops.triton.decode._attend_part`).

Program 0 of each row attends to the always-kept keys, as the list attention's part 0 does; the combine then merges
``1 + n_chunks`` parts per row. The selection, the list and the output match the two launches' (each part's keys are
a different split of the same set, so only the combine's rounding order differs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import dependent_launch
from .decode import LIST_LAUNCH, _attend_part, _load_group, _pad, _store_part, check_always, combine
from .dependent_launch import let_next_launch, wait_for_previous
from .threshold import SearchUntilGather
from .threshold_phases import N_SLOTS, N_STATE, gather_phase


@triton.jit
def _gather_attend_kernel(
    q_ptr, k_ptr, v_ptr, qpos_ptr, kpos_ptr, always_ptr, scores_ptr, state_ptr, tally_ptr, order_ptr,
    part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr,
    n_kv_heads, group, head_dim, n_keys, n_always, chunk, n_chunks, capacity, skip_sinks, skip_recent, qk_scale,
    s_qb, s_qh, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd, s_qpb, s_kpb, s_kpn,
    G_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr, NC_PAD: tl.constexpr,
    STATE_STRIDE: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // n_kv_heads).to(tl.int64)
    h = (bh % n_kv_heads).to(tl.int64)
    order_row = order_ptr + bh.to(tl.int64) * capacity
    lo = tl.zeros([], tl.int32)
    hi = tl.zeros([], tl.int32) + n_always
    if split > 0:  # chunk split - 1: its selected slots into the row's list, then attend over them
        lo, hi = gather_phase(scores_ptr + bh.to(tl.int64) * n_keys, state_ptr + bh * STATE_STRIDE, tally_ptr,
                              order_row, bh, split - 1, n_keys, chunk, n_chunks, NC_PAD, BLOCK, False)
        tl.debug_barrier()
    q = _load_group(q_ptr, b, h, group, head_dim, s_qb, s_qh, s_qd, G_PAD, D_PAD)
    q_pos = tl.load(qpos_ptr + b * s_qpb)
    m_i, l_i, acc, n_used = _attend_part(
        q, q_pos, k_ptr + b * s_kb + h * s_kh, v_ptr + b * s_vb + h * s_vh, kpos_ptr + b * s_kpb,
        kpos_ptr, order_row, always_ptr + bh * n_always,
        s_kn, s_kd, s_vn, s_vd, s_kpn, 0, 1,
        split, lo, hi, n_keys, 0, 0, skip_sinks, skip_recent, qk_scale,  # list mode: no window, no sinks
        True, False, G_PAD, D_PAD, BLOCK_N, DOT_PRECISION, tl.arange(0, D_PAD) < head_dim,
    )
    let_next_launch(PDL)
    _store_part(part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, bh * (n_chunks + 1) + split, m_i, l_i, acc, n_used,
                group, G_PAD, D_PAD)


def gather_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
    scores: torch.Tensor, searched: SearchUntilGather, always: torch.Tensor, *, scale: float, skip_sinks: int,
    skip_recent: int, pdl: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the selection and attend to it (with the always-kept keys), one launch and its combine.

    Args:
        q: (B, Hq, 1, D); k, v: (B, Hkv, Lk, D); q_pos (B, 1); k_pos (B, Lk).
        scores: (B * Hkv, Lk) fp32, the index scores the search ran on.
        searched: :func:`rtpurbo.ops.triton.threshold.topp_threshold` run with ``until_gather=True``; its
            ``order`` holds the selected slots afterwards, as the gather would have written them.
        always: (B * Hkv, skip_sinks + skip_recent) int32 from :func:`rtpurbo.ops.triton.decode.index_scores`.
        pdl: the launch and its combine use programmatic dependent launch.
    Returns:
        out (B, Hq, 1, D) in ``q.dtype`` and the number of keys used (B, Hkv) int64.
    """
    batch, n_q, _, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    check_always(always, skip_sinks, skip_recent)
    group = n_q // n_kv
    rows = batch * n_kv
    n_chunks = searched.tally.shape[1]
    n_parts = n_chunks + 1
    g_pad, d_pad = _pad(group), _pad(head_dim)
    part_m = torch.empty(rows, n_parts, g_pad, dtype=torch.float32, device=q.device)
    part_l = torch.empty_like(part_m)
    part_o = torch.empty(rows, n_parts, g_pad, d_pad, dtype=torch.float32, device=q.device)
    part_n = torch.empty(rows, n_parts, dtype=torch.int32, device=q.device)
    launch = LIST_LAUNCH
    _gather_attend_kernel[(rows, n_parts)](
        q, k, v, q_pos, k_pos, always, scores, searched.state, searched.tally, searched.order,
        part_m, part_l, part_o, part_n,
        n_kv, group, head_dim, n_keys, always.shape[1], searched.chunk, n_chunks, searched.order.shape[1],
        skip_sinks, skip_recent, scale * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(3), k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3), q_pos.stride(0), k_pos.stride(0), k_pos.stride(1),
        G_PAD=g_pad, D_PAD=d_pad, BLOCK_N=launch.block_n, BLOCK=searched.block,
        NC_PAD=max(16, triton.next_power_of_2(n_chunks)), STATE_STRIDE=N_SLOTS.value * N_STATE,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PDL=pdl, **launch.options(),
        **dependent_launch.options(pdl),
    )
    out = torch.empty(batch, n_q, 1, head_dim, dtype=q.dtype, device=q.device)
    counts = torch.empty(batch, n_kv, dtype=torch.int64, device=q.device)
    combine(part_m, part_l, part_o, part_n, out[:, :, 0], counts.view(-1), None, (rows, n_kv, n_parts), None,
            group=group, head_dim=head_dim, launch=launch, pdl=pdl)
    return out, counts
