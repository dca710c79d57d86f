"""One decode step of a whole head-wise layer in one attention launch and one combine.

A layer of a converted model has two kinds of KV heads, with different key stores: retrieval heads
over their (static) slots, every key or the indexer's top-p list, and local heads over their ring of
``S + W`` slots. :func:`rtpurbo.ops.triton.decode.decode_attention` runs one kind per call; a step
then takes two attention launches, two combines, a side stream to overlap them and a copy that merges
the heads. :func:`two_role_decode` runs both kinds in one launch: programs ``0..`` take the retrieval
rows' parts, the rest the local rows' parts, each with the same inner loop
(:func:`rtpurbo.ops.triton.decode._attend_part`). One combine writes every query head straight into the
``(B, 1, Hq * D)`` layout ``o_proj`` reads, in the module's head order.

How the keys are split into parts: when the retrieval heads read every key, the parts of both kinds
hold about the same number of keys, so the launch is balanced whatever the ratio of ``L`` to
``S + W``. With a selection list the list's length is known only on the device; its rows are split as
:data:`rtpurbo.ops.triton.decode.LIST_LAUNCH` splits them, the ring as
:data:`rtpurbo.ops.triton.decode.DENSE_LAUNCH` would.

A step whose retrieval heads select keeps the two kinds apart: the selection is a chain of small, latency-bound
kernels, and the local heads run beside it on a side stream, through :func:`ring_beside_selection`.

Shapes: retrieval ``q_ret`` (B, Hr * G, 1, D), ``k_ret`` / ``v_ret`` (B, Hr, Lr, D), ``ret_pos`` (B, Lr);
local ``q_loc`` (B, Hl * G, 1, D), ``k_loc`` / ``v_loc`` (B, Hl, Ll, D), ``loc_pos`` (B, Ll); ``q_pos``
(B, 1). Any strides. No host sync; shapes depend only on the inputs' shapes (CUDA-graph capturable).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import dependent_launch
from .decode import (
    _NO_WINDOW, BESIDE_LAUNCH, DENSE_LAUNCH, LIST_LAUNCH, DecodeLaunch, _attend_part, _load_group, _num_sms, _pad,
    _part_range, _row_part, _store_part, check_always, combine, decode_attention,
)
from .dependent_launch import let_next_launch, wait_for_previous


@triton.jit
def _two_role_kernel(
    qr_ptr, kr_ptr, vr_ptr, rpos_ptr, index_ptr, n_index_ptr, always_ptr,
    ql_ptr, kl_ptr, vl_ptr, lpos_ptr, qpos_ptr,
    part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr,
    rows_r, n_ret, n_loc, group, head_dim, n_rkeys, n_lkeys, n_always, parts_r, parts_l,
    ret_window, window, sinks, skip_sinks, skip_recent, qk_scale,
    s_qrb, s_qrh, s_qrd, s_krb, s_krh, s_krn, s_krd, s_vrb, s_vrh, s_vrn, s_vrd, s_rpb, s_rpn, s_ib, s_ih, s_in,
    s_qlb, s_qlh, s_qld, s_klb, s_klh, s_kln, s_kld, s_vlb, s_vlh, s_vln, s_vld, s_lpb, s_lpn, s_qpb,
    LIST: tl.constexpr, G_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    pid = tl.program_id(0)
    d_ok = tl.arange(0, D_PAD) < head_dim
    if pid < rows_r * parts_r:  # a part of a retrieval row
        row, split, b, h = _row_part(pid, parts_r, n_ret)
        q = _load_group(qr_ptr, b, h, group, head_dim, s_qrb, s_qrh, s_qrd, G_PAD, D_PAD)
        q_pos = tl.load(qpos_ptr + b * s_qpb)
        lo, hi = _part_range(split, parts_r, n_rkeys, n_index_ptr + row, n_always, LIST, BLOCK_N)
        m_i, l_i, acc, n_used = _attend_part(
            q, q_pos, kr_ptr + b * s_krb + h * s_krh, vr_ptr + b * s_vrb + h * s_vrh, rpos_ptr + b * s_rpb,
            rpos_ptr, index_ptr + b * s_ib + h * s_ih, always_ptr + row * n_always,
            s_krn, s_krd, s_vrn, s_vrd, s_rpn, 0, s_in,
            split, lo, hi, n_rkeys, ret_window, 0, skip_sinks, skip_recent, qk_scale,
            LIST, False, G_PAD, D_PAD, BLOCK_N, DOT_PRECISION, d_ok,
        )
    else:  # a part of a local row: its ring slots, window + sinks
        row, split, b, h = _row_part(pid - rows_r * parts_r, parts_l, n_loc)
        q = _load_group(ql_ptr, b, h, group, head_dim, s_qlb, s_qlh, s_qld, G_PAD, D_PAD)
        q_pos = tl.load(qpos_ptr + b * s_qpb)
        lo, hi = _part_range(split, parts_l, n_lkeys, n_index_ptr, 0, False, BLOCK_N)
        m_i, l_i, acc, n_used = _attend_part(
            q, q_pos, kl_ptr + b * s_klb + h * s_klh, vl_ptr + b * s_vlb + h * s_vlh, lpos_ptr + b * s_lpb,
            lpos_ptr, lpos_ptr, lpos_ptr,
            s_kln, s_kld, s_vln, s_vld, s_lpn, 0, 0,
            split, lo, hi, n_lkeys, window, sinks, 0, 0, qk_scale,
            False, False, G_PAD, D_PAD, BLOCK_N, DOT_PRECISION, d_ok,
        )
    let_next_launch(PDL)
    _store_part(part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, pid, m_i, l_i, acc, n_used, group, G_PAD, D_PAD)


def role_parts(span_r: int, rows_r: int, span_l: int, rows_l: int, listed: bool, launch: DecodeLaunch,
               device: torch.device) -> tuple[int, int]:
    """Parts per retrieval row and per local row (a list's parts include its always-list part).

    Every key (``listed`` False): one part size for both kinds, about ``launch.waves`` programs per SM in all.
    A list: its rows in as many parts as :func:`~rtpurbo.ops.triton.decode.decode_attention`'s list mode gives them
    (:meth:`~rtpurbo.ops.triton.decode.DecodeLaunch.parts`), the ring rows as ``launch`` splits them alone.
    """
    if listed:
        return LIST_LAUNCH.parts(span_r, rows_r, device, listed=True), launch.splits(span_l, rows_l, device)
    total = rows_r * span_r + rows_l * span_l
    size = max(launch.block_n, launch.split_keys, triton.cdiv(total, launch.waves * _num_sms(device)))
    size = triton.cdiv(size, launch.block_n) * launch.block_n
    return max(1, triton.cdiv(span_r, size)), max(1, triton.cdiv(span_l, size))


def two_role_decode(
    q_ret: torch.Tensor, k_ret: torch.Tensor, v_ret: torch.Tensor, ret_pos: torch.Tensor,
    q_loc: torch.Tensor, k_loc: torch.Tensor, v_loc: torch.Tensor, loc_pos: torch.Tensor, q_pos: torch.Tensor,
    *,
    scale: float,
    window: int,
    sinks: int,
    heads: torch.Tensor | None = None,
    ret_window: int | None = None,
    index: torch.Tensor | None = None,
    n_index: torch.Tensor | None = None,
    always: torch.Tensor | None = None,
    skip_sinks: int = 0,
    skip_recent: int = 0,
    launch: DecodeLaunch | None = None,
    pdl: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query per batch row over both kinds of heads of a layer (shapes: the module docstring).

    Retrieval heads: every visible slot (within ``ret_window`` if given), or with ``index`` / ``n_index`` /
    ``always`` the selection as in :func:`rtpurbo.ops.triton.decode.decode_attention`'s list mode. Local heads:
    the ring slots visible under ``window`` + ``sinks``.

    Args:
        heads: (Hq,) int32 on the device: the layer's query head of each retrieval query head, then of each
            local one (None: retrieval heads first, in order).
        launch: the launch shape (default :data:`DENSE_LAUNCH`, or :data:`LIST_LAUNCH`'s block with a list).
        pdl: the launch and its combine use programmatic dependent launch
            (:mod:`rtpurbo.ops.triton.dependent_launch`; None: :func:`~rtpurbo.ops.triton.dependent_launch.enabled`).
    Returns:
        out (B, 1, Hq * D) in ``q_ret.dtype`` (zeros where no key is used), and the keys each retrieval KV head
        used (B, Hr) int64.
    """
    batch, n_qr, _, head_dim = q_ret.shape
    n_ret, n_loc = k_ret.shape[1], k_loc.shape[1]
    if n_ret == 0 or n_loc == 0:
        raise ValueError(f"two_role_decode needs heads of both kinds, got {n_ret} retrieval and {n_loc} local KV heads")
    check_always(always, skip_sinks, skip_recent)
    group = n_qr // n_ret
    if q_loc.shape[1] != n_loc * group or q_loc.shape[-1] != head_dim or q_ret.shape[2] != 1 or q_loc.shape[2] != 1:
        raise ValueError(f"q_ret{tuple(q_ret.shape)} / q_loc{tuple(q_loc.shape)} must be one query per row, "
                         f"{group} query heads per KV head ({n_ret} retrieval, {n_loc} local), head dim {head_dim}")
    n_q = n_qr + q_loc.shape[1]
    if heads is not None and (heads.shape != (n_q,) or heads.dtype != torch.int32):
        raise ValueError(f"heads must be ({n_q},) int32, got {tuple(heads.shape)} {heads.dtype}")
    listed = index is not None
    launch = launch or (DecodeLaunch(block_n=LIST_LAUNCH.block_n, combine_chunk=DENSE_LAUNCH.combine_chunk)
                        if listed else DENSE_LAUNCH)
    rows_r, rows_l = batch * n_ret, batch * n_loc
    span_r = index.shape[-1] if listed else k_ret.shape[2]
    parts_r, parts_l = role_parts(span_r, rows_r, k_loc.shape[2], rows_l, listed, launch, q_ret.device)
    n_parts = rows_r * parts_r + rows_l * parts_l
    g_pad, d_pad = _pad(group), _pad(head_dim)
    device = q_ret.device
    pdl = dependent_launch.enabled(device) if pdl is None else pdl
    part_m = torch.empty(n_parts, g_pad, dtype=torch.float32, device=device)
    part_l = torch.empty_like(part_m)
    part_o = torch.empty(n_parts, g_pad, d_pad, dtype=torch.float32, device=device)
    part_n = torch.empty(n_parts, dtype=torch.int32, device=device)
    index_t = ret_pos[:, None] if index is None else index
    _two_role_kernel[(n_parts,)](
        q_ret, k_ret, v_ret, ret_pos, index_t, ret_pos if n_index is None else n_index.reshape(rows_r),
        ret_pos if always is None else always,
        q_loc, k_loc, v_loc, loc_pos, q_pos,
        part_m, part_l, part_o, part_n,
        rows_r, n_ret, n_loc, group, head_dim, k_ret.shape[2], k_loc.shape[2], 0 if always is None else always.shape[1],
        parts_r, parts_l,
        _NO_WINDOW if ret_window is None else ret_window, window, sinks, skip_sinks, skip_recent,
        scale * 1.4426950408889634,
        q_ret.stride(0), q_ret.stride(1), q_ret.stride(3), *k_ret.stride(), *v_ret.stride(), *ret_pos.stride(),
        index_t.stride(0), index_t.stride(1), index_t.stride(2),
        q_loc.stride(0), q_loc.stride(1), q_loc.stride(3), *k_loc.stride(), *v_loc.stride(), *loc_pos.stride(),
        q_pos.stride(0),
        LIST=listed, G_PAD=g_pad, D_PAD=d_pad, BLOCK_N=launch.block_n,
        DOT_PRECISION="ieee" if q_ret.dtype == torch.float32 else "tf32", PDL=pdl, **launch.options(),
        **dependent_launch.options(pdl),
    )
    out = torch.empty(batch, 1, n_q, head_dim, dtype=q_ret.dtype, device=device)
    counts = torch.empty(rows_r + rows_l, dtype=torch.int64, device=device)
    combine(part_m, part_l, part_o, part_n, out[:, 0], counts, heads, (rows_r, n_ret, parts_r), (rows_l, n_loc, parts_l),
            group=group, head_dim=head_dim, launch=launch, pdl=pdl)
    return out.view(batch, 1, n_q * head_dim), counts[:rows_r].view(batch, n_ret)


def ring_beside_selection(q_loc: torch.Tensor, k_loc: torch.Tensor, v_loc: torch.Tensor, loc_pos: torch.Tensor,
                          q_pos: torch.Tensor, *, scale: float, window: int, sinks: int, out: torch.Tensor | None = None,
                          out_heads: torch.Tensor | None = None) -> torch.Tensor:
    """The local heads of a selecting step (shapes: the module docstring): their ring slots visible under ``window``
    + ``sinks``, in the launch shape :data:`rtpurbo.ops.triton.decode.BESIDE_LAUNCH` that leaves the SMs room for the
    retrieval heads' selection running beside it on another stream. Returns (B, Hl * G, 1, D) in ``q_loc.dtype``, or
    ``out``, which the combine writes itself (``out_heads``: see :func:`rtpurbo.ops.triton.decode.combined`)."""
    return decode_attention(q_loc, k_loc, v_loc, q_pos, loc_pos, scale=scale, window=window, sinks=sinks,
                            launch=BESIDE_LAUNCH, out=out, out_heads=out_heads)[0]
