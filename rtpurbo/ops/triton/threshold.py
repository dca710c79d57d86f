"""Sort-free top-p selection for one decode step: a radix search for the score threshold.

Per row (one batch row x retrieval KV head; BH rows) there are ``L`` fp32 indexer scores ``s``
(``-inf`` = not visible), from :func:`rtpurbo.ops.triton.decode.index_scores`. With ``m = max s``,
``Z = sum exp(s - m)`` and ``p = exp(s - m) / Z``, rank the visible keys by score, ties by slot
(lowest first). The top-p count ``n*`` is the smallest ``n`` whose ``n`` best keys hold mass
``>= top_p``; ``n_keep = min(max(n*, min_tokens), n_visible, max_tokens)``. The selection is the
``n_keep`` best keys: every key scoring above ``tau``, plus the ``need`` lowest slots scoring
exactly ``tau``, where ``tau`` is the score of the ``n_keep``-th best key.

``tau`` is found without sorting, by narrowing an interval of scores, one pass over the row per
level (each pass reads the ``L`` fp32 scores, ``4 L`` bytes, L2-resident at decode sizes):

* level 0, every visible key: ``N_LOGIT`` bins of the logit gap ``m - s``, as wide as the row's
  spread allows (``(m - min s) / N_LOGIT``, at most ``1 / MIN_INV_WIDTH`` logits; the last bin
  takes everything further down). Per-program histograms (a one-hot reduction, no per-key
  atomics: all keys take part here), then one atomic add per bin and program. Rows spread over
  64 logits or more get 2-logit bins; narrower rows get narrower bins, so the chosen bin stays
  small when the scores are nearly flat (e.g. untrained indexers on random weights): with
  2-logit bins every key of such a row fell into bin 0, and levels 1-3 then made per-key atomics
  over the whole row (2.3 of 6.7 ms of a 1M-token decode step on 8 layers, H200). 32 bins: the
  whole selection at 1M keys takes 93 / 93 / 94 us on peaked / trained-like / flat scores
  (score std 4 / 2.56 / 0.04 logits), against 87 / 104 / 105 us with 16 bins and 81 / 97 / 108
  with 8 (H200, ``benchmarks/decode_kernel_sweep.py --parts select``); more bins make the
  one-hot work of level 0 cost more than the narrower interval saves.
* levels 1-3, only the keys of the chosen interval: ``N_BINS`` bins of the scores'
  order-preserving 32-bit keys (:func:`_order_key`), ``span >> shift`` at a time, per-key
  atomics (the interval holds few keys unless the scores are nearly flat). A level whose interval
  is one key value has found ``tau`` and the later levels return at once.

Each histogram holds a count and a mass per bin. Masses are fixed point (``p * 2**52`` summed in
int64), so the sums do not depend on the order of the atomic adds: the selection is the same on
every run. The last program of a level to finish (a ticket counter) walks that level's bins from
the best: the first bin whose cumulative mass reaches ``top_p`` holds ``n*``, unless the token
clamps decide first, in which case the search continues for a fixed rank. Then
:func:`_tally_kernel` counts the keys above / at ``tau`` per chunk and :func:`_gather_kernel`
writes the selected slots in ascending slot order, at positions from those counts (no atomics:
the output is deterministic).

The level-0 bin of a score is ``floor((m - s) * inv_width)`` in fp32, ``inv_width`` computed by
every program from the same block statistics (so bitwise the same everywhere); it falls as the
key rises, so the chosen bin's keys form one key interval, found exactly by a search over keys
(:func:`_logit_bin_keys`) that evaluates the same expression.

What is exact: the ranking, ties, clamps and ``tau`` (integer keys and counts). What is rounded:
``p`` (fp32 ``exp``, ``Z`` from the per-block statistics) and its sums (fp32 within a program at
level 0, then exact integer sums of 2^-52 units). So ``n*`` equals the reference's wherever
``top_p`` is not within ~1e-6 (relative) of a prefix mass of the ranked keys; at such a
boundary it may differ by the keys whose prefix masses lie that close. The reference
(:func:`rtpurbo.ops.reference.select_topp`) ranks by probability, not score: the two rankings
differ only between distinct scores of equal fp32 probability (e.g. probabilities that
underflow to 0, more than ~100 logits below the max), which the reference orders by slot.
Keys scoring ``-inf`` count as not visible.

Everything stays on the device with shapes fixed by ``(BH, L)``: CUDA-graph capturable.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

N_LOGIT = 32  # level-0 bins
MIN_INV_WIDTH = 0.5  # level-0 bins are at most 2 logits wide
MAX_INV_WIDTH = 1e30  # and at least 1e-30 (keeps (m - s) * inv_width finite for tiny spreads)
N_BINS = 2048  # bins of levels 1-3: 11 bits of the 32-bit key per level
N_LEVELS = 4  # level 0 + 3 key levels: 32 bits
FIXED_ONE = 2.0**52  # mass 1.0 in fixed point

# fields of the per-row search state (BH, N_STATE) int64
MODE = tl.constexpr(0)  # BY_MASS, BY_RANK or RESOLVED
RANK = tl.constexpr(1)  # BY_RANK: the rank searched for (1-based)
ABOVE = tl.constexpr(2)  # keys better than the interval
MASS_ABOVE = tl.constexpr(3)  # their mass (fixed point)
KEY_HI = tl.constexpr(4)  # the interval of keys still searched, [KEY_LO, KEY_HI]
KEY_LO = tl.constexpr(5)
SHIFT = tl.constexpr(6)  # the next level's bin = (KEY_HI - key) >> SHIFT
TAU = tl.constexpr(7)  # RESOLVED: the threshold key
NEED = tl.constexpr(8)  # RESOLVED: keys to take at TAU (lowest slots first)
LOWER = tl.constexpr(9)  # min_tokens
UPPER = tl.constexpr(10)  # min(visible keys, max_tokens)
N_STATE = 11
BY_MASS = tl.constexpr(0)
BY_RANK = tl.constexpr(1)
RESOLVED = tl.constexpr(2)
NO_KEY = tl.constexpr(1 << 32)  # a TAU above every key: nothing selected


@triton.jit
def _order_key(s):
    """fp32 -> int64 in [0, 2^32), increasing with ``s`` (-0.0 and +0.0 share one key)."""
    bits = tl.where(s == 0.0, 0.0, s).to(tl.int32, bitcast=True).to(tl.int64)
    return tl.where(bits < 0, -1 - bits, bits + 2147483648)


@triton.jit
def _key_score(key):
    """Inverse of :func:`_order_key`."""
    bits = tl.where(key >= 2147483648, key - 2147483648, -1 - key)
    return bits.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _logit_bin(s, row_max, inv_width, N_LOGIT: tl.constexpr):
    """Level-0 bin of score ``s``: floor((m - s) * inv_width), the last bin for everything below."""
    return tl.minimum(tl.floor((row_max - s) * inv_width), N_LOGIT - 1).to(tl.int32)


@triton.jit
def _row_softmax(bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, row, n_blocks, NB_PAD: tl.constexpr,
                 N_LOGIT: tl.constexpr, MIN_INV_WIDTH: tl.constexpr, MAX_INV_WIDTH: tl.constexpr):
    """(m, Z, visible count, level-0 inv_width) of a row from the per-block statistics of ``index_scores``."""
    nb = tl.arange(0, NB_PAD)
    ok = nb < n_blocks
    bmax = tl.load(bmax_ptr + row * n_blocks + nb, mask=ok, other=float("-inf"))
    top = tl.max(bmax, axis=0)
    ref = tl.where(top == float("-inf"), 0.0, top)
    z = tl.sum(tl.load(bsum_ptr + row * n_blocks + nb, mask=ok, other=0.0) * tl.exp(bmax - ref), axis=0)
    n_visible = tl.sum(tl.load(bcount_ptr + row * n_blocks + nb, mask=ok, other=0), axis=0)
    bottom = tl.min(tl.load(bmin_ptr + row * n_blocks + nb, mask=ok, other=float("inf")), axis=0)
    spread = top - bottom  # -inf or nan where no key is visible
    inv_width = tl.where(spread > 0.0, N_LOGIT / tl.where(spread > 0.0, spread, 1.0), MIN_INV_WIDTH)
    inv_width = tl.minimum(tl.maximum(inv_width, MIN_INV_WIDTH), MAX_INV_WIDTH)
    return ref, tl.maximum(z, 1.1754943508222875e-38), n_visible.to(tl.int64), inv_width


@triton.jit
def _fixed_mass(s, row_max, z):
    return (tl.exp(s - row_max) / z * 4503599627370496.0).to(tl.int64)  # p * 2^52


@triton.jit
def _walk(counts, masses, above, mass_above, mode, rank, target, lower, upper, NB: tl.constexpr):
    """Pick the bin (of ``NB``, best first) that holds the key being searched for.

    counts, masses: (NB,) int64 of the level's bins; above / mass_above: keys better than bin 0.
    By mass: the first bin whose cumulative mass reaches ``target`` (or the last non-empty one),
    unless the clamps decide: fewer keys through it than ``lower`` -> rank ``min(lower, upper)``;
    at least ``upper`` keys before it -> rank ``upper``. By rank: the bin holding that rank.
    Returns (bin, mode, rank, keys before the bin, their mass, keys in the bin, its mass).
    """
    idx = tl.arange(0, NB)
    cum_count = above + tl.cumsum(counts, axis=0)
    cum_mass = mass_above + tl.cumsum(masses, axis=0)
    total = tl.max(cum_count, axis=0)
    reach = (cum_mass >= target) | (cum_count == total)
    by_mass = tl.min(tl.where(reach, idx, NB), axis=0)
    through = tl.sum(tl.where(idx == by_mass, cum_count, 0), axis=0)
    before = through - tl.sum(tl.where(idx == by_mass, counts, 0), axis=0)
    too_few = through < lower
    switch = (mode == BY_MASS) & (too_few | (before >= upper))
    rank = tl.where(switch, tl.where(too_few, tl.minimum(lower, upper), upper), rank)
    mode = tl.where(switch, BY_RANK, mode)
    by_rank = tl.min(tl.where(cum_count >= rank, idx, NB), axis=0)
    chosen = tl.where(mode == BY_RANK, by_rank, by_mass)
    hit = idx == chosen
    n_in = tl.sum(tl.where(hit, counts, 0), axis=0)
    mass_in = tl.sum(tl.where(hit, masses, 0), axis=0)
    n_before = tl.sum(tl.where(hit, cum_count, 0), axis=0) - n_in
    mass_before = tl.sum(tl.where(hit, cum_mass, 0), axis=0) - mass_in
    return chosen, mode, rank, n_before, mass_before, n_in, mass_in


@triton.jit
def _shift_for(span, N_BINS: tl.constexpr):
    """Smallest shift with ``span >> shift < N_BINS``."""
    shifts = tl.arange(0, 64).to(tl.int64)
    return tl.sum(((span >> shifts) >= N_BINS).to(tl.int64), axis=0)


@triton.jit
def _store_search(st, mode, rank, above, mass_above, key_hi, key_lo, tau, need, N_BINS: tl.constexpr):
    """Write the search state every level rewrites (LOWER / UPPER are written once, at level 0)."""
    tl.store(st + MODE, mode)
    tl.store(st + RANK, rank)
    tl.store(st + ABOVE, above)
    tl.store(st + MASS_ABOVE, mass_above)
    tl.store(st + KEY_HI, key_hi)
    tl.store(st + KEY_LO, key_lo)
    tl.store(st + SHIFT, _shift_for(key_hi - key_lo, N_BINS))
    tl.store(st + TAU, tau)
    tl.store(st + NEED, need)


@triton.jit
def _logit_bin_keys(row_max, inv_width, chosen, N_LOGIT: tl.constexpr, PROBES: tl.constexpr):
    """[key_lo, key_hi]: the keys (of scores in [-inf, m]) whose level-0 bin is ``chosen``.

    The bin falls as the key rises, so each end is a search over the key range, ``PROBES``-ary:
    each step probes evenly spaced keys of the interval still open and keeps the gap where the
    bin crosses ``chosen``; six steps close 2^32 keys.
    """
    i = tl.arange(0, PROBES).to(tl.int64)
    bottom = _order_key(float("-inf") + row_max * 0.0)
    top = _order_key(row_max)
    hi_lo, hi_hi = bottom, top  # key_hi in [hi_lo, hi_hi]; bin(hi_lo) >= chosen
    lo_lo, lo_hi = bottom, top  # key_lo in [lo_lo, lo_hi]; bin(lo_hi) <= chosen
    for _ in range(6):
        step = tl.maximum(tl.cdiv(hi_hi - hi_lo, PROBES - 1), 1)
        probe = tl.minimum(hi_lo + i * step, hi_hi)
        up = _logit_bin(_key_score(probe), row_max, inv_width, N_LOGIT) >= chosen  # a prefix of the probes
        best = tl.max(tl.where(up, probe, hi_lo), axis=0)
        hi_hi = tl.minimum(hi_hi, best + step - 1)
        hi_lo = best
        step = tl.maximum(tl.cdiv(lo_hi - lo_lo, PROBES - 1), 1)
        probe = tl.maximum(lo_hi - i * step, lo_lo)
        down = _logit_bin(_key_score(probe), row_max, inv_width, N_LOGIT) <= chosen  # a prefix of the probes
        best = tl.min(tl.where(down, probe, lo_hi), axis=0)
        lo_lo = tl.maximum(lo_lo, best - step + 1)
        lo_hi = best
    return lo_hi, hi_lo


@triton.jit
def _logit_level_kernel(
    scores_ptr, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, work_ptr, state_ptr, stats_ptr, n_keep_ptr,
    n_keys, n_blocks, chunk, n_chunks, target, min_tokens, max_tokens,
    NB_PAD: tl.constexpr, N_LOGIT: tl.constexpr, MIN_INV_WIDTH: tl.constexpr, MAX_INV_WIDTH: tl.constexpr,
    N_BINS: tl.constexpr, N_STATE: tl.constexpr, SUB: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    row_max, z, n_visible, inv_width = _row_softmax(bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, row, n_blocks, NB_PAD,
                                                    N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH)
    scores_row = scores_ptr + row.to(tl.int64) * n_keys
    bins = tl.arange(0, N_LOGIT)
    # (SUB, N_LOGIT) accumulators in registers, reduced once at the end (a reduction per step costs
    # a shared-memory round trip each)
    count_acc = tl.zeros([SUB, N_LOGIT], tl.int32)
    mass_acc = tl.zeros([SUB, N_LOGIT], tl.float32)
    lo = part * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    for start in range(lo, hi, SUB):
        offs = start + tl.arange(0, SUB)
        s = tl.load(scores_row + offs, mask=offs < hi, other=float("-inf"))
        b = _logit_bin(s, row_max, inv_width, N_LOGIT)
        hit = (s != float("-inf"))[:, None] & (b[:, None] == bins[None, :])
        count_acc += hit.to(tl.int32)
        mass_acc += tl.where(hit, (tl.exp(s - row_max) / z)[:, None], 0.0)
    level = work_ptr + row.to(tl.int64) * (4 * (2 * N_BINS + 1))  # level 0 of this row's workspace
    tl.atomic_add(level + bins, tl.sum(count_acc, axis=0).to(tl.int64), sem="relaxed")
    tl.atomic_add(level + N_BINS + bins, (tl.sum(mass_acc, axis=0) * 4503599627370496.0).to(tl.int64), sem="relaxed")
    tl.debug_barrier()
    ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem="acq_rel")
    if ticket == n_chunks - 1:  # the last program: walk the level
        tl.debug_barrier()
        counts = tl.load(level + bins, cache_modifier=".cg")
        masses = tl.load(level + N_BINS + bins, cache_modifier=".cg")
        lower = min_tokens + n_visible * 0
        upper = tl.minimum(n_visible, max_tokens)
        zero = n_visible * 0
        chosen, mode, rank, above, mass_above, _, _ = _walk(
            counts, masses, zero, zero, zero, zero, target, lower, upper, N_LOGIT,
        )
        key_lo, key_hi = _logit_bin_keys(row_max, inv_width, chosen, N_LOGIT, 256)
        empty = upper == 0
        st = state_ptr + row * N_STATE
        _store_search(st, tl.where(empty, RESOLVED, mode), rank, above, mass_above, key_hi, key_lo,
                      tl.where(empty, NO_KEY, 0), zero, N_BINS)
        tl.store(st + LOWER, lower)
        tl.store(st + UPPER, upper)
        tl.store(stats_ptr + row * 2, row_max)
        tl.store(stats_ptr + row * 2 + 1, z)
        tl.store(n_keep_ptr + row, zero)


@triton.jit
def _key_level_kernel(
    scores_ptr, work_ptr, state_ptr, stats_ptr, n_keep_ptr,
    n_keys, chunk, n_chunks, target, level_index,
    N_BINS: tl.constexpr, N_STATE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    part = tl.program_id(1)
    st = state_ptr + row * N_STATE
    mode = tl.load(st + MODE)
    if mode != RESOLVED:
        key_hi = tl.load(st + KEY_HI)
        key_lo = tl.load(st + KEY_LO)
        shift = tl.load(st + SHIFT)
        row_max = tl.load(stats_ptr + row * 2)
        z = tl.load(stats_ptr + row * 2 + 1)
        level = work_ptr + row.to(tl.int64) * (4 * (2 * N_BINS + 1)) + level_index * (2 * N_BINS + 1)
        scores_row = scores_ptr + row.to(tl.int64) * n_keys
        lo = part * chunk
        hi = tl.minimum(lo + chunk, n_keys)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            s = tl.load(scores_row + offs, mask=offs < hi, other=float("-inf"))
            key = _order_key(s)
            inside = (s != float("-inf")) & (key >= key_lo) & (key <= key_hi)
            b = (key_hi - key) >> shift
            tl.atomic_add(level + b, tl.full([BLOCK], 1, tl.int64), mask=inside, sem="relaxed")
            tl.atomic_add(level + N_BINS + b, _fixed_mass(s, row_max, z), mask=inside, sem="relaxed")
        tl.debug_barrier()
        ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem="acq_rel")
        if ticket == n_chunks - 1:  # the last program: walk the level
            tl.debug_barrier()
            bins = tl.arange(0, N_BINS)
            counts = tl.load(level + bins, cache_modifier=".cg")
            masses = tl.load(level + N_BINS + bins, cache_modifier=".cg")
            lower = tl.load(st + LOWER)
            upper = tl.load(st + UPPER)
            chosen, mode, rank, above, mass_above, n_in, mass_in = _walk(
                counts, masses, tl.load(st + ABOVE), tl.load(st + MASS_ABOVE), mode, tl.load(st + RANK), target, lower, upper, N_BINS,
            )
            new_hi = key_hi - (chosen << shift)
            new_lo = tl.maximum(key_lo, new_hi - (1 << shift) + 1)
            resolved = shift == 0
            # resolved: every key of the bin scores tau; by mass, n* ends after the first ties whose mass reaches target
            each = mass_in // tl.maximum(n_in, 1)
            ties = tl.where(each > 0, (target - mass_above + each - 1) // tl.maximum(each, 1), n_in)
            n_star = above + tl.minimum(tl.maximum(ties, 1), n_in)
            n_keep = tl.where(mode == BY_RANK, rank, tl.minimum(tl.maximum(n_star, lower), upper))
            _store_search(st, tl.where(resolved, RESOLVED, mode), rank, above, mass_above, new_hi, new_lo, new_hi,
                          n_keep - above, N_BINS)
            if resolved:
                tl.store(n_keep_ptr + row, n_keep)


@triton.jit
def _tally_kernel(scores_ptr, state_ptr, tally_ptr, n_keys, chunk, n_chunks, N_STATE: tl.constexpr, BLOCK: tl.constexpr):
    """Per chunk: keys scoring above tau, keys scoring tau."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    tau = tl.load(state_ptr + row * N_STATE + TAU)
    scores_row = scores_ptr + row.to(tl.int64) * n_keys
    lo = part * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    n_above = tl.zeros([BLOCK], tl.int32)
    n_tied = tl.zeros([BLOCK], tl.int32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = tl.load(scores_row + offs, mask=offs < hi, other=float("-inf"))
        key = _order_key(s)
        seen = s != float("-inf")
        n_above += (seen & (key > tau)).to(tl.int32)
        n_tied += (seen & (key == tau)).to(tl.int32)
    out = tally_ptr + (row * n_chunks + part) * 2
    tl.store(out, tl.sum(n_above, axis=0))
    tl.store(out + 1, tl.sum(n_tied, axis=0))


@triton.jit
def _gather_kernel(
    scores_ptr, state_ptr, tally_ptr, order_ptr, n_keys, chunk, n_chunks, capacity,
    N_STATE: tl.constexpr, NC_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """Selected slots of the chunk, ascending, at their final positions in ``order``."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    st = state_ptr + row * N_STATE
    tau = tl.load(st + TAU)
    need = tl.load(st + NEED).to(tl.int32)
    c = tl.arange(0, NC_PAD)
    earlier = tally_ptr + (row * n_chunks + c) * 2
    above_before = tl.sum(tl.load(earlier, mask=c < part, other=0), axis=0)
    ties_before = tl.sum(tl.load(earlier + 1, mask=c < part, other=0), axis=0)
    written = above_before + tl.minimum(ties_before, need)
    scores_row = scores_ptr + row.to(tl.int64) * n_keys
    order_row = order_ptr + row.to(tl.int64) * capacity
    lo = part * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = tl.load(scores_row + offs, mask=offs < hi, other=float("-inf"))
        key = _order_key(s)
        seen = s != float("-inf")
        tied = (seen & (key == tau)).to(tl.int32)
        tie_rank = ties_before + tl.cumsum(tied, axis=0) - tied
        take = ((seen & (key > tau)) | ((tied == 1) & (tie_rank < need))).to(tl.int32)
        slot = written + tl.cumsum(take, axis=0) - take
        tl.store(order_row + slot, offs.to(tl.int64), mask=take == 1)
        written += tl.sum(take, axis=0)
        ties_before += tl.sum(tied, axis=0)


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def _chunks(n_keys: int, rows: int, device: torch.device, block: int) -> tuple[int, int]:
    """(keys per program, programs per row): about four programs per SM over all rows."""
    per_row = max(1, triton.cdiv(4 * _num_sms(device), rows))
    chunk = triton.cdiv(triton.cdiv(max(n_keys, 1), per_row), block) * block
    return chunk, triton.cdiv(max(n_keys, 1), chunk)


def topp_threshold(
    scores: torch.Tensor, block_max: torch.Tensor, block_sum: torch.Tensor, block_count: torch.Tensor,
    block_min: torch.Tensor, *, top_p: float, min_tokens: int, max_tokens: int | None, block: int = 1024,
    work: torch.Tensor | None = None, n_logit: int = N_LOGIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-p selection of each row as a list of slots (see the module docstring).

    Args:
        scores: (BH, L) fp32 indexer scores, ``-inf`` where not visible.
        block_max, block_sum, block_count, block_min: (BH, n_blocks) per-block statistics of the
            scores (:class:`rtpurbo.ops.triton.decode.IndexScores`).
        block: keys per inner step (a power of two; small values only to test many programs).
        work: optional zeroed workspace (BH, N_LEVELS, 2 * N_BINS + 1) int64. Afterwards
            ``work[r, l, :N_BINS]`` holds level ``l``'s key counts per bin: the sum at level 1 is
            the number of keys the per-key levels histogrammed (0 when level 0 resolved the row).
        n_logit: level-0 bins (a power of two, 2..N_BINS; default :data:`N_LOGIT`). Only the work
            changes with it, not the selection (benchmarks compare settings with it).
    Returns:
        order (BH, C) int64, C = L or ``min(max_tokens, L)``: the first ``n_keep`` entries are the
        selected slots in ascending order, the rest unspecified; n_keep (BH,) int64.
    """
    if n_logit < 2 or n_logit > N_BINS or n_logit & (n_logit - 1):
        raise ValueError(f"n_logit must be a power of two in [2, {N_BINS}], got {n_logit}")
    rows, n_keys = scores.shape
    device = scores.device
    capacity = n_keys if max_tokens is None else max(0, min(max_tokens, n_keys))
    chunk, n_chunks = _chunks(n_keys, rows, device, block)
    target = 1 << 62 if top_p >= 1.0 else round(top_p * FIXED_ONE)
    if work is None:
        work = torch.zeros(rows, N_LEVELS, 2 * N_BINS + 1, dtype=torch.int64, device=device)
    elif work.shape != (rows, N_LEVELS, 2 * N_BINS + 1) or work.dtype != torch.int64:
        raise ValueError(f"work must be zeroed int64 of shape {(rows, N_LEVELS, 2 * N_BINS + 1)}, "
                         f"got {work.dtype} {tuple(work.shape)}")
    state = torch.empty(rows, N_STATE, dtype=torch.int64, device=device)
    stats = torch.empty(rows, 2, dtype=torch.float32, device=device)
    n_keep = torch.empty(rows, dtype=torch.int64, device=device)
    tally = torch.empty(rows, n_chunks, 2, dtype=torch.int32, device=device)
    order = torch.empty(rows, capacity, dtype=torch.int64, device=device)
    grid = (rows, n_chunks)
    n_blocks = block_max.shape[1]
    _logit_level_kernel[grid](
        scores, block_max, block_sum, block_count, block_min, work, state, stats, n_keep,
        n_keys, n_blocks, chunk, n_chunks, target, min_tokens, n_keys if max_tokens is None else max_tokens,
        NB_PAD=max(16, triton.next_power_of_2(n_blocks)), N_LOGIT=n_logit, MIN_INV_WIDTH=MIN_INV_WIDTH,
        MAX_INV_WIDTH=MAX_INV_WIDTH, N_BINS=N_BINS,
        N_STATE=N_STATE, SUB=min(256, block), num_warps=8,
    )
    for level_index in range(1, N_LEVELS):
        _key_level_kernel[grid](
            scores, work, state, stats, n_keep, n_keys, chunk, n_chunks, target, level_index,
            N_BINS=N_BINS, N_STATE=N_STATE, BLOCK=block, num_warps=8,
        )
    _tally_kernel[grid](scores, state, tally, n_keys, chunk, n_chunks, N_STATE=N_STATE, BLOCK=block, num_warps=4)
    _gather_kernel[grid](
        scores, state, tally, order, n_keys, chunk, n_chunks, capacity,
        N_STATE=N_STATE, NC_PAD=max(16, triton.next_power_of_2(n_chunks)), BLOCK=block, num_warps=4,
    )
    return order, n_keep
