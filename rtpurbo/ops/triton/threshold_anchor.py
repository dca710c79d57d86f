"""Level 0 of the threshold search from bins placed before the scores exist ("anchored" level 0).

Level 0 of the search (:mod:`rtpurbo.ops.triton.threshold`) bins every key by its logit gap below the row's maximum,
so it needs the maximum and the spread first: a pass of its own over the ``L`` scores, in a launch of its own, after
the index-score kernel. Across decode steps the indexer scores of a row move little: on the shipped adapter the
row's maximum moves by less than 3 bin widths in 90 % of steps, and bins placed from the previous step's maximum and
width leave level 1 the same keys (median ratio 1.00,
``benchmarks/results/smollm2-135m_cpu_2026-12-05_selection-drift.md``). So a row may carry an **anchor** from one
step to the next, ``(top, inv_width)`` in a small fp32 tensor (B * Hkv, 2):

* the index-score kernel bins each score it computes at ``floor((top - s) * inv_width)`` (clamped to the
  ``N_LOGIT`` bins: scores above ``top`` fall in bin 0, far ones in the last) and stores per key block the bins'
  counts and masses ``sum exp(s - block max)`` (:func:`block_bins`);
* level 0 decides per row whether the anchor fits this step's scores (:func:`anchor_fits`: the maximum between
  ``N_LOGIT / 2`` widths below ``top`` and :data:`HEADROOM` widths above it, the width within a factor 2 of the one
  the row's spread asks for). Where it fits, each program adds up its blocks' bins (:func:`anchored_histogram`)
  instead of reading its keys; elsewhere it bins the keys itself as without an anchor;
* the tally (a later launch of the same step) writes the next step's anchor from this step's statistics
  (:func:`store_anchor`): ``top`` :data:`HEADROOM` widths above the maximum, the width from the spread.

The anchor changes where level 0's bins lie, so the work of the key levels, never the selection: the key levels
test every key's bin with the same expression on the same ``top`` and ``inv_width`` (stored in the row's statistics),
and any anchor, garbage included, selects the same keys. A NaN or infinite anchor (a fresh tensor:
:func:`new_anchor`) never fits.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

HEADROOM = tl.constexpr(4)  # bins above the maximum the next anchor leaves, and the rise of the maximum it allows
ANCHOR_FIELDS = 2  # an anchor row: (top, inv_width)


class AnchorBins(NamedTuple):
    """Anchored level-0 bins of every key block, from :func:`rtpurbo.ops.triton.decode.index_scores`.

    counts: (BH, n_blocks, N_LOGIT) int32; masses: (BH, n_blocks, N_LOGIT) fp32, ``sum exp(s - block max)``;
    block: keys per block. Rows whose anchor is not finite hold garbage (level 0 never reads them).
    """

    counts: torch.Tensor
    masses: torch.Tensor
    block: int


def new_anchor(rows: int, device: torch.device | str) -> torch.Tensor:
    """A (rows, 2) fp32 anchor that fits no row: the first search that uses it bins without one and writes it."""
    return torch.full((rows, ANCHOR_FIELDS), float("nan"), dtype=torch.float32, device=device)


def check_anchor(anchor: torch.Tensor, rows: int, device: torch.device) -> None:
    if anchor.shape != (rows, ANCHOR_FIELDS) or anchor.dtype != torch.float32 or not anchor.is_contiguous() \
            or anchor.device != device:
        raise ValueError(f"anchor must be a contiguous fp32 tensor of shape {(rows, ANCHOR_FIELDS)} on {device}, got "
                         f"{anchor.dtype} {tuple(anchor.shape)} on {anchor.device}")


@triton.jit
def logit_bin(s, top, inv_width, N_LOGIT: tl.constexpr):
    """Level-0 bin of score ``s``: ``floor((top - s) * inv_width)``, clamped to ``[0, N_LOGIT - 1]`` (scores above
    ``top`` in bin 0, everything far below in the last bin). Without an anchor ``top`` is the row's maximum."""
    return tl.maximum(tl.minimum(tl.floor((top - s) * inv_width), N_LOGIT - 1), 0.0).to(tl.int32)


@triton.jit
def _usable(top, inv_width):
    """A finite anchor with a positive finite inverse width (NaN fails every comparison)."""
    return (tl.abs(top) < float("inf")) & (inv_width > 0.0) & (inv_width < float("inf"))


@triton.jit
def block_bins(s, seen, block_max, anchor_row, counts_out, masses_out, N_LOGIT: tl.constexpr):
    """In the index-score kernel, one key block: its keys' counts and masses (``exp(s - block_max)``) per anchored
    bin, stored at ``counts_out`` / ``masses_out`` (nothing stored where the anchor is not usable)."""
    top = tl.load(anchor_row)
    inv_width = tl.load(anchor_row + 1)
    if _usable(top, inv_width):
        b = logit_bin(s, top, inv_width, N_LOGIT)
        bins = tl.arange(0, N_LOGIT)
        tl.store(counts_out + bins, tl.histogram(b, N_LOGIT, mask=seen))
        p = tl.where(seen, tl.exp(s - block_max), 0.0)
        tl.store(masses_out + bins, tl.sum(tl.where(b[:, None] == bins[None, :], p[:, None], 0.0), axis=0))


@triton.jit
def anchor_fits(anchor_row, row_max, n_visible, inv_spread, N_LOGIT: tl.constexpr):
    """(fits, top, inv_width) of a row's anchor against this step's maximum and spread-sized inverse width."""
    top = tl.load(anchor_row)
    inv_width = tl.load(anchor_row + 1)
    width = 1.0 / inv_width
    fits = (_usable(top, inv_width) & (n_visible > 0) & (row_max <= top + HEADROOM * width)
            & (row_max >= top - (N_LOGIT // 2) * width) & (inv_width <= 2.0 * inv_spread)
            & (2.0 * inv_width >= inv_spread))
    return fits, top, inv_width


@triton.jit
def anchored_histogram(counts_row, masses_row, bmax_row, level, row_max, z, lo, hi, index_block,
                       N_LOGIT: tl.constexpr, N_BINS: tl.constexpr):
    """Level 0 of keys ``[lo, hi)`` (whole key blocks of ``index_block`` keys) from their blocks' anchored bins: counts
    and masses ``p = exp(s - m) / Z`` added to ``level`` as the pass over the keys adds them."""
    bins = tl.arange(0, N_LOGIT)
    count_acc = tl.zeros([N_LOGIT], tl.int32)
    mass_acc = tl.zeros([N_LOGIT], tl.float32)
    for blk in range(lo // index_block, tl.cdiv(hi, index_block)):
        block_max = tl.load(bmax_row + blk)
        scale = tl.where(block_max == float("-inf"), 0.0, tl.exp(block_max - row_max) / z)
        count_acc += tl.load(counts_row + blk * N_LOGIT + bins)
        mass_acc += tl.load(masses_row + blk * N_LOGIT + bins) * scale
    tl.atomic_add(level + bins, count_acc.to(tl.int64), sem="relaxed")
    tl.atomic_add(level + N_BINS + bins, (mass_acc * 4503599627370496.0).to(tl.int64), sem="relaxed")


@triton.jit
def store_anchor(anchor_row, row_max, inv_spread):
    """The next step's anchor: ``top`` :data:`HEADROOM` widths above this step's maximum, this step's width."""
    tl.store(anchor_row, row_max + HEADROOM / inv_spread)
    tl.store(anchor_row + 1, inv_spread)


def check_bins(bins: AnchorBins, rows: int, n_blocks: int, n_logit: int, block: int) -> None:
    """Refuse anchored bins that do not match the search's rows, blocks and level-0 bins."""
    shape = (rows, n_blocks, n_logit)
    if bins.counts.shape != shape or bins.masses.shape != shape or bins.counts.dtype != torch.int32 \
            or bins.masses.dtype != torch.float32:
        raise ValueError(f"anchored bins must be int32 counts and fp32 masses of shape {shape}, got "
                         f"{bins.counts.dtype} {tuple(bins.counts.shape)}, {bins.masses.dtype} "
                         f"{tuple(bins.masses.shape)}")
    if bins.block < 1 or block % bins.block:
        raise ValueError(f"the search's block ({block} keys) must be a multiple of the index-score block "
                         f"({bins.block}) to read anchored bins")

