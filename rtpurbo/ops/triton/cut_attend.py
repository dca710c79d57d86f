"""Attention over a top-p selection that each program selects itself, from the threshold and the cut among its ties.

The threshold search (:func:`rtpurbo.ops.triton.threshold.topp_threshold`) ends in ``tau``, the score of the last
selected key, and the ``need`` keys to take among those scoring ``tau``, lowest slots first. Its tally and gather then
turn that into a list of slots: the tally counts the keys above / at ``tau`` per chunk, the gather writes each chunk's
slots at the positions those counts give, and the list attention splits the list over its programs. Two launches of
the decode chain and a pass over the scores each.

With ``until_cut=True`` the search instead ends where ``tau`` is resolved, its resolving walk storing the cut: the
highest slot taken at ``tau`` (:data:`~rtpurbo.ops.triton.threshold_phases.CUT`; the last entry the walk takes from its
bin's sorted list, or a scan of the row where more keys tie at ``tau`` than a list holds). Whether a key is selected is
then a test of its own score and slot::

    selected = s > score(tau)  or  (s == score(tau) and slot <= cut)

so one launch does the rest. Each program (row, part) takes a run of ``span`` consecutive slots: it tests their
scores, writes the slots it selects, ascending, into its own stretch of a scratch row (no counts from other
programs: nothing to wait for), and attends to them (:func:`rtpurbo.ops.triton.decode._attend_part`, list mode).
Part 0 of each row attends to the always-kept keys, as the list attention's part 0 does; the combine merges the
parts. The keys and the output match the list attention's over the gathered list (the parts split the same set
differently, so only the combine's rounding order differs).

Launch shape: :data:`rtpurbo.ops.triton.decode.LIST_LAUNCH`'s, about one program per SM over all rows, the always
part among them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import dependent_launch
from .decode import (LIST_LAUNCH, DecodeLaunch, _attend_part, _load_group, _pad, _store_part, check_always, check_out,
                     check_key_sums, combined, part_buffers)
from .dependent_launch import let_next_launch, wait_for_previous
from .threshold import Threshold
from .threshold_phases import CUT, N_SLOTS, N_STATE, TAU, _cg, _key_score, _scores_at

SCAN = 1024  # at most this many scores tested per step of a part's selection
SPAN_ALIGN = 256  # a part's run of slots starts at a multiple of this
CUT_LAUNCH = LIST_LAUNCH  # about one program per SM over all rows, the always part among them


@triton.jit
def select_part(scores_row, st, slots, lo, hi, SCAN: tl.constexpr):
    """The selected slots among ``lo..hi`` (``st``: the row's final search state), ascending, into ``slots[0:n]``;
    returns ``n`` (int32)."""
    tau_score = _key_score(_cg(st + TAU))
    cut = _cg(st + CUT)
    written = tl.zeros([], tl.int32)
    s_next = _scores_at(scores_row, lo, hi, SCAN)
    for start in range(lo, hi, SCAN):
        offs = start + tl.arange(0, SCAN)
        s = s_next
        s_next = _scores_at(scores_row, start + SCAN, hi, SCAN)  # past hi: -inf, never selected
        take = ((s > tau_score) | ((s == tau_score) & (offs <= cut))).to(tl.int32)
        tl.store(slots + written + tl.cumsum(take, axis=0) - take, offs, mask=take == 1)
        written += tl.sum(take, axis=0)
    return written


@triton.jit
def _cut_attend_kernel(
    q_ptr, k_ptr, v_ptr, qpos_ptr, kpos_ptr, always_ptr, scores_ptr, state_ptr, slots_ptr,
    part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr,
    n_kv_heads, group, head_dim, n_keys, n_always, span, n_parts, skip_sinks, skip_recent, qk_scale,
    s_qb, s_qh, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd, s_qpb, s_kpb, s_kpn,
    G_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr, SCAN: tl.constexpr,
    STATE_STRIDE: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // n_kv_heads).to(tl.int64)
    h = (bh % n_kv_heads).to(tl.int64)
    first = tl.maximum(split - 1, 0) * span  # part split > 0: slots first .. first + span
    slots = slots_ptr + bh.to(tl.int64) * n_keys + first  # its own stretch of the scratch row
    q = _load_group(q_ptr, b, h, group, head_dim, s_qb, s_qh, s_qd, G_PAD, D_PAD)  # in flight during the selection
    q_pos = tl.load(qpos_ptr + b * s_qpb)
    lo = tl.zeros([], tl.int32)
    hi = tl.zeros([], tl.int32) + n_always
    if split > 0:
        hi = select_part(scores_ptr + bh.to(tl.int64) * n_keys, state_ptr + bh * STATE_STRIDE, slots, first,
                         tl.minimum(first + span, n_keys), SCAN)
        tl.debug_barrier()  # the part's own writes, visible to all its threads
    m_i, l_i, acc, n_used = _attend_part(
        q, q_pos, k_ptr + b * s_kb + h * s_kh, v_ptr + b * s_vb + h * s_vh, kpos_ptr + b * s_kpb,
        kpos_ptr, slots, always_ptr + bh * n_always,
        s_kn, s_kd, s_vn, s_vd, s_kpn, 0, 1,
        split, lo, hi, n_keys, 0, 0, skip_sinks, skip_recent, qk_scale,  # list mode: no window, no sinks
        True, False, G_PAD, D_PAD, BLOCK_N, DOT_PRECISION, tl.arange(0, D_PAD) < head_dim,
    )
    let_next_launch(PDL)
    _store_part(part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, bh * n_parts + split, m_i, l_i, acc, n_used, group,
                G_PAD, D_PAD)


def cut_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
    scores: torch.Tensor, found: Threshold, always: torch.Tensor, *, scale: float, skip_sinks: int, skip_recent: int,
    launch: DecodeLaunch = CUT_LAUNCH, pdl: bool = False, out: torch.Tensor | None = None,
    out_heads: torch.Tensor | None = None, key_sums: torch.Tensor | None = None,
    block_count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one query per row over the keys the threshold selects, with the always-kept keys (one launch and
    its combine).

    Args:
        q: (B, Hq, 1, D); k, v: (B, Hkv, Lk, D); q_pos (B, 1); k_pos (B, Lk).
        scores: (B * Hkv, Lk) fp32, the index scores the search ran on.
        found: :func:`rtpurbo.ops.triton.threshold.topp_threshold` run with ``until_cut=True`` on ``scores``.
        always: (B * Hkv, skip_sinks + skip_recent) int32 from :func:`rtpurbo.ops.triton.decode.index_scores`.
        launch: programs per SM and the attention's steps (``launch.splits``: the always part counts among them).
        pdl: the launch and its combine use programmatic dependent launch.
        out, out_heads: the destination, see :func:`rtpurbo.ops.triton.decode.combined`.
        key_sums, block_count: running sums the combine adds the step's keys used and visible keys to, the visible keys
            per block of the index scores (:func:`rtpurbo.ops.triton.decode.check_key_sums`).
    Returns:
        out (B, Hq, 1, D) in ``q.dtype`` (zeros where no key is used), or ``out``, and the number of keys used
        (B, Hkv) int64.
    """
    batch, n_q, _, head_dim = q.shape
    n_kv, n_keys = k.shape[1], k.shape[2]
    rows = batch * n_kv
    check_always(always, skip_sinks, skip_recent)
    check_out(out, out_heads, batch, n_q, head_dim, q.device)
    check_key_sums(key_sums, block_count, batch, n_kv, q.device, selects=True)
    if tuple(scores.shape) != (rows, n_keys) or found.state.shape[0] != rows:
        raise ValueError(f"scores {tuple(scores.shape)} and a search state of {found.state.shape[0]} rows do not fit "
                         f"{rows} rows of {n_keys} keys")
    group = n_q // n_kv
    splits = launch.splits(n_keys, rows, q.device, extra=1)
    span = triton.cdiv(triton.cdiv(max(n_keys, 1), splits), SPAN_ALIGN) * SPAN_ALIGN
    n_parts = triton.cdiv(max(n_keys, 1), span) + 1
    g_pad, d_pad = _pad(group), _pad(head_dim)
    slots = torch.empty(rows, n_keys, dtype=torch.int32, device=q.device)
    part_m, part_l, part_o, part_n = part_buffers(rows, n_parts, g_pad, d_pad, q.device)
    _cut_attend_kernel[(rows, n_parts)](
        q, k, v, q_pos, k_pos, always, scores, found.state, slots, part_m, part_l, part_o, part_n,
        n_kv, group, head_dim, n_keys, always.shape[1], span, n_parts, skip_sinks, skip_recent,
        scale * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(3), k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3), q_pos.stride(0), k_pos.stride(0), k_pos.stride(1),
        G_PAD=g_pad, D_PAD=d_pad, BLOCK_N=launch.block_n, SCAN=min(SCAN, triton.next_power_of_2(span)),
        STATE_STRIDE=N_SLOTS.value * N_STATE,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PDL=pdl, **launch.options(),
        **dependent_launch.options(pdl),
    )
    return combined(part_m, part_l, part_o, part_n, q, n_kv, launch=launch, pdl=pdl, out=out, out_heads=out_heads,
                    key_sums=key_sums, block_count=block_count)
