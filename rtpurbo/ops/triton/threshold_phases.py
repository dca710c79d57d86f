"""The phases of the top-p threshold search, as Triton device functions, and the search's constants.

:mod:`rtpurbo.ops.triton.threshold` explains the search and runs these phases in its kernel:

* :func:`logit_phase`: level 0, histograms of the logit gap ``m - s`` in spread-sized bins;
* :func:`key_phase`: levels 1-3, histograms of the order-preserving keys of the interval left;
* :func:`tally_phase`: keys above / at the threshold per chunk;
* :func:`gather_phase`: the selected slots, ascending, at their final positions.

Each level's last program walks the level's bins (:func:`_walk`) and writes the per-row search
state (fields :data:`MODE` .. :data:`UPPER`). The relay schedule (:func:`relay_phase`) runs the same passes without
that last program: every program of the next launch walks the bins (:func:`relay_walk`).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .dependent_launch import let_next_launch

N_LOGIT = 32  # level-0 bins
MIN_INV_WIDTH = 0.5  # level-0 bins are at most 2 logits wide
MAX_INV_WIDTH = 1e30  # and at least 1e-30 (keeps (m - s) * inv_width finite for tiny spreads)
N_BINS = 2048  # bins of levels 1-3: 11 bits of the 32-bit key per level
BIN_BITS = tl.constexpr(11)  # log2(N_BINS)
N_LEVELS = 4  # level 0 + 3 key levels: 32 bits
# keys listed per key-level bin beside its count and mass (:func:`_key_histogram`): a walk whose chosen bin holds at
# most this many keys sorts them and resolves tau there (:func:`_resolve_listed`), and the later levels return at once
BIN_LIST = 64
_N_LEVELS = tl.constexpr(N_LEVELS)  # for the kernels: the tally's phase
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
LOGIT_BIN = tl.constexpr(11)  # level 0's chosen bin: the key levels take only the keys of the interval in it
# RESOLVED, written only where the search runs with ``CUT_SLOT`` (:func:`key_phase`): the highest slot of a key scoring
# ``tau`` that is selected. The selection is then every key scoring above ``tau`` and those scoring ``tau`` at slots up
# to it (-1: none), a test each key can make alone (``rtpurbo.ops.triton.cut_attend``), with no counts per chunk.
CUT = tl.constexpr(12)
N_STATE = 13
_N_STATE = tl.constexpr(N_STATE)  # for the kernels
# per-row states (BH, N_SLOTS, N_STATE): the phased and fused schedules use slot 0; relay: slot 0 holds LOWER / UPPER,
# slot 1 + l the state after walking level l (slot 4: the final one)
N_SLOTS = tl.constexpr(5)
N_STATS = tl.constexpr(3)  # per-row softmax statistics (BH, N_STATS) fp32: m, Z, level 0's inverse bin width
BY_MASS = tl.constexpr(0)
BY_RANK = tl.constexpr(1)
RESOLVED = tl.constexpr(2)
NO_KEY = tl.constexpr(1 << 32)  # a TAU above every key: nothing selected
ALL_TIES = tl.constexpr(2147483647)  # a CUT at or above every slot (slots are below 2^31): every tie is selected
_UNKNOWN_CUT = tl.constexpr(-2)  # a walk resolved tau without the slots of its ties: key_phase scans for the cut


@triton.jit
def _order_key(s):
    """fp32 -> int64 in [0, 2^32), increasing with ``s`` (-0.0 and +0.0 share one key)."""
    bits = tl.where(s == 0.0, 0.0, s).to(tl.int32, bitcast=True).to(tl.int64)
    return tl.where(bits < 0, -1 - bits, bits + 2147483648)


@triton.jit
def _order_key32(s):
    """:func:`_order_key` as uint32 (the same values, computed in 32-bit integers)."""
    bits = tl.where(s == 0.0, 0.0, s).to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) | -2147483648)).to(tl.uint32, bitcast=True)


@triton.jit
def _key_score(key):
    """The fp32 score of an order key (inverse of :func:`_order_key`; +0.0 for the key both zeros share), +inf for
    :data:`NO_KEY`. For every finite score ``s``, ``s > _key_score(tau)`` and ``s == _key_score(tau)`` say what
    ``_order_key(s) > tau`` and ``_order_key(s) == tau`` say (the map is monotone, and fp32 compares -0.0 and +0.0
    equal, as their shared key does); a hidden key (-inf) is neither. The tally and the gather compare in fp32 this
    way: fewer instructions per key than int64 keys."""
    bits = tl.where(key >= 2147483648, key - 2147483648, -1 - key)
    # every key's bits fit an int32 but NO_KEY's (2^31): clamped here, replaced below
    score = tl.minimum(bits, 2147483647).to(tl.int32).to(tl.float32, bitcast=True)
    return tl.where(key >= NO_KEY, float("inf"), score)


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

    One program runs this at the end of a level, so its cost is the latency of its instructions (about a thousand per
    warp over 2,048 bins, measured under ncu on an H100) and block-wide steps: one scan and two reductions (an int32
    minimum, an int64 sum), each over several values per bin at once (``tl.join``: one pass, one barrier). The bins
    holding both ranks the clamps may switch to are found beside the mass's bin, before the clamps are known.
    """
    idx = tl.arange(0, NB)
    run_count, run_mass = tl.split(tl.cumsum(tl.join(counts, masses), axis=0))
    cum_count = above + run_count
    cum_mass = mass_above + run_mass
    low_rank = tl.minimum(lower, upper)
    # minima: the first bin reaching the target mass, minus the last non-empty bin, and the first bins reaching
    # ``lower`` and ``upper`` keys. The ranks a search by rank looks for are min(lower, upper) and upper (the clamps are
    # the only way into BY_RANK), so their bins are at_lower or at_upper.
    firsts = tl.min(tl.join(tl.join(tl.where(cum_mass >= target, idx, NB), -tl.where(counts > 0, idx, 0)),
                            tl.join(tl.where(cum_count >= lower, idx, NB), tl.where(cum_count >= upper, idx, NB))),
                    axis=0)
    mass_and_full, ranks = tl.split(firsts)
    first_mass, minus_last_full = tl.split(mass_and_full)
    at_lower, at_upper = tl.split(ranks)
    at_low = tl.where(lower <= upper, at_lower, at_upper)  # the bin holding rank low_rank
    by_mass = tl.minimum(first_mass, -minus_last_full)  # past the last non-empty bin the cumulative count stays put
    # the clamps from first bins, not from the counts at by_mass: the cumulative count never falls, so
    # cum_count[by_mass] < lower <=> by_mass < at_lower, and the keys before by_mass (cum_count[by_mass - 1], or above
    # for bin 0) reach upper <=> by_mass > at_upper or above >= upper
    too_few = by_mass < at_lower
    switch = (mode == BY_MASS) & (too_few | (by_mass > at_upper) | (above >= upper))
    rank = tl.where(switch, tl.where(too_few, low_rank, upper), rank)
    by_rank = tl.where(rank == low_rank, at_low, at_upper)
    mode = tl.where(switch, BY_RANK, mode)
    chosen = tl.where(mode == BY_RANK, by_rank, by_mass)
    hit = idx == chosen
    in_bin, through_bin = tl.split(tl.sum(tl.where(hit[:, None, None], tl.join(tl.join(counts, masses),
                                                                                 tl.join(cum_count, cum_mass)), 0),
                                          axis=0))
    n_in, mass_in = tl.split(in_bin)
    n_through, mass_through = tl.split(through_bin)
    return chosen, mode, rank, n_through - n_in, mass_through - mass_in, n_in, mass_in


@triton.jit
def _shift_for(span):
    """Smallest shift with ``span >> shift < N_BINS``: ``bit_length(span) - BIN_BITS``, at least 0, the bit length
    read from the exponent of ``span`` as fp64 (exact below 2^53; spans are below 2^33)."""
    exponent = (span.to(tl.float64).to(tl.int64, bitcast=True) >> 52) - 1023  # floor(log2(span)) for span >= 1
    return tl.where(span > 0, tl.maximum(exponent + 1 - BIN_BITS, 0), 0)


@triton.jit
def _store_search(st, mode, rank, above, mass_above, key_hi, key_lo, tau, need):
    """Write the search state every level rewrites (LOWER / UPPER are written once, at level 0)."""
    tl.store(st + MODE, mode)
    tl.store(st + RANK, rank)
    tl.store(st + ABOVE, above)
    tl.store(st + MASS_ABOVE, mass_above)
    tl.store(st + KEY_HI, key_hi)
    tl.store(st + KEY_LO, key_lo)
    tl.store(st + SHIFT, _shift_for(key_hi - key_lo))
    tl.store(st + TAU, tau)
    tl.store(st + NEED, need)


@triton.jit
def _logit_bin_bounds(row_max, inv_width, chosen, N_LOGIT: tl.constexpr):
    """[key_lo, key_hi]: an interval of order keys that holds every key (of scores in [-inf, m]) whose level-0 bin
    is ``chosen``, with at most a few keys of the bins beside it at its ends.

    Bin ``c`` holds the scores ``c`` to ``c + 1`` widths below ``m``. :func:`_logit_bin` rounds the gap ``m - s``
    and its product with ``inv_width`` (relative errors of 2^-24 each), so its edges can sit up to about 2^-22 of
    the gap away from the exact ones: each end moves out by 1e-6 of the gap (plus 1e-30), then by two keys for the
    rounding of the end itself. The key levels test the bin of every key of the interval (:func:`key_phase`), so
    the keys of the bins beside it take no part. Where an end lies near 0 the interval spans many tiny scores, as
    any bin reaching 0 does.
    """
    width = 1.0 / inv_width
    top_gap = chosen.to(tl.float32) * width
    low_gap = top_gap + width
    slack = low_gap * 1e-6 + 1e-30
    top = _order_key(row_max)
    bottom = _order_key(float("-inf") + row_max * 0.0)
    key_hi = tl.where(chosen == 0, top, tl.minimum(_order_key(row_max - top_gap + slack) + 2, top))
    key_lo = tl.where(chosen >= N_LOGIT - 1, bottom, tl.maximum(_order_key(row_max - low_gap - slack) - 2, bottom))
    return key_lo, key_hi


@triton.jit
def _scores_at(scores_row, start, hi, N: tl.constexpr):
    """(N,) scores from ``start`` (-inf from ``hi`` on). Each phase loads the next step's scores before it works on
    the current ones, so the load's L2 latency overlaps that work instead of adding to every step."""
    offs = start + tl.arange(0, N)
    return tl.load(scores_row + offs, mask=offs < hi, other=float("-inf"))


@triton.jit
def _cg(ptr):
    """A load from L2 (``.cg``): values another program of this launch wrote after our first read of the line."""
    return tl.load(ptr, cache_modifier=".cg")


@triton.jit
def wait_for(flag, value, stalls, SPIN_LIMIT: tl.constexpr):
    """Spin until ``*flag >= value`` (acquire), at most ``SPIN_LIMIT`` polls; a poll limit reached
    counts one stall in ``*stalls`` instead of hanging the GPU (see :func:`topp_threshold`)."""
    seen = tl.atomic_add(flag, 0, sem="acquire")
    polls = 0
    while (seen < value) & (polls < SPIN_LIMIT):
        seen = tl.atomic_add(flag, 0, sem="acquire")
        polls += 1
    if seen < value:
        tl.atomic_add(stalls, 1, sem="relaxed")
    tl.debug_barrier()


@triton.jit
def _logit_histogram(
    scores_row, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, level, row, part, n_keys, n_blocks, chunk,
    NB_PAD: tl.constexpr, N_LOGIT: tl.constexpr, MIN_INV_WIDTH: tl.constexpr, MAX_INV_WIDTH: tl.constexpr,
    N_BINS: tl.constexpr, SUB: tl.constexpr,
):
    """Level 0's pass over chunk ``part``: its keys' counts and masses per logit bin, added to ``level``.
    Returns the row's (m, Z, visible keys, inv_width)."""
    lo = part * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    s_next = _scores_at(scores_row, lo, hi, SUB)  # the first step's scores load beside the row's statistics
    row_max, z, n_visible, inv_width = _row_softmax(bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, row, n_blocks, NB_PAD,
                                                    N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH)
    bins = tl.arange(0, N_LOGIT)
    # counts: tl.histogram; masses: a (SUB, N_LOGIT) one-hot accumulator in registers, reduced once at the end (a
    # reduction per step costs a shared-memory round trip each). A hidden key (-inf) has p = 0: it adds nothing.
    count_acc = tl.zeros([N_LOGIT], tl.int32)
    mass_acc = tl.zeros([SUB, N_LOGIT], tl.float32)
    for start in range(lo, hi, SUB):
        s = s_next
        s_next = _scores_at(scores_row, start + SUB, hi, SUB)
        b = _logit_bin(s, row_max, inv_width, N_LOGIT)
        count_acc += tl.histogram(b, N_LOGIT, mask=s != float("-inf"))
        mass_acc += tl.where(b[:, None] == bins[None, :], (tl.exp(s - row_max) / z)[:, None], 0.0)
    tl.atomic_add(level + bins, count_acc.to(tl.int64), sem="relaxed")
    tl.atomic_add(level + N_BINS + bins, (tl.sum(mass_acc, axis=0) * 4503599627370496.0).to(tl.int64), sem="relaxed")
    return row_max, z, n_visible, inv_width


@triton.jit
def _level0_state(level, row_max, inv_width, lower, upper, target, N_LOGIT: tl.constexpr, N_BINS: tl.constexpr):
    """Walk level 0's bins at ``level``: the search state after it, (mode, rank, above, mass above, key_hi, key_lo,
    tau, need, the chosen logit bin); a row with no key to select (``upper == 0``) is resolved, selecting nothing."""
    bins = tl.arange(0, N_LOGIT)
    counts = _cg(level + bins)
    masses = _cg(level + N_BINS + bins)
    zero = upper * 0
    chosen, mode, rank, above, mass_above, _, _ = _walk(counts, masses, zero, zero, zero, zero, target, lower, upper,
                                                        N_LOGIT)
    key_lo, key_hi = _logit_bin_bounds(row_max, inv_width, chosen, N_LOGIT)
    empty = upper == 0
    return (tl.where(empty, RESOLVED, mode), rank, above, mass_above, key_hi, key_lo, tl.where(empty, NO_KEY, 0),
            zero, chosen.to(tl.int64))


@triton.jit
def _store_row(st, stats_ptr, row, row_max, z, inv_width, lower, upper):
    """What every later level reads of the row: its softmax statistics and the clamps of ``n_keep``."""
    tl.store(st + LOWER, lower)
    tl.store(st + UPPER, upper)
    tl.store(stats_ptr + row * N_STATS, row_max)
    tl.store(stats_ptr + row * N_STATS + 1, z)
    tl.store(stats_ptr + row * N_STATS + 2, inv_width)


@triton.jit
def _key_histogram(scores_row, level, lists, stats, key_hi, key_lo, shift, logit_bin, part, n_keys, chunk,
                   N_LOGIT: tl.constexpr, N_BINS: tl.constexpr, BLOCK: tl.constexpr, BIN_LIST: tl.constexpr):
    """A key level's pass over chunk ``part``: per-key atomics of the keys in ``[key_lo, key_hi]`` and level 0's
    chosen bin into the ``N_BINS`` bins at ``level`` (``stats``: the row's m, Z, inv_width).

    ``BIN_LIST > 0``: each key also writes its entry (:func:`_list_entry`) into its bin's list at ``lists``
    (``N_BINS`` lists of ``BIN_LIST``), at the count its atomic add returns; the first ``BIN_LIST`` keys of a bin are
    listed (which ones depends on the order of the adds, but a walk reads a list only when it holds every key of its
    bin)."""
    lo = part * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    s_next = _scores_at(scores_row, lo, hi, BLOCK)  # the first step's scores load beside the row's statistics
    row_max = _cg(stats)
    z = _cg(stats + 1)
    inv_width = _cg(stats + 2)
    # per key in fp32 and 32-bit integers, not int64: the interval's ends as scores (s >= _key_score(key_lo) says
    # what _order_key(s) >= key_lo says), the bin from the 32-bit order key below the interval's top
    lo_score = _key_score(key_lo)
    hi_score = _key_score(key_hi)
    top = key_hi.to(tl.uint32)
    shift32 = shift.to(tl.uint32)
    for start in range(lo, hi, BLOCK):
        s = s_next
        s_next = _scores_at(scores_row, start + BLOCK, hi, BLOCK)
        inside = ((s != float("-inf")) & (s >= lo_score) & (s <= hi_score)
                  & (_logit_bin(s, row_max, inv_width, N_LOGIT) == logit_bin))
        key32 = _order_key32(s)
        b = (top - key32) >> shift32  # outside the interval: any value, and no atomic
        tl.atomic_add(level + N_BINS + b, _fixed_mass(s, row_max, z), mask=inside, sem="relaxed")
        if BIN_LIST > 0:  # the count's add returns the key's place in the list: issued last, as the store waits on it
            earlier = tl.atomic_add(level + b, tl.full([BLOCK], 1, tl.int64), mask=inside, sem="relaxed")
            tl.store(lists + b.to(tl.int64) * BIN_LIST + earlier, _list_entry(key32, start + tl.arange(0, BLOCK)),
                     mask=inside & (earlier < BIN_LIST))
        else:
            tl.atomic_add(level + b, tl.full([BLOCK], 1, tl.int64), mask=inside, sem="relaxed")


@triton.jit
def _list_entry(key32, slot):
    """A listed key as one int64: its order key above its slot, ``key << 31 | (2^31 - 1 - slot)``. Entries order keys
    as the search ranks them: a higher key first, equal keys by the lowest slot (slots are below 2^31)."""
    return (key32.to(tl.int64) << 31) | (2147483647 - slot.to(tl.int64))


@triton.jit
def _resolve_listed(lists, chosen, n_in, mode, rank, above, mass_above, row_max, z, lower, upper, target,
                    BIN_LIST: tl.constexpr):
    """Resolve ``tau`` inside the chosen bin from its list, which holds every one of its ``n_in`` keys (1 to
    ``BIN_LIST``): sort the entries (best first), sum their masses down the ranks (the same fixed-point masses the
    bins summed), and find ``n_keep`` as the walk of a level of one key per bin would. Returns (keys scoring above
    ``tau``, ``tau``, keys to take at ``tau``).

    The last of the ``n_keep - above`` entries taken from the bin scores ``tau`` and, ties ranked by the lowest slot,
    holds the highest slot taken at ``tau``: returned too, the cut (:data:`CUT`).

    One program runs this after its walk. A sort and a scan of ``BIN_LIST`` values: 384 SASS instructions and 12
    barriers on sm_90 (triton 3.9) for 64 entries, where ranking them by a ``BIN_LIST`` x ``BIN_LIST`` comparison
    took 888 and 18."""
    j = tl.arange(0, BIN_LIST)
    listed = j < n_in
    entry = tl.load(lists + chosen.to(tl.int64) * BIN_LIST + j, mask=listed, other=-1, cache_modifier=".cg")
    ranked = tl.sort(entry, descending=True)  # the bin's entries best first, then -1 (unlisted)
    key = ranked >> 31
    through = tl.cumsum(tl.where(listed, _fixed_mass(_key_score(key), row_max, z), 0), axis=0)
    # by mass: n* ends at the first key whose cumulative mass reaches the target (the whole bin if none does)
    in_bin = tl.min(tl.where(listed & (mass_above + through >= target), j + 1, n_in), axis=0)
    n_keep = tl.where(mode == BY_RANK, rank, tl.minimum(tl.maximum(above + in_bin, lower), upper))
    last = j + 1 == n_keep - above
    tau = tl.max(tl.where(last, key, -1), axis=0)
    cut = tl.max(tl.where(last, 2147483647 - (ranked & 2147483647), -1), axis=0)
    higher = tl.sum((listed & (key > tau)).to(tl.int32), axis=0)
    return above + higher, tau, n_keep - above - higher, cut


@triton.jit
def _key_level_state(level, lists, stats, mode, rank, above, mass_above, key_hi, key_lo, shift, lower, upper, target,
                     N_BINS: tl.constexpr, BIN_LIST: tl.constexpr):
    """Walk a key level's bins at ``level`` from the state before it (still searching): the state after it,
    (mode, rank, above, mass above, key_hi, key_lo, tau, need, cut). Resolved (``shift == 0``): every key of the chosen
    bin scores ``tau``; by mass, ``n*`` ends after the first ties whose mass reaches the target. Resolved too where
    the chosen bin's list (``lists``, ``BIN_LIST > 0``) holds all its keys: :func:`_resolve_listed` (``stats``: the
    row's m and Z). ``cut`` (:data:`CUT`, where resolved): from the list, :data:`ALL_TIES` where every tie is taken,
    else ``_UNKNOWN_CUT`` (more ties than a list holds, not all taken)."""
    bins = tl.arange(0, N_BINS)
    counts = _cg(level + bins)
    masses = _cg(level + N_BINS + bins)
    chosen, mode, rank, above, mass_above, n_in, mass_in = _walk(counts, masses, above, mass_above, mode, rank, target,
                                                                 lower, upper, N_BINS)
    new_hi = key_hi - (chosen << shift)
    new_lo = tl.maximum(key_lo, new_hi - (1 << shift) + 1)
    each = mass_in // tl.maximum(n_in, 1)
    ties = tl.where(each > 0, (target - mass_above + each - 1) // tl.maximum(each, 1), n_in)
    n_star = above + tl.minimum(tl.maximum(ties, 1), n_in)
    n_keep = tl.where(mode == BY_RANK, rank, tl.minimum(tl.maximum(n_star, lower), upper))
    resolved = shift == 0
    tau = new_hi
    need = n_keep - above
    cut = tl.where(need >= n_in, need * 0 + ALL_TIES, need * 0 + _UNKNOWN_CUT)
    if BIN_LIST > 0:
        by_list = (n_in > 0) & (n_in <= BIN_LIST)
        list_above, list_tau, list_need, list_cut = _resolve_listed(
            lists, chosen, tl.where(by_list, n_in, 0), mode, rank, above, mass_above, _cg(stats), _cg(stats + 1),
            lower, upper, target, BIN_LIST)
        resolved = resolved | by_list
        above = tl.where(by_list, list_above, above)
        tau = tl.where(by_list, list_tau, tau)
        need = tl.where(by_list, list_need, need)
        cut = tl.where(by_list, list_cut, cut)
    return tl.where(resolved, RESOLVED, mode), rank, above, mass_above, new_hi, new_lo, tau, need, cut


@triton.jit
def _tie_cut(scores_row, tau, need, n_keys, BLOCK: tl.constexpr):
    """The slot of the ``need``-th key (lowest slots first) scoring ``tau``: a scan of the row from slot 0 that stops
    there. Only a row with more keys tied at ``tau`` than a bin's list holds, not all of them taken, comes here."""
    tau_score = _key_score(tau)
    seen = need * 0
    cut = need * 0 - 1
    start = 0
    while (seen < need) & (start < n_keys):
        offs = start + tl.arange(0, BLOCK)
        tied = (tl.load(scores_row + offs, mask=offs < n_keys, other=float("-inf")) == tau_score).to(tl.int64)
        rank = seen + tl.cumsum(tied, axis=0)
        cut = tl.maximum(cut, tl.max(tl.where((tied == 1) & (rank == need), offs, -1), axis=0).to(tl.int64))
        seen += tl.sum(tied, axis=0)
        start += BLOCK
    return cut


@triton.jit
def logit_phase(
    scores_row, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, level, st, stats_ptr, n_keep_ptr, release,
    row, part, n_keys, n_blocks, chunk, n_chunks, target, min_tokens, max_tokens,
    NB_PAD: tl.constexpr, N_LOGIT: tl.constexpr, MIN_INV_WIDTH: tl.constexpr, MAX_INV_WIDTH: tl.constexpr,
    N_BINS: tl.constexpr, SUB: tl.constexpr, FUSED: tl.constexpr, PDL: tl.constexpr, CUT_SLOT: tl.constexpr = False,
):
    """Level 0: per-program histograms of the logit bins (counts and masses), added to ``level``; the last
    program to finish walks them, bounds the chosen bin's keys (:func:`_logit_bin_bounds`), writes the search
    state (``CUT_SLOT``: with :data:`CUT` -1, which a row resolved here, selecting nothing, keeps) and (``FUSED``)
    sets ``*release``."""
    row_max, z, n_visible, inv_width = _logit_histogram(
        scores_row, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, level, row, part, n_keys, n_blocks, chunk,
        NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB)
    let_next_launch(PDL)  # the next phase launches during the walk below
    tl.debug_barrier()
    ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem="acq_rel")
    if ticket == n_chunks - 1:  # the last program: walk the level
        tl.debug_barrier()
        lower = min_tokens + n_visible * 0
        upper = tl.minimum(n_visible, max_tokens)
        mode, rank, above, mass_above, key_hi, key_lo, tau, need, logit_bin = _level0_state(
            level, row_max, inv_width, lower, upper, target, N_LOGIT, N_BINS)
        _store_search(st, mode, rank, above, mass_above, key_hi, key_lo, tau, need)
        tl.store(st + LOGIT_BIN, logit_bin)
        if CUT_SLOT:
            tl.store(st + CUT, logit_bin * 0 - 1)
        _store_row(st, stats_ptr, row, row_max, z, inv_width, lower, upper)
        tl.store(n_keep_ptr + row, n_visible * 0)
        if FUSED:
            tl.debug_barrier()
            tl.atomic_xchg(release, 1, sem="release")


@triton.jit
def key_phase(
    scores_row, level, lists, st, stats_ptr, n_keep_ptr, release, row, part, n_keys, chunk, n_chunks, target,
    N_LOGIT: tl.constexpr, N_BINS: tl.constexpr, BLOCK: tl.constexpr, BIN_LIST: tl.constexpr, FUSED: tl.constexpr,
    PDL: tl.constexpr, EARLY_NEXT: tl.constexpr = False, CUT_SLOT: tl.constexpr = False, LET_NEXT: tl.constexpr = True,
):
    """Levels 1-3: per-key atomics into the ``N_BINS`` bins of the interval still searched (its keys in level 0's
    chosen bin: the interval's ends may hold a few keys of the bins beside it, :func:`_logit_bin_bounds`), and the
    bins' lists at ``lists``; the last program walks them, narrows the interval (or resolves
    ``tau``) and (``FUSED``) sets ``*release``.
    ``EARLY_NEXT`` (levels 2-3, which most rows reach resolved): the next launch may start as soon as every program
    has begun, not only once the level's pass is done (:data:`~rtpurbo.ops.triton.threshold.EARLY_NEXT_LAUNCH`).
    ``CUT_SLOT``: the walk that resolves the row also stores :data:`CUT` (where its bin's list did not give it and not
    every tie is taken, after a scan of the row: :func:`_tie_cut`).
    ``LET_NEXT=False`` (a level followed by another in the same launch): this level lets no next launch start, so
    that the next launch's programs cannot take the SMs that this launch's waiting programs still need.
    Returns whether the row was still searching (False: nothing done, nothing to wait for)."""
    if EARLY_NEXT and LET_NEXT:
        let_next_launch(PDL)
    # the pass's loads (the rest of the state, the row's statistics, the first scores) go out once the mode is back:
    # the compiler moves plain loads below the branch, and volatile ones issued before it made every key level
    # slower, an empty one most (benchmarks/results/llama-3.1-8b_h100_2026-12-06_search-tail-early-loads.md)
    mode = _cg(st + MODE)
    searching = mode != RESOLVED
    if searching:
        key_hi = _cg(st + KEY_HI)
        key_lo = _cg(st + KEY_LO)
        shift = _cg(st + SHIFT)
        _key_histogram(scores_row, level, lists, stats_ptr + row * N_STATS, key_hi, key_lo, shift,
                       _cg(st + LOGIT_BIN).to(tl.int32), part, n_keys, chunk, N_LOGIT, N_BINS, BLOCK, BIN_LIST)
        if LET_NEXT:
            let_next_launch(PDL)
        tl.debug_barrier()
        ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem="acq_rel")
        if ticket == n_chunks - 1:  # the last program: walk the level
            tl.debug_barrier()
            mode, rank, above, mass_above, new_hi, new_lo, tau, need, cut = _key_level_state(
                level, lists, stats_ptr + row * N_STATS, mode, _cg(st + RANK), _cg(st + ABOVE), _cg(st + MASS_ABOVE),
                key_hi, key_lo, shift, _cg(st + LOWER), _cg(st + UPPER), target, N_BINS, BIN_LIST)
            _store_search(st, mode, rank, above, mass_above, new_hi, new_lo, tau, need)
            if mode == RESOLVED:
                tl.store(n_keep_ptr + row, above + need)
                if CUT_SLOT:
                    if cut == _UNKNOWN_CUT:
                        cut = _tie_cut(scores_row, tau, need, n_keys, BLOCK)
                    tl.store(st + CUT, cut)
            if FUSED:
                tl.debug_barrier()
                tl.atomic_xchg(release, 1, sem="release")
    return searching


@triton.jit
def tally_phase(scores_row, st, tally_ptr, row, part, n_keys, chunk, n_chunks, BLOCK: tl.constexpr,
                PDL: tl.constexpr):
    """Per chunk: keys scoring above tau, keys scoring tau."""
    _tally_chunk(scores_row, _cg(st + TAU), tally_ptr + (row * n_chunks + part) * 2, part, n_keys, chunk, BLOCK, PDL)


@triton.jit
def _tally_chunk(scores_row, tau, out, part, n_keys, chunk, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Keys of chunk ``part`` scoring above / at ``tau`` -> ``out[0]``, ``out[1]``."""
    lo = part * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    let_next_launch(PDL)  # the gather's programs wait for this launch's end anyway: let them start at once
    # per lane: keys above tau in the high 16 bits, keys at tau in the low 16 (a lane sees one key per step, and
    # topp_threshold refuses chunks of 32,768 steps or more, so neither count reaches the sign bit)
    counts = tl.zeros([BLOCK], tl.int32)
    tau_score = _key_score(tau)
    s_next = _scores_at(scores_row, lo, hi, BLOCK)
    for start in range(lo, hi, BLOCK):
        s = s_next
        s_next = _scores_at(scores_row, start + BLOCK, hi, BLOCK)
        counts += tl.where(s > tau_score, 65536, 0) + (s == tau_score).to(tl.int32)
    tl.store(out, tl.sum(counts >> 16, axis=0))
    tl.store(out + 1, tl.sum(counts & 65535, axis=0))


@triton.jit
def gather_phase(
    scores_row, st, tally_ptr, order_row, row, part, n_keys, chunk, n_chunks,
    NC_PAD: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    """Selected slots of the chunk, ascending, at their final positions in ``order_row`` (``st``: the final state).
    Keys scoring ``tau`` are ranked (a scan) only in the steps that hold one, which most steps do not."""
    let_next_launch(PDL)  # as in the tally: the list attention's programs start now and wait for this launch's end
    tau_score = _key_score(_cg(st + TAU))
    need = _cg(st + NEED).to(tl.int32)
    c = tl.arange(0, NC_PAD)
    earlier = tally_ptr + (row * n_chunks + c) * 2
    above_before = tl.sum(tl.load(earlier, mask=c < part, other=0, cache_modifier=".cg"), axis=0)
    ties_before = tl.sum(tl.load(earlier + 1, mask=c < part, other=0, cache_modifier=".cg"), axis=0)
    written = above_before + tl.minimum(ties_before, need)
    lo = part * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    s_next = _scores_at(scores_row, lo, hi, BLOCK)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = s_next
        s_next = _scores_at(scores_row, start + BLOCK, hi, BLOCK)
        tied = (s == tau_score).to(tl.int32)
        n_tied = tl.sum(tied, axis=0)
        take = (s > tau_score).to(tl.int32)
        if n_tied > 0:
            tie_rank = ties_before + tl.cumsum(tied, axis=0) - tied
            take = take | (tied & (tie_rank < need).to(tl.int32))
        slot = written + tl.cumsum(take, axis=0) - take
        tl.store(order_row + slot, offs.to(tl.int64), mask=take == 1)
        written += tl.sum(take, axis=0)
        ties_before += n_tied


@triton.jit
def relay_walk(st, work_row, lists_row, stats, target, PREV: tl.constexpr, N_LOGIT: tl.constexpr,
               N_BINS: tl.constexpr, BIN_LIST: tl.constexpr):
    """The relay schedule's walk: the search state after level ``PREV`` (whose bins the launch before this one
    completed), computed the same way by every program of this launch from its bins and the state before it (slot
    ``PREV``). Returns (mode, rank, above, mass above, key_hi, key_lo, tau, need, logit bin); a resolved state passes
    through without a walk."""
    lower = _cg(st + LOWER)
    upper = _cg(st + UPPER)
    if PREV == 0:
        mode, rank, above, mass_above, key_hi, key_lo, tau, need, logit_bin = _level0_state(
            work_row, _cg(stats), _cg(stats + 2), lower, upper, target, N_LOGIT, N_BINS)
    else:
        before = st + PREV * _N_STATE
        mode = _cg(before + MODE)
        rank = _cg(before + RANK)
        above = _cg(before + ABOVE)
        mass_above = _cg(before + MASS_ABOVE)
        key_hi = _cg(before + KEY_HI)
        key_lo = _cg(before + KEY_LO)
        tau = _cg(before + TAU)
        need = _cg(before + NEED)
        logit_bin = _cg(before + LOGIT_BIN)
        if mode != RESOLVED:
            mode, rank, above, mass_above, key_hi, key_lo, tau, need, _ = _key_level_state(
                work_row + PREV * (2 * N_BINS + 1), lists_row, stats, mode, rank, above, mass_above, key_hi, key_lo,
                _cg(before + SHIFT), lower, upper, target, N_BINS, BIN_LIST)
    return mode, rank, above, mass_above, key_hi, key_lo, tau, need, logit_bin


@triton.jit
def relay_phase(
    scores_row, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, work_row, lists_row, st, stats_ptr, n_keep_ptr, tally_ptr,
    row, part, n_keys, n_blocks, chunk, n_chunks, target, min_tokens, max_tokens,
    PHASE: tl.constexpr, NB_PAD: tl.constexpr, N_LOGIT: tl.constexpr, MIN_INV_WIDTH: tl.constexpr,
    MAX_INV_WIDTH: tl.constexpr, N_BINS: tl.constexpr, SUB: tl.constexpr, BLOCK: tl.constexpr,
    BIN_LIST: tl.constexpr, PDL: tl.constexpr,
):
    """Levels 0-3 and the tally of the relay schedule (no tickets): level 0 histograms; every later launch first
    walks the bins of the launch before (:func:`relay_walk`, its program 0 storing the state in slot ``PHASE``),
    then histograms its level's interval (levels 1-3) or counts the keys above / at ``tau`` (the tally, whose
    program 0 also writes ``n_keep``)."""
    stats = stats_ptr + row * N_STATS
    if PHASE == 0:
        row_max, z, n_visible, inv_width = _logit_histogram(
            scores_row, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, work_row, row, part, n_keys, n_blocks, chunk,
            NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB)
        let_next_launch(PDL)
        if part == 0:
            _store_row(st, stats_ptr, row, row_max, z, inv_width, min_tokens + n_visible * 0,
                       tl.minimum(n_visible, max_tokens))
    else:
        mode, rank, above, mass_above, key_hi, key_lo, tau, need, logit_bin = relay_walk(
            st, work_row, lists_row, stats, target, PHASE - 1, N_LOGIT, N_BINS, BIN_LIST)
        if part == 0:
            _store_search(st + PHASE * _N_STATE, mode, rank, above, mass_above, key_hi, key_lo, tau, need)
            tl.store(st + PHASE * _N_STATE + LOGIT_BIN, logit_bin)
        if PHASE < _N_LEVELS:  # a key level
            if mode != RESOLVED:
                _key_histogram(scores_row, work_row + PHASE * (2 * N_BINS + 1), lists_row, stats, key_hi, key_lo,
                               _shift_for(key_hi - key_lo), logit_bin.to(tl.int32), part, n_keys, chunk, N_LOGIT,
                               N_BINS, BLOCK, BIN_LIST)
            let_next_launch(PDL)
        else:
            if part == 0:
                tl.store(n_keep_ptr + row, above + need)
            _tally_chunk(scores_row, tau, tally_ptr + (row * n_chunks + part) * 2, part, n_keys, chunk, BLOCK, PDL)
