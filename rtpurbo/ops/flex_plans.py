"""Plans of the flex backend's attention calls: block masks built on the device from positions (no host sync, no
L x L tensor) and the mask functions they carry. :mod:`rtpurbo.ops.flex` runs them.

* :func:`plan`: a prefill call's block mask: an index-only band mask for a plain window + sinks prefill
  (arithmetic over block indices, cached per length), else per-block position ranges (padding, chunks, rings) with
  a mask function reading the position tensors (and a ``key_mask``);
* :func:`block_sparse_plan`: the retrieval heads' sparse prefill, the key blocks their indexer keeps.

Mask functions are defined once at module level and read their data from closure tensors, which dynamo guards by
shape and dtype only, never by object identity: a new plan never recompiles a compiled flex entry.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from .semantics import check_window

BLOCK = 128  # block-mask tile (queries x keys); lengths are padded to a multiple of it
_NO_WINDOW = 1 << 62  # window=None as a number no position difference reaches

@dataclass(frozen=True)
class FlexPlan:
    """What one flex call needs besides q/k/v: reusable by every call with the same positions.

    kind: ``index`` (plain window + sinks), ``position``, ``key_mask``, ``blocks`` (sparse prefill) or
    ``dense_tail`` (the sparse prefill's dense last queries: a position mask with its own compiled entry).
    q_len, k_len: the padded lengths (multiples of :data:`BLOCK`) the block mask is built for.
    """

    kind: str
    block_mask: BlockMask
    q_len: int
    k_len: int


def plan(
    q_pos: torch.Tensor, k_pos: torch.Tensor, *, window: int | None, sinks: int, plain: bool = False,
    key_mask: torch.Tensor | None = None, group: int = 1, backward: bool = False,
) -> FlexPlan:
    """The block mask (and mask function) of a prefill call; no host sync.

    Args:
        q_pos: (B, Lq) and k_pos: (B, Lk) int64 positions (-1 = empty / padding).
        plain: positions are ``0..L-1`` in every row (see :mod:`rtpurbo.ops.flex`).
        key_mask: optional bool, broadcastable to (B, Hkv, Lq, Lk); ``group`` = query heads per KV head.
        backward: also build the transposed block lists that flex's backward pass reads.
    """
    check_window(window, sinks)
    q_len, k_len = _padded(q_pos.shape[-1]), _padded(k_pos.shape[-1])
    device = q_pos.device
    if plain and key_mask is None:
        if window is None:
            raise ValueError("a plain full-causal prefill runs SDPA, not flex: there is nothing to plan")
        return FlexPlan("index", _index_block_mask(q_len, window, sinks, device, backward), q_len, k_len)
    q_pos, k_pos = _pad_positions(q_pos, q_len), _pad_positions(k_pos, k_len)
    window_t = torch.tensor(_NO_WINDOW if window is None else window, device=device)
    sinks_t = torch.tensor(sinks, device=device)
    if key_mask is None:
        mask_mod, kind = _position_mask_mod(q_pos, k_pos, window_t, sinks_t), "position"
    else:
        batch, (n_q, n_k) = q_pos.shape[0], key_mask.shape[-2:]
        padded = F.pad(key_mask.expand(batch, key_mask.shape[1], n_q, n_k), (0, k_len - n_k, 0, q_len - n_q))
        mask_mod, kind = _key_mask_mod(q_pos, k_pos, window_t, sinks_t, padded, group), "key_mask"
    block_mask = _range_block_mask(q_pos, k_pos, window, sinks, mask_mod, exact=key_mask is None, backward=backward)
    return FlexPlan(kind, block_mask, q_len, k_len)


def block_sparse_plan(
    q_idx: torch.Tensor, k_idx: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, *, group: int, top_p: float,
    min_blocks: int = 0, max_blocks: int | None = None, sinks: int = 0, band: int = 1, backward: bool = False,
    scoring: str = "pooled",
) -> tuple[FlexPlan, torch.Tensor, torch.Tensor]:
    """The block mask of a retrieval heads' sparse prefill: :func:`rtpurbo.ops.reference.select_blocks` over
    blocks of :data:`BLOCK` slots (block scores by ``scoring``, :mod:`rtpurbo.ops.block_scores`), built on the
    device without a host sync or a per-query-head L x L tensor.

    On CUDA the ``mass`` scores come from the fused kernel (:mod:`rtpurbo.ops.triton.block_mass`: the
    reference's function up to fp32 summation order, without its token-level logits in memory); elsewhere
    from the PyTorch reference.

    Key positions must be in slot order within each row (a prefill, a retrieval cache). Each query
    block's list holds its always-kept blocks (sinks; the band: at most ``sinks / 128 + band / 128 + 3``
    blocks when positions are in slot order) and at most ``max_blocks`` chosen ones (all when None).

    Args: q_idx (B, Hkv, Lq, d), k_idx (B, Hkv, Lk, d); q_pos (B, Lq), k_pos (B, Lk); ``group`` query heads
    per KV head. Returns (plan, kept blocks (), blocks some query of their query block sees ()): summed
    over rows, heads and query blocks.
    """
    from .block_scores import block_ranges, block_roles, block_scores, check_scoring

    check_scoring(scoring)

    q_len, k_len = _padded(q_pos.shape[-1]), _padded(k_pos.shape[-1])
    q_pos, k_pos = _pad_positions(q_pos, q_len), _pad_positions(k_pos, k_len)
    seen, always = block_roles(q_pos, k_pos, BLOCK, sinks, band)  # (B, 1, nq, nk)
    candidates = seen & ~always
    n_k = candidates.shape[-1]
    keep_bound = n_k if max_blocks is None else min(n_k, max_blocks)
    if top_p >= 1.0:
        selected = (always | candidates).expand(-1, q_idx.shape[1], -1, -1)
        keep_bound = n_k
    else:
        if scoring == "mass" and q_idx.is_cuda:
            from .triton.block_mass import block_mass

            scores = block_mass(q_idx, k_idx, q_pos, k_pos, candidates, BLOCK)
        else:
            scores = block_scores(q_idx, k_idx, q_pos, k_pos, candidates, BLOCK, scoring)
        probs = torch.softmax(scores.masked_fill(~candidates, float("-inf")), dim=-1).nan_to_num(0.0)
        top, order = torch.topk(probs, keep_bound, dim=-1)  # best first
        n_keep = ((top.cumsum(-1) - top) < top_p).sum(-1, keepdim=True)
        n_keep = torch.minimum(n_keep.clamp(min=min_blocks), candidates.sum(-1, keepdim=True)).clamp(max=keep_bound)
        rank = torch.arange(keep_bound, device=scores.device)
        kept = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, rank < n_keep)
        selected = always | (kept & candidates)
    width = list_width(n_k, min(n_k, keep_bound + -(-sinks // BLOCK) + -(-band // BLOCK) + 3), q_pos.device, backward)
    q_lo, k_hi = block_ranges(q_pos, BLOCK)[0][:, None, :, None], block_ranges(k_pos, BLOCK)[1][:, None, None, :]
    full_ok = (k_hi <= q_lo) & _all_valid(q_pos)[:, None, :, None] & _all_valid(k_pos)[:, None, None, :]
    lists = [_compact_rows(selected & ~full_ok, width, group), _compact_rows(selected & full_ok, width, group)]
    mask_mod = _position_mask_mod(q_pos, k_pos, torch.tensor(_NO_WINDOW, device=q_pos.device),
                                  torch.tensor(0, device=q_pos.device))
    block_mask = BlockMask.from_kv_blocks(*lists[0], *lists[1], BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                          seq_lengths=(q_len, k_len), compute_q_blocks=backward)
    return FlexPlan("blocks", block_mask, q_len, k_len), selected.sum(), seen.expand_as(selected).sum()


def _all_valid(pos: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B, L / BLOCK): every slot of the block holds a token."""
    return (pos.view(pos.shape[0], -1, BLOCK) >= 0).all(-1)


def _compact_rows(chosen: torch.Tensor, width: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Hkv, nq, nk) bool -> counts (B, Hkv * group, nq) int32 and the chosen block indices first
    (B, Hkv * group, nq, width) int32; rows never hold more than ``width`` chosen blocks."""
    counts = chosen.sum(-1, dtype=torch.int32)
    index = torch.topk(chosen.to(torch.float16), width, dim=-1, sorted=True).indices.to(torch.int32)
    return counts.repeat_interleave(group, dim=1), index.repeat_interleave(group, dim=1)


# --- mask functions (defined once; their data lives in closure tensors) ----------------------
def _index_mask_mod(window: torch.Tensor, sinks: torch.Tensor):
    """Plain prefill: positions are the indices. window, sinks: 0-d int64 tensors."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < sinks))

    return mask_mod


def _position_mask_mod(q_pos, k_pos, window, sinks):
    """Positions (B, Lq) / (B, Lk), -1 = empty; window, sinks: 0-d int64 tensors."""

    def mask_mod(b, h, q_idx, kv_idx):
        qp, kp = q_pos[b, q_idx], k_pos[b, kv_idx]
        return (kp >= 0) & (kp <= qp) & ((qp - kp < window) | (kp < sinks))

    return mask_mod


def _key_mask_mod(q_pos, k_pos, window, sinks, key_mask, group: int):
    """As :func:`_position_mask_mod`, AND a per-KV-head key mask (B, Hkv, Lq, Lk): query head h reads h // group."""

    def mask_mod(b, h, q_idx, kv_idx):
        qp, kp = q_pos[b, q_idx], k_pos[b, kv_idx]
        seen = (kp >= 0) & (kp <= qp) & ((qp - kp < window) | (kp < sinks))
        return seen & key_mask[b, h // group, q_idx, kv_idx]

    return mask_mod


# --- block masks -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _index_block_mask(length: int, window: int, sinks: int, device: torch.device, backward: bool) -> BlockMask:
    """Window + sinks block mask of a plain prefill of ``length`` (padded) tokens, from the band
    arithmetic: each query block lists its sink blocks and the <= W/128 + 2 blocks of its band
    (compact lists, no n x n tensor), full blocks apart from partial ones."""
    n = length // BLOCK
    i = torch.arange(n, device=device)[:, None]  # query blocks
    sink_blocks = -(-sinks // BLOCK)
    band = (window + BLOCK - 2) // BLOCK + 2
    lo = ((i * BLOCK - window + 1).clamp(min=0)) // BLOCK
    candidates = torch.cat([torch.arange(sink_blocks, device=device).expand(n, sink_blocks),
                            lo + torch.arange(band, device=device)], dim=1)  # (n, sink_blocks + band)
    is_band = torch.arange(candidates.shape[1], device=device) >= sink_blocks
    valid = (candidates <= i) & ~(is_band & (candidates < sink_blocks))
    k_lo, k_hi = candidates * BLOCK, candidates * BLOCK + BLOCK - 1
    q_lo, q_hi = i * BLOCK, i * BLOCK + BLOCK - 1
    full = valid & (k_hi <= q_lo) & ((k_hi < sinks) | (q_hi - k_lo < window))
    partial = valid & ~full
    width = list_width(n, candidates.shape[1], device, backward)
    kv_num, kv_idx = _compact(partial, candidates, width)
    full_num, full_idx = _compact(full, candidates, width)
    mask_mod = _index_mask_mod(torch.tensor(window, device=device), torch.tensor(sinks, device=device))
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                   seq_lengths=(length, length), compute_q_blocks=backward)


def list_width(n_blocks: int, n_listed: int, device: torch.device, backward: bool) -> int:
    """Columns of a block mask's per-query-block key lists: ``n_listed`` (compact: only the blocks a
    row can list) where flex allows it, else all ``n_blocks``.

    Full width where inductor's CPU flex wants it, and for a backward pass: ``BlockMask.from_kv_blocks``
    builds the query-block lists that the backward kernel reads by scattering the key-block indices
    into a dense (rows, columns + 1) tensor, so every index must be below the number of columns
    (compact lists fail there with an out-of-bounds device assert on a GPU)."""
    return n_blocks if backward or device.type == "cpu" else n_listed


def _compact(chosen: torch.Tensor, candidates: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, C) bool over candidate block indices -> counts (1, 1, n) and indices (1, 1, n, width) int32,
    chosen first (columns past C, if any, are never read)."""
    order = torch.argsort(chosen.to(torch.int8), dim=-1, descending=True, stable=True)
    index = F.pad(candidates.gather(-1, order).clamp(min=0), (0, max(0, width - candidates.shape[1])))
    return chosen.sum(-1, dtype=torch.int32)[None, None], index[..., :max(width, 1)].to(torch.int32)[None, None]


def _block_ranges(pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per block of ``BLOCK`` slots of pos (B, L), L a multiple of BLOCK: min and max non-negative
    position, any / all valid. Four (B, n_blocks) tensors; min is ``_NO_WINDOW`` and max -1 for a
    block with no valid slot."""
    batch, length = pos.shape
    tiles = pos.view(batch, length // BLOCK, BLOCK)
    valid = tiles >= 0
    return tiles.masked_fill(~valid, _NO_WINDOW).amin(-1), tiles.amax(-1), valid.any(-1), valid.all(-1)


def _range_block_mask(q_pos, k_pos, window, sinks, mask_mod, *, exact: bool, backward: bool) -> BlockMask:
    """Block mask (B, 1, n_q_blocks, n_k_blocks) from per-block position ranges of padded positions.

    A block pair is partial when some visible pair may lie in it, full when all pairs are
    visible (only if ``exact``: no key_mask can remove keys).
    """
    q_lo, q_hi, q_any, q_all = (t[:, :, None] for t in _block_ranges(q_pos))
    k_lo, k_hi, k_any, k_all = (t[:, None, :] for t in _block_ranges(k_pos))
    w = _NO_WINDOW if window is None else window
    some = q_any & k_any & (k_lo <= q_hi) & ((q_lo - k_hi < w) | (k_lo < sinks))
    full = q_all & k_all & (k_hi <= q_lo) & ((q_hi - k_lo < w) | (k_hi < sinks))
    if not exact:
        full = torch.zeros_like(full)
    kv_num, kv_idx = _ordered(some & ~full)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
        seq_lengths=(q_pos.shape[-1], k_pos.shape[-1]), compute_q_blocks=backward,
    )


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, nq, nk) bool -> counts (B, 1, nq) int32 and column indices (B, 1, nq, nk) int32, set ones first."""
    counts = blocks.sum(-1, dtype=torch.int32)
    order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True)
    return counts[:, None], order.to(torch.int32)[:, None]


# --- helpers ---------------------------------------------------------------------------------
def _padded(length: int) -> int:
    return -(-length // BLOCK) * BLOCK


def _pad_positions(pos: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(pos, (0, length - pos.shape[-1]), value=-1) if pos.shape[-1] != length else pos
