"""Eager fp32 reference for every rtpurbo attention op. Runs on CPU; defines correctness.

Layout conventions (shared by every backend):

* ``q``: (B, Hq, Lq, D); ``k``, ``v``: (B, Hkv, Lk, D) with ``Hq = Hkv * G`` (GQA).
  Query head ``h`` reads KV head ``h // G`` (consecutive query heads share a KV head).
* ``q_pos``: (B, Lq) and ``k_pos``: (B, Lk) int64 positions; ``k_pos < 0`` marks an empty slot.
* ``key_mask``: optional bool, broadcastable to (B, Hkv, Lq, Lk); an extra per-KV-head
  restriction (the top-p selection of a retrieval head) AND-ed with :func:`semantics.visible`.
* A query that sees no key at all returns zeros (never NaN).

The reference is chunked over queries so it never holds more than
``query_chunk x Lk`` scores per head: 8K-token contexts run on a small CPU.
"""
from __future__ import annotations

import torch

from .block_layout import lay_out, put_back, take
from .block_scores import block_roles, block_scores, check_scoring
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
    query_chunk: int = 512,
) -> torch.Tensor:
    """Head-wise masked attention, computed in fp32 (fp64 for fp64 inputs), returned in ``q.dtype``.

    ``plain`` (the caller's statement that positions are 0..L-1) changes nothing here: the
    reference always reads the positions.

    Returns: (B, Hq, Lq, D).
    """
    batch, n_q_heads, q_len, head_dim = q.shape
    n_kv_heads = k.shape[1]
    group = n_q_heads // n_kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    compute = torch.promote_types(q.dtype, torch.float32)
    qf = q.to(compute).view(batch, n_kv_heads, group, q_len, head_dim)
    kf, vf = k.to(compute), v.to(compute)
    out = torch.empty(batch, n_kv_heads, group, q_len, head_dim, dtype=compute, device=q.device)
    for start in range(0, q_len, query_chunk):
        stop = min(start + query_chunk, q_len)
        mask = visible(q_pos[:, start:stop], k_pos, window, sinks)[:, None]  # (B, 1, C, Lk)
        if key_mask is not None:
            mask = mask & _slice_queries(key_mask, start, stop, q_len)
        scores = torch.einsum("bhgqd,bhkd->bhgqk", qf[:, :, :, start:stop], kf) * scale
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        out[:, :, :, start:stop] = torch.einsum("bhgqk,bhkd->bhgqd", probs, vf)
    return out.view(batch, n_q_heads, q_len, head_dim).to(q.dtype)


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None = None,
    sinks: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention probabilities (B, Hq, Lq, Lk) in fp32; rows with no visible key are zero.

    Meant for short query sets (profiling, indexer targets), not whole long sequences.
    """
    batch, n_q_heads, q_len, head_dim = q.shape
    group = n_q_heads // k.shape[1]
    scale = head_dim**-0.5 if scale is None else scale
    kf = k.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), kf) * scale
    mask = visible(q_pos, k_pos, window, sinks)[:, None]
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)


def _slice_queries(key_mask: torch.Tensor, start: int, stop: int, q_len: int) -> torch.Tensor:
    """Rows [start, stop) of a key mask broadcastable to (B, Hkv, Lq, Lk)."""
    if key_mask.dim() == 4 and key_mask.shape[2] == q_len and q_len > 1:
        return key_mask[:, :, start:stop]
    return key_mask


def indexer_scores(q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
    """Indexer logits ``s_ij = <q_idx_i, k_idx_j>`` in fp32.

    Args:
        q_idx: (B, Hkv, Lq, d_idx) indexer queries (one per retrieval KV head).
        k_idx: (B, Hkv, Lk, d_idx) indexer keys.
    Returns: (B, Hkv, Lq, Lk).
    """
    return torch.einsum("bhqd,bhkd->bhqk", q_idx.float(), k_idx.float())


def select_topp(
    scores: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    top_p: float,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    sinks: int = 0,
    recent: int = 0,
) -> torch.Tensor:
    """Top-p key selection for retrieval heads (GUIDE section 1).

    Candidates are the causally visible keys. ``P = softmax(scores)`` over them; the
    selected set is the smallest prefix of keys sorted by ``P`` (descending; ties keep
    the earlier key first) whose mass reaches ``top_p``, its size clamped to
    ``[min_tokens, max_tokens]`` and to the number of candidates, united with the
    sinks (``k_pos < sinks``) and the ``recent`` most recent positions
    (``q_pos - k_pos < recent``). ``top_p >= 1`` selects every candidate.

    Args:
        scores: (B, Hkv, Lq, Lk) indexer logits.
        q_pos: (B, Lq); k_pos: (B, Lk) positions (negative = empty slot).
    Returns: (B, Hkv, Lq, Lk) bool.
    """
    candidates = visible(q_pos, k_pos, None, 0)[:, None]  # (B, 1, Lq, Lk)
    if top_p >= 1.0:
        return candidates.expand_as(scores).clone()
    probs = torch.softmax(scores.float().masked_fill(~candidates, float("-inf")), dim=-1).nan_to_num(0.0)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    n_keep = (mass_before < top_p).sum(-1, keepdim=True)
    n_cand = candidates.sum(-1, keepdim=True)
    n_keep = torch.minimum(n_keep.clamp(min=min_tokens), n_cand)
    if max_tokens is not None:
        n_keep = n_keep.clamp(max=max_tokens)
    rank = torch.arange(scores.shape[-1], device=scores.device)
    keep_sorted = rank < n_keep
    selected = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    qi, kj = q_pos[:, None, :, None], k_pos[:, None, None, :]
    always = (kj < sinks) | (qi - kj < recent)
    return (selected | always) & candidates


def topp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    *,
    top_p: float,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    sinks: int = 0,
    recent: int = 0,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Retrieval-head attention over the indexer's top-p selection.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D); q_pos (B, Lq); k_pos (B, Lk).
        q_idx: (B, Hkv, Lq, d_idx); k_idx: (B, Hkv, Lk, d_idx) indexer queries / keys.
    Returns:
        out (B, Hq, Lq, D) and the number of selected keys (B, Hkv, Lq).
    """
    selected = select_topp(
        indexer_scores(q_idx, k_idx), q_pos, k_pos,
        top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens, sinks=sinks, recent=recent,
    )
    out = attention(q, k, v, q_pos, k_pos, key_mask=selected, scale=scale)
    return out, selected.sum(-1)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding in the rotate-half layout, computed in fp32 (fp64 for fp64 inputs) and rounded once to
    each input's dtype.

    q (B, Hq, L, D), k (B, Hkv, L, D); cos, sin (B, L, D). ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) =
    cat(-x[..., D/2:], x[..., :D/2])``: transformers' ``apply_rotary_pos_emb`` of every family rtpurbo converts, which
    rounds after each of its operations instead.
    """
    def rotate(x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)
        x_wide, half = x.to(wide), x.shape[-1] // 2
        turned = torch.cat([-x_wide[..., half:], x_wide[..., :half]], dim=-1)
        return (x_wide * cos.to(wide)[:, None] + turned * sin.to(wide)[:, None]).to(x.dtype)

    return rotate(q), rotate(k)


def add_key_sums(key_sums: torch.Tensor, counts: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
    """Add one :func:`topp_attention` call to running sums, in place.

    key_sums: (B, Hkv, 2) int64: ``[..., 0]`` += the selected keys ``counts`` (B, Hkv, Lq) summed over the queries,
    ``[..., 1]`` += the keys a full retrieval head sees (:func:`visible` without a window), summed over the queries.
    q_pos (B, Lq); k_pos (B, Lk).
    """
    seen = visible(q_pos, k_pos, None, 0).sum((-2, -1))  # (B,)
    key_sums.add_(torch.stack([counts.sum(-1), seen[:, None].expand(counts.shape[:2])], dim=-1))


# --- sparse prefill of retrieval heads: top-p over key blocks ------------------------------
def select_blocks(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    block: int,
    top_p: float,
    min_blocks: int = 0,
    max_blocks: int | None = None,
    sinks: int = 0,
    band: int = 1,
    scoring: str = "pooled",
) -> torch.Tensor:
    """Key blocks each query block of a retrieval head attends to in a sparse prefill (GUIDE section 1's
    top-p rule, over blocks of ``block`` key slots scored by the indexer).

    For query block ``i`` (``block`` consecutive queries, lowest position ``lo_i``) and key block ``j``:

    * always kept: blocks holding a sink (position < ``sinks``) or a key at position >= ``lo_i - band``
      that some query of the block sees (the local band, the diagonal included; ``band >= 1``);
    * candidates: the other blocks holding a key some query of the block sees;
    * ``P = softmax_j score(i, j)`` over the candidates, ``score`` from
      :func:`rtpurbo.ops.block_scores.block_scores` (``scoring``: ``pooled``, the dot of the blocks'
      mean indexer vectors, or ``mass``, the indexer's probability mass of each key block for queries
      of block i); kept: the smallest prefix of candidates sorted by ``P`` (ties: lower ``j``
      first) whose mass reaches ``top_p``, its size clamped to ``[min_blocks, max_blocks]`` and to
      the candidates. ``top_p >= 1`` keeps every candidate: dense prefill.

    Args: q_idx (B, H, Lq, d), k_idx (B, H, Lk, d); q_pos (B, Lq), k_pos (B, Lk) (negative = empty).
    Returns: (B, H, n_q_blocks, n_k_blocks) bool.
    """
    if band < 1:
        raise ValueError(f"band must be >= 1 (the diagonal block is always kept), got {band}")
    check_scoring(scoring)
    seen, always = block_roles(q_pos, k_pos, block, sinks, band)  # (B, 1, nq, nk)
    candidates = seen & ~always
    if top_p >= 1.0:
        return (always | candidates).expand(-1, q_idx.shape[1], -1, -1).clone()
    scores = block_scores(q_idx, k_idx, q_pos, k_pos, candidates, block, scoring)
    probs = torch.softmax(scores.masked_fill(~candidates, float("-inf")), dim=-1).nan_to_num(0.0)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    n_keep = ((sorted_p.cumsum(-1) - sorted_p) < top_p).sum(-1, keepdim=True)
    n_cand = candidates.sum(-1, keepdim=True)
    n_keep = torch.minimum(n_keep.clamp(min=min_blocks), n_cand)
    if max_blocks is not None:
        n_keep = n_keep.clamp(max=max_blocks)
    rank = torch.arange(scores.shape[-1], device=scores.device)
    kept = torch.zeros_like(sorted_p, dtype=torch.bool).scatter(-1, order, rank < n_keep)
    return always | (kept & candidates)


def blocks_to_keys(blocks: torch.Tensor, block: int, q_len: int, k_len: int, tail: int = 0) -> torch.Tensor:
    """(B, H, nq, nk) block selection -> (B, H, Lq, Lk) bool key mask; the last ``tail`` queries keep every key
    (a sparse prefill's dense tail: causality still comes from the positions)."""
    mask = blocks.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)[:, :, :q_len, :k_len]
    if tail:
        mask[:, :, max(0, q_len - tail):] = True  # a view of the fresh repeat_interleave result
    return mask


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    *,
    block: int,
    top_p: float,
    min_blocks: int = 0,
    max_blocks: int | None = None,
    sinks: int = 0,
    band: int = 1,
    scale: float | None = None,
    scoring: str = "pooled",
    tail: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse prefill of retrieval heads: causal attention over the key blocks :func:`select_blocks` keeps;
    the last ``tail`` queries of the call (where a prompt's question usually sits) attend densely, to every
    key they see. Blocks are blocks of positions (``p // block``), whatever the padding or the chunk:
    :mod:`rtpurbo.ops.block_layout` lays the tokens out so.

    Returns out (B, Hq, Lq, D) and the selection (B, Hkv, n_q_blocks, n_k_blocks) bool (of the sparse rule,
    the dense tail not included; blocks of the laid-out queries and keys).
    """
    if tail < 0:
        raise ValueError(f"tail must be >= 0, got {tail}")
    lq, lk = lay_out(q_pos, block), lay_out(k_pos, block)
    blocks = select_blocks(take(q_idx, lq), take(k_idx, lk), lq.pos, lk.pos, block=block, top_p=top_p,
                           min_blocks=min_blocks, max_blocks=max_blocks, sinks=sinks, band=band, scoring=scoring)
    key_mask = blocks_to_keys(blocks, block, lq.pos.shape[1], lk.pos.shape[1])
    out = put_back(attention(take(q, lq), take(k, lk), take(v, lk), lq.pos, lk.pos, key_mask=key_mask, scale=scale),
                   lq)
    if tail:
        first = max(0, q.shape[2] - tail)
        out = torch.cat([out[:, :, :first], attention(q[:, :, first:], k, v, q_pos[:, first:], k_pos, scale=scale)],
                        dim=2)
    return out, blocks
