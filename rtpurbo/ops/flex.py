"""GPU attention backend: same contract as :func:`rtpurbo.ops.reference.attention`.

Which path runs, decided per call in this order:

1. ``Lq == 1`` (decode): the Triton split-K kernel of :mod:`rtpurbo.ops.triton.decode` over the
   keys it is given (a local head's sink + ring slots, or a retrieval cache), visibility from
   the positions, ``window``, ``sinks`` and ``key_mask``. No host sync: CUDA-graph capturable.
2. Plain prefill -- every row has ``q_pos == k_pos == arange(L)`` and there is no ``key_mask``
   (one host sync checks this):

   * full causal (``window`` None, or ``window >= L``, which sees the same keys): SDPA with
     ``is_causal``, cuDNN backend first, then flash, memory-efficient, math; GQA-native
     (``enable_gqa``, no K/V repeat).
   * window + sinks: compiled ``flex_attention`` with a block mask built once per
     ``(L, window, sinks, device)`` and cached; an index-only mask_mod shared by all heads
     (block mask B = H = 1). Work grows with ``W``, not with ``L``.
3. Any other ``Lq > 1`` call (padding, offsets as in chunked prefill, arbitrary positions,
   ``key_mask``): compiled ``flex_attention`` whose mask_mod reads the position tensors (and
   ``key_mask``); the block mask is built per call from per-block position ranges, so a
   local head still skips the blocks outside its window.

Block masks are classified conservatively from position ranges: a block is "full" (mask_mod
skipped) only when every pair in it is visible, and "partial" whenever some pair might be.
Flex is compiled once with dynamic shapes; lengths that are multiples of 128 get a second
variant without bounds checks (:func:`_divisible_options`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .semantics import check_window

try:
    from .triton import decode as decode_kernels
except ImportError:  # triton missing (CPU-only install): available() is False
    decode_kernels = None

_BLOCK = 128  # block-mask tile (queries x keys)
_NO_WINDOW = 1 << 62  # window=None as a number no position difference reaches
_SDPA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def available() -> bool:
    """True with a CUDA device and Triton (flex attention itself ships with torch >= 2.5)."""
    return decode_kernels is not None and torch.cuda.is_available()


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
) -> torch.Tensor:
    """See :func:`rtpurbo.ops.reference.attention`. Returns (B, Hq, Lq, D) in ``q.dtype``.

    Args:
        q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D); q_pos: (B, Lq); k_pos: (B, Lk) int64.
        key_mask: optional bool, broadcastable to (B, Hkv, Lq, Lk).
    """
    check_window(window, sinks)
    if not q.is_cuda:
        raise ValueError(f"the flex backend needs CUDA tensors; got q{tuple(q.shape)} on {q.device}")
    batch, n_q_heads, q_len, head_dim = q.shape
    n_kv_heads, n_keys = k.shape[1], k.shape[2]
    group = n_q_heads // n_kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    if q_len == 1:
        out, _ = decode_kernels.decode_attention(
            q, k, v, q_pos, k_pos, scale=scale, window=window, sinks=sinks, key_mask=key_mask
        )
        return out
    if key_mask is None and _is_plain_prefill(q_pos, k_pos):
        if window is None or window >= q_len:
            return _causal_sdpa(q, k, v, scale, group)
        block_mask = _local_block_mask(q_len, window, sinks, q.device)
    else:
        masks = None if key_mask is None else key_mask.expand(batch, n_kv_heads, q_len, n_keys)
        mask_mod = _position_mask_mod(q_pos, k_pos, window, sinks, masks, group)
        block_mask = _block_mask(q_pos, k_pos, window, sinks, mask_mod, exact=key_mask is None)
    options = _divisible_options(q_len, n_keys)
    # Flex reads K/V rows strided by the other heads (the model's K/V are head-interleaved views of
    # the projection) at about half the rate: 71 vs 37 ms per layer of local heads at 128K on an
    # H200 (session 4). A copy costs ~0.2 ms there.
    k, v = k.contiguous(), v.contiguous()
    return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=group > 1, kernel_options=options)


@functools.cache
def _compiled_flex():
    """``flex_attention`` compiled once; dynamic shapes so new lengths do not recompile."""
    return torch.compile(flex_attention, dynamic=True)


def _divisible_options(q_len: int, k_len: int) -> dict | None:
    """Kernel options telling flex that both lengths are multiples of 128.

    Under dynamic shapes inductor cannot prove divisibility, so flex checks bounds on every
    block and applies the mask_mod to full blocks too: measured on an H200 (torch 2.11) at
    half the rate. ``IS_DIVISIBLE`` is an internal option of the flex template (torch 2.5-2.13;
    version-sensitive: belongs in ``_compat`` next to the other torch branches).
    """
    return {"IS_DIVISIBLE": True} if q_len % 128 == 0 and k_len % 128 == 0 else None


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, group: int) -> torch.Tensor:
    with sdpa_kernel(_SDPA_ORDER, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=group > 1)


def _is_plain_prefill(q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    """True when every row has q_pos == k_pos == 0..L-1 (one host sync)."""
    if q_pos.shape != k_pos.shape:
        return False
    steps = torch.arange(k_pos.shape[-1], device=k_pos.device)
    return bool(((q_pos == steps) & (k_pos == steps)).all())


def _index_mask_mod(window: torch.Tensor, sinks: torch.Tensor):
    """mask_mod of a plain prefill: positions are the indices. window, sinks: 0-d int64 tensors."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < sinks))

    return mask_mod


def _position_mask_mod(q_pos, k_pos, window, sinks, key_mask, group):
    """mask_mod reading positions (B, Lq) / (B, Lk) and an optional key_mask (B, Hkv, Lq, Lk)."""
    window_t = torch.tensor(_NO_WINDOW if window is None else window, device=q_pos.device)
    sinks_t = torch.tensor(sinks, device=q_pos.device)

    def mask_mod(b, h, q_idx, kv_idx):
        qp, kp = q_pos[b, q_idx], k_pos[b, kv_idx]
        seen = (kp >= 0) & (kp <= qp) & ((qp - kp < window_t) | (kp < sinks_t))
        if key_mask is None:
            return seen
        return seen & key_mask[b, h // group, q_idx, kv_idx]

    return mask_mod


@functools.lru_cache(maxsize=4)
def _local_block_mask(length: int, window: int, sinks: int, device: torch.device) -> BlockMask:
    """Window + sinks block mask of a plain prefill of ``length`` tokens (cached: one per layer shape)."""
    steps = torch.arange(length, device=device)[None]
    mask_mod = _index_mask_mod(torch.tensor(window, device=device), torch.tensor(sinks, device=device))
    return _block_mask(steps, steps, window, sinks, mask_mod, exact=True)


def _block_ranges(pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per block of ``_BLOCK`` slots of pos (B, L): min and max non-negative position, any / all valid.

    Returns four (B, n_blocks) tensors; min is ``_NO_WINDOW`` and max -1 for a block with no valid slot.
    """
    batch, length = pos.shape
    n_blocks = -(-length // _BLOCK)
    tiles = F.pad(pos, (0, n_blocks * _BLOCK - length), value=-1).view(batch, n_blocks, _BLOCK)
    valid = tiles >= 0
    return tiles.masked_fill(~valid, _NO_WINDOW).amin(-1), tiles.amax(-1), valid.any(-1), valid.all(-1)


def _block_mask(q_pos, k_pos, window, sinks, mask_mod, *, exact: bool) -> BlockMask:
    """Block mask (B, 1, n_q_blocks, n_k_blocks) from position ranges.

    A block pair is partial when some visible pair may lie in it, full when all pairs are
    visible (only if ``exact``: no key_mask can remove keys). Args as in :func:`attention`.
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
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=_BLOCK, mask_mod=mask_mod,
        seq_lengths=(q_pos.shape[-1], k_pos.shape[-1]),
    )


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, nq, nk) bool -> counts (B, 1, nq) int32 and column indices (B, 1, nq, nk) int32, set ones first."""
    counts = blocks.sum(-1, dtype=torch.int32)
    order = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True)
    return counts[:, None], order.to(torch.int32)[:, None]
