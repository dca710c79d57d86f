"""One decode token per row into a layer of the head-wise cache, in one launch.

The static-decode step of :class:`rtpurbo.cache.HeadwiseCache` writes, per batch row ``b`` with
token position ``p`` (``-1`` = padding):

* every retrieval KV head: K, V and the indexer key at slot ``slot`` (the device counter
  ``r_next``, the same for all rows), and ``r_pos[b, slot] = p`` (padding rows too: their slot
  holds position -1, which no query sees); or, where the layer's retrieval store is a ring of
  ``W_b`` slots (a base model's windowed layer, ``retrieval_ring=W_b``), at the row's own slot
  ``p % W_b``, padding rows writing nothing;
* every local KV head: K and V at the ring slot ``p`` if ``p < S`` else ``S + (p - S) % W``, and
  ``l_pos[b, slot] = p``; padding rows write nothing.

The torch path does the same in 14 small ops (about 6 more for a retrieval ring) (``index_copy_`` x 4, and a gather / where /
scatter per ring tensor); on a GPU each is a kernel launch of a few microseconds, in every
layer of every decode step. The counter ``r_next`` is not advanced here (the caller's one
``add_``): a program of this launch may still be reading it.

Shapes: new ``k_ret``, ``v_ret`` (B, Hr, 1, D), ``idx_ret`` (B, Hr, 1, d_idx) or None, ``k_loc``,
``v_loc`` (B, Hl, 1, D) (any strides, unit stride in the last dim); positions (B, 1) int64; cache
tensors as in :class:`rtpurbo.cache_layer.LayerCache`, contiguous. Batch rows and heads are programs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _append_kernel(
    k_ret, v_ret, idx_ret, k_loc, v_loc, pos_ptr, slot_ptr,
    r_k, r_v, r_idx, r_pos, l_k, l_v, l_pos,
    n_ret, n_loc, capacity, ring, sinks, window, ret_ring, head_dim, index_dim,
    s_krb, s_krh, s_vrb, s_vrh, s_irb, s_irh, s_klb, s_klh, s_vlb, s_vlh, s_pb,
    HAS_INDEX: tl.constexpr, D_PAD: tl.constexpr, I_PAD: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, D_PAD)
    d_ok = d < head_dim
    p = tl.load(pos_ptr + b * s_pb)
    if h < n_ret:
        slot = tl.load(slot_ptr)
        if ret_ring > 0:  # the row's own ring slot; a padding row writes nothing
            slot = tl.maximum(p, 0) % ret_ring
        if (ret_ring == 0) | (p >= 0):
            row = (b * n_ret + h) * capacity + slot  # (b, h, slot) of a contiguous (B, Hr, capacity, .)
            tl.store(r_k + row * head_dim + d, tl.load(k_ret + b * s_krb + h * s_krh + d, mask=d_ok).to(r_k.dtype.element_ty), mask=d_ok)
            tl.store(r_v + row * head_dim + d, tl.load(v_ret + b * s_vrb + h * s_vrh + d, mask=d_ok).to(r_v.dtype.element_ty), mask=d_ok)
            if HAS_INDEX:
                i = tl.arange(0, I_PAD)
                i_ok = i < index_dim
                tl.store(r_idx + row * index_dim + i, tl.load(idx_ret + b * s_irb + h * s_irh + i, mask=i_ok).to(r_idx.dtype.element_ty),
                         mask=i_ok)
            if h == 0:
                tl.store(r_pos + b * capacity + slot, p.to(r_pos.dtype.element_ty))
    else:
        if p >= 0:
            hl = h - n_ret
            slot = tl.where(p < sinks, p, sinks + (p - sinks) % window)
            row = (b * n_loc + hl) * ring + slot
            tl.store(l_k + row * head_dim + d, tl.load(k_loc + b * s_klb + hl * s_klh + d, mask=d_ok).to(l_k.dtype.element_ty), mask=d_ok)
            tl.store(l_v + row * head_dim + d, tl.load(v_loc + b * s_vlb + hl * s_vlh + d, mask=d_ok).to(l_v.dtype.element_ty), mask=d_ok)
            if hl == 0:
                tl.store(l_pos + b * ring + slot, p.to(l_pos.dtype.element_ty))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """The tensor with a unit stride in its last dim (a copy only if it has none)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def append_token(
    layer, k_ret: torch.Tensor | None, v_ret: torch.Tensor | None, idx_ret: torch.Tensor | None,
    k_loc: torch.Tensor | None, v_loc: torch.Tensor | None, positions: torch.Tensor, *, sinks: int, window: int,
    retrieval_ring: int = 0,
) -> None:
    """Write one token per row of a layer (see the module docstring); ``layer`` is a ``LayerCache``;
    ``retrieval_ring``: the ring length of a retrieval store that is a ring (0: appended at ``r_next``)."""
    n_ret = 0 if k_ret is None else k_ret.shape[1]
    n_loc = 0 if k_loc is None else k_loc.shape[1]
    if n_ret + n_loc == 0:
        return
    for t in (layer.r_k, layer.r_v, layer.r_idx, layer.r_pos, layer.l_k, layer.l_v, layer.l_pos):
        if not t.is_contiguous():
            raise ValueError("append_token needs contiguous cache tensors")
    batch, head_dim = positions.shape[0], layer.r_k.shape[-1]
    index_dim = layer.r_idx.shape[-1]
    # absent roles: any tensor of the right rank stands in (its programs do not exist)
    k_ret, v_ret = (_rows(k_ret), _rows(v_ret)) if n_ret else (layer.r_k, layer.r_k)
    k_loc, v_loc = (_rows(k_loc), _rows(v_loc)) if n_loc else (layer.l_k, layer.l_k)
    has_index = n_ret > 0 and idx_ret is not None
    idx_ret = _rows(idx_ret) if has_index else layer.r_idx
    if n_ret and layer.r_next is None and not retrieval_ring:
        raise ValueError("append_token writes appended retrieval heads in static decode only (layer.r_next)")
    if retrieval_ring and retrieval_ring != layer.r_pos.shape[1]:
        raise ValueError(f"a retrieval ring of {retrieval_ring} slots, but the store holds {layer.r_pos.shape[1]}")
    slot = layer.r_next if n_ret and not retrieval_ring else positions  # only appending programs use it
    _append_kernel[(batch, n_ret + n_loc)](
        k_ret, v_ret, idx_ret, k_loc, v_loc, positions, slot,
        layer.r_k, layer.r_v, layer.r_idx, layer.r_pos, layer.l_k, layer.l_v, layer.l_pos,
        n_ret, n_loc, layer.r_pos.shape[1], layer.l_pos.shape[1], sinks, window, retrieval_ring, head_dim, index_dim,
        k_ret.stride(0), k_ret.stride(1), v_ret.stride(0), v_ret.stride(1), idx_ret.stride(0), idx_ret.stride(1),
        k_loc.stride(0), k_loc.stride(1), v_loc.stride(0), v_loc.stride(1), positions.stride(0),
        HAS_INDEX=has_index, D_PAD=triton.next_power_of_2(head_dim), I_PAD=max(2, triton.next_power_of_2(index_dim)),
        num_warps=1,
    )
