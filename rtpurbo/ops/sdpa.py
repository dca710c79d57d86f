"""Chunked SDPA backend: same contract as :mod:`reference`, but uses
``torch.nn.functional.scaled_dot_product_attention`` per query chunk and, for
local heads, only gathers the keys a chunk can see (sinks + the window), so the
work of a local head grows with ``W``, not with the context.

Works on CPU and GPU, with autograd (this is the training path on CPU).
Key ranges are found from positions when the non-empty slots' positions are
non-decreasing along the key axis (prefill, the retrieval cache); otherwise (the
local ring buffer, a few thousand slots at most) every key is considered and the
mask alone decides.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import _slice_queries
from .semantics import visible


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None = None,
    sinks: int = 0,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    plain: bool = False,
    query_chunk: int | None = None,
) -> torch.Tensor:
    """See :func:`rtpurbo.ops.reference.attention`. Returns (B, Hq, Lq, D) in ``q.dtype``.

    ``plain``: positions are 0..L-1 (the caller says so); full causal heads then skip the check.
    ``query_chunk`` defaults to 1024, or ``W / 2`` (at least 128) for a local head, so a
    chunk's key span (sinks + chunk + W) stays close to the W keys each query needs.
    """
    batch, n_q_heads, q_len, head_dim = q.shape
    n_kv_heads = k.shape[1]
    group = n_q_heads // n_kv_heads
    if window is None and key_mask is None and (plain or _is_plain_causal(q_pos, k_pos)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=group > 1)
    if query_chunk is None:
        query_chunk = 1024 if window is None else min(1024, max(128, window // 2))
    sorted_pos = torch.cummax(k_pos, dim=-1).values  # (B, Lk) non-decreasing
    monotone = bool(((sorted_pos == k_pos) | (k_pos < 0)).all())
    outs = []
    for start in range(0, q_len, query_chunk):
        stop = min(start + query_chunk, q_len)
        qp = q_pos[:, start:stop]
        keys = _key_index(sorted_pos, qp, window, sinks) if monotone else None
        kp = k_pos if keys is None else k_pos[:, keys]
        mask = visible(qp, kp, window, sinks)[:, None]  # (B, 1, C, K)
        if key_mask is not None:
            km = _slice_queries(key_mask, start, stop, q_len)
            mask = mask & (km if keys is None else km[..., keys])
        if mask.shape[1] > 1:  # per-KV-head key mask: one row per query head
            mask = mask.repeat_interleave(group, dim=1)  # (B, Hq, C, K)
        kc = k if keys is None else k[:, :, keys]
        vc = v if keys is None else v[:, :, keys]
        out = F.scaled_dot_product_attention(
            q[:, :, start:stop], kc, vc, attn_mask=mask, scale=scale, enable_gqa=group > 1
        )
        outs.append(torch.where(mask.any(-1, keepdim=True), out, torch.zeros((), dtype=out.dtype, device=out.device)))
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]


def _key_index(
    sorted_pos: torch.Tensor, q_pos: torch.Tensor, window: int | None, sinks: int
) -> torch.Tensor | slice | None:
    """Key indices a query chunk may see: a slice, an index tensor (K,), or None for "all keys".

    Args:
        sorted_pos: (B, Lk) running maximum of key positions.
        q_pos: (B, C) query positions of the chunk (negative = padding query).
    """
    real = q_pos >= 0
    if not bool(real.any()):
        return None
    q_max = int(q_pos[real].max())
    q_min = int(q_pos[real].min())
    n_keys = sorted_pos.shape[-1]
    hi = int(torch.searchsorted(sorted_pos, torch.full_like(sorted_pos[:, :1], q_max), right=True).max())
    if window is None:
        return None if hi >= n_keys else slice(0, hi)
    lo_pos = torch.full_like(sorted_pos[:, :1], q_min - window + 1)
    lo = int(torch.searchsorted(sorted_pos, lo_pos, right=False).min())
    sink_pos = torch.full_like(sorted_pos[:, :1], sinks)
    sink_hi = int(torch.searchsorted(sorted_pos, sink_pos, right=False).max())
    if sink_hi >= lo:
        return slice(0, hi) if hi < n_keys else None
    if sink_hi == 0:
        return slice(lo, hi)
    return torch.cat(
        [torch.arange(0, sink_hi, device=sorted_pos.device), torch.arange(lo, hi, device=sorted_pos.device)]
    )


def _is_plain_causal(q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    """True when queries and keys are the same unpadded run of positions 0..L-1 per row."""
    if q_pos.shape != k_pos.shape or not torch.equal(q_pos, k_pos):
        return False
    expected = torch.arange(k_pos.shape[-1], device=k_pos.device)
    return bool((k_pos == expected).all())
