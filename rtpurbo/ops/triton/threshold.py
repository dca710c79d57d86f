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
  takes everything further down). Per-program histograms, no per-key atomics (all keys take part
  here): counts by ``tl.histogram``, masses by a one-hot reduction in registers; then one atomic add
  per bin and program. (Counting alone and bounding the masses from the counts left level 1 an
  interval of up to every key: ``benchmarks/results/llama-3.1-8b_h100_2026-12-05_search-level0.md``.)
  Rows spread over 64 logits or more get 2-logit bins; narrower rows get narrower bins, so the chosen bin stays
  small when the scores are nearly flat (e.g. untrained indexers on random weights): with
  2-logit bins every key of such a row fell into bin 0, and levels 1-3 then made per-key atomics
  over the whole row (2.3 of 6.7 ms of a 1M-token decode step on 8 layers, H200). 32 bins: the
  whole selection at 1M keys takes 93 / 93 / 94 us on peaked / trained-like / flat scores
  (score std 4 / 2.56 / 0.04 logits), against 87 / 104 / 105 us with 16 bins and 81 / 97 / 108
  with 8 (H200, ``benchmarks/decode_kernel_sweep.py --parts select``); more bins make the
  one-hot work of level 0 cost more than the narrower interval saves.
* levels 1-3, only the keys of the chosen interval: ``N_BINS`` bins of the scores'
  order-preserving 32-bit keys (``threshold_phases._order_key``), ``span >> shift`` at a time, per-key
  atomics (the interval holds few keys unless the scores are nearly flat). A level whose interval
  is one key value has found ``tau`` and the later levels return at once. Beside its count and mass, each bin
  lists its first :data:`~rtpurbo.ops.triton.threshold_phases.BIN_LIST` (64) keys (order key and slot in one int64,
  at the place its count's atomic add returns). A walk whose chosen bin holds at most that many keys sorts the list
  and resolves ``tau`` there (``threshold_phases._resolve_listed``). Level 1 then resolves the trained-like rows of
  the Llama-3.1-8B benchmark (all at 128K-512K keys, 9 of 11 at 1M), where level 2 used to histogram their 1-87 keys
  and walk 2,048 bins for them: the selecting layer step is 2.7 / 1.2 / 4.9 / 2.9 us faster at 128K / 256K / 512K /
  1M keys on an H100 (``benchmarks/results/llama-3.1-8b_h100_2026-12-06_bin-lists.md``). The lists take
  ``N_BINS * BIN_LIST`` int64 per row (1 MiB), shared by the key levels and never zeroed: a walk reads only entries
  its level wrote, and a level lists keys only where the walk before it did not read its lists (a walk that reads
  them resolves the row).

Each histogram holds a count and a mass per bin. Masses are fixed point (``p * 2**52`` summed in
int64), so the sums do not depend on the order of the atomic adds: the selection is the same on
every run. The last program of a level to finish (a ticket counter) walks that level's bins from
the best: the first bin whose cumulative mass reaches ``top_p`` holds ``n*``, unless the token
clamps decide first, in which case the search continues for a fixed rank. Then
:func:`~rtpurbo.ops.triton.threshold_phases.tally_phase` counts the keys above / at ``tau`` per chunk and
:func:`~rtpurbo.ops.triton.threshold_phases.gather_phase`
writes the selected slots in ascending slot order, at positions from those counts (no atomics:
the output is deterministic). Both compare each score with ``tau``'s score in fp32
(``threshold_phases._key_score``), not int64 keys: 1.2-3.3 us less per selecting layer step at 128K-1M on an H100
(``benchmarks/results/llama-3.1-8b_h100_2026-12-06_tally-gather-fp32.md``).

The level-0 bin of a score is ``floor((m - s) * inv_width)`` in fp32, ``inv_width`` computed by
every program from the same block statistics (so bitwise the same everywhere); it falls as the
key rises, so the chosen bin's keys form one key interval. Level 0 bounds it from the bin's ends in
score with a slack far above the expression's rounding (``threshold_phases._logit_bin_bounds``:
no search), and the key levels take a key of those bounds only if the same expression, on the stored
``m`` and ``inv_width``, puts it in the chosen bin. (The search over keys that found the interval exactly
took 3.5 us of level 0's serial tail, timed alone on an H100: 32 probes, 8 warps.)

What is exact: the ranking, ties, clamps and ``tau`` (integer keys and counts). What is rounded:
``p`` (fp32 ``exp``, ``Z`` from the per-block statistics) and its sums (fp32 within a program at
level 0, then exact integer sums of 2^-52 units). So ``n*`` equals the reference's wherever
``top_p`` is not within ~1e-6 (relative) of a prefix mass of the ranked keys; at such a
boundary it may differ by the keys whose prefix masses lie that close. The reference
(:func:`rtpurbo.ops.reference.select_topp`) ranks by probability, not score: the two rankings
differ only between distinct scores of equal fp32 probability (e.g. probabilities that
underflow to 0, more than ~100 logits below the max), which the reference orders by slot.
Keys scoring ``-inf`` count as not visible.

The six phases (level 0, levels 1-3, tally, gather) depend on each other only within a row. The
tally and the gather stay two launches: one launch in which each chunk adds up the counts of the chunks
before it (a decoupled look-back over chunks handed out in start order) was 0.5 us faster at 128K keys
but 2 us slower at 1M, where selection runs by default, against these two (H100, paired,
``benchmarks/results/llama-3.1-8b_h100_2026-12-05_search-walk-bounds.md``; commit 293eb75 has it). Running a
row's tally and gather in the two launches right after the level that resolved it (level 1 in the 256K stamps),
leaving the later launches empty, was +0.1 (within noise) / +1.6 / +4.4 / +2.3 us per selecting layer step at 128K /
256K / 512K / 1M keys (``benchmarks/results/llama-3.1-8b_h100_2026-12-06_column-level0-early-tail.md``). The gather
inside the list attention's launch (each program gathers its chunk, then attends to it; f263fcd) was 0.5-0.9 us
faster per layer at 128K-256K and 4.5-6.1 us slower at 512K-1M
(``benchmarks/results/llama-3.1-8b_h100_2026-12-06_always-list-fork-after-scores.md``).
``schedule="phased"`` (the default) launches one phase at a time (levels 2-3 in one launch of at most one program
per SM, waiting for each other between the two as the fused schedule's programs do: :data:`PHASED_LAUNCHES`), about
two programs per SM of 2048-key steps: fewer, longer programs than four per SM of 1024-key steps (the earlier
launch) make the whole selection at 1M keys 86-87 us instead of 97-98 on every score regime, and change nothing at
128K (46-49 us; H200, ``benchmarks/decode_kernel_sweep.py --parts search_launch``,
``benchmarks/results/llama-3.1-8b_h200_2026-12-04_dense-tail-split-search-launch.md``).
``schedule="fused"`` runs all six as one persistent launch: at most one program per SM over all
rows, so that all are resident at once, and between phases the programs of a row wait on per-row
words (the last program of a level walks it and releases the others; the gather waits for every
tally). Both select the same keys. On an H200 (triton 3.6, CUDA graphs) fusing does not pay: graph
launches of the phases are about 1 us apart, so fusing saves little, while one program per SM
leaves each scan a longer serial loop. Whole selection (index scores + search, one retrieval head,
32 level-0 bins), fused / phased: 46 / 50 us at 128K keys, 106-107 / 101-102 us at 1M; one decode
layer step (retrieval + local heads) 87 / 83 us at 128K and 145 / 133 us at 1M
(``benchmarks/results/llama-3.1-8b_h200_2026-12-03_fused-selection.md``). The time is in each
phase's own work (the ticket, then one program walking up to 2048 bins), not between launches.
The Triton interpreter runs programs one after another, so on a CPU the fused schedule runs one
program per row (which never waits). Against the phased launches with PDL (H100, per selecting layer step of 8,
paired), the fused launch with PDL was 1.7 / 16.0 / 19.3 / 27.7 us slower at 128K / 256K / 512K / 1M keys, and
level 0 launched alone followed by one persistent launch of the rest 0.7 / 0.4 / 0.1 / 6.3 us slower, although that
launch made the selection alone 2.5 / 3.0 / 1.2 us faster at 128K-512K: beside the local heads' ring the persistent
programs lose what they save (``benchmarks/results/llama-3.1-8b_h100_2026-12-06_search-tail-early-loads.md``).

``schedule="relay"`` launches the same six phases as ``"phased"`` without the tickets: a level's programs add their
histograms and end, and every program of the next launch first walks those bins itself (the same walk from the same
bins, so the same state everywhere), its program 0 storing the state for the launch after (per-row state slots, one
per level: a launch reads the slot the launch before wrote and writes the next). The tally walks level 3's bins and
writes ``n_keep``; the gather reads the final slot. Against "phased" each level boundary loses the ticket (an atomic
that orders the level's adds) and the state's round trip through memory before the next level can read it, while the
walk moves from the last program of a level to the start of every program of the next. It selects the same keys;
without PDL it is slower than "phased" on an H100: the selecting layer step +1.6 us at 128K keys and +7.1 us at 1M,
the selection alone +10 us at 1M, where every program of a key level first walks the 2,048 bins of the level before
(``benchmarks/results/llama-3.1-8b_h100_2026-12-06_pdl-relay-anchor.md``); with PDL, 0.5 / 8.7 / 10.4 / 11.4 us
slower per selecting layer step at 128K / 256K / 512K / 1M keys
(``benchmarks/results/llama-3.1-8b_h100_2026-12-06_index-keys-walk.md``).

``until_cut=True`` (phased schedule) launches levels 0-3 only (three launches): the walk that resolves a row also
stores the cut (``threshold_phases.CUT``), the highest slot taken among the keys scoring ``tau``, so that whether a
key is selected is a test of its own score and slot, and :mod:`rtpurbo.ops.triton.cut_attend` selects where it
attends. Where the walk resolves ``tau`` from its bin's list the cut is that list's last entry taken; where more keys
tie at ``tau`` than a list holds and not all are taken, the walking program scans the row for it
(``threshold_phases._tie_cut``).

Everything stays on the device with shapes fixed by ``(BH, L)``: CUDA-graph capturable.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from . import dependent_launch
from .decode import _num_sms
from .dependent_launch import wait_for_previous
from .threshold_phases import (BIN_LIST, FIXED_ONE, MAX_INV_WIDTH, MIN_INV_WIDTH, N_BINS, N_LEVELS, N_LOGIT, N_SLOTS,
                               N_STATE, N_STATS, gather_phase, key_phase, logit_phase, relay_phase,
                               tally_phase, wait_for)

# phases of the search: level 0, key levels 1-3, tally, gather
N_PHASES = 6
TALLY = 4  # then 5, the gather
# per-row synchronisation words (int64): the release flags of phases 0-3, the tally arrivals, stalls
N_SYNC = 8
ARRIVED, STALLS = 4, 7
# key levels from this one on let the next launch start as soon as their programs have begun (with PDL): most rows
# reach them resolved, and such a level's launch then returned before letting the next one be scheduled, which started
# only once the level's programs had all ended (0.8 us after level 2, 1.6 us after level 3 in the 256K stamps of
# benchmarks/results/llama-3.1-8b_h100_2026-12-06_step-streams-stamps.md)
EARLY_NEXT_LAUNCH = tl.constexpr(2)
_TALLY, _ARRIVED, _STALLS = tl.constexpr(TALLY), tl.constexpr(ARRIVED), tl.constexpr(STALLS)  # for the kernel
# the phased schedule's launches, (first phase, last phase): levels 2-3 share one launch of at most one program per
# SM, whose programs wait for each other between the two levels as the fused schedule's do. Most rows reach level 2
# resolved, so that launch is usually empty, and two empty launches cost more than one: per selecting layer step of
# 8 on an H100, paired against a launch per level, -0.3 / -0.8 / -1.2 us at 256K / 512K / 1M keys (the same tree
# loaded twice: -0.0 / -0.3 / -0.4; benchmarks/results/llama-3.1-8b_h100_2026-12-07_merged-key-levels.md).
PHASED_LAUNCHES = ((0, 0), (1, 1), (2, 3), (4, 4), (5, 5))


@triton.jit
def _search_kernel(
    scores_ptr, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, work_ptr, lists_ptr, sync_ptr, state_ptr, stats_ptr,
    n_keep_ptr, tally_ptr, order_ptr,
    n_keys, n_blocks, chunk, n_chunks, capacity, target, min_tokens, max_tokens,
    FIRST: tl.constexpr, LAST: tl.constexpr,
    NB_PAD: tl.constexpr, N_LOGIT: tl.constexpr, MIN_INV_WIDTH: tl.constexpr, MAX_INV_WIDTH: tl.constexpr,
    N_BINS: tl.constexpr, N_STATE: tl.constexpr, N_SYNC: tl.constexpr, SUB: tl.constexpr, BLOCK: tl.constexpr,
    BIN_LIST: tl.constexpr, NC_PAD: tl.constexpr, SPIN_LIMIT: tl.constexpr, PDL: tl.constexpr, RELAY: tl.constexpr,
    CUT_SLOT: tl.constexpr,
):
    """Phases ``FIRST..LAST`` of one row's search, one program per (row, chunk of keys).

    One phase per launch ("phased", "relay"), or all six in one launch ("fused": a persistent kernel
    whose programs wait for each other per row, between phases, on the words of ``sync``;
    every program of the launch must be resident at once). ``PDL``: launched with programmatic dependent launch
    (one phase per launch), each phase lets the next one launch once its programs are past their pass over the row.
    ``RELAY``: no tickets; each launch walks the bins of the launch before in every program (``relay_phase``).
    ``CUT_SLOT``: the resolving walk also stores the cut among the ties (``threshold_phases.CUT``)."""
    wait_for_previous(PDL)
    row = tl.program_id(0)
    part = tl.program_id(1)
    scores_row = scores_ptr + row.to(tl.int64) * n_keys
    work_row = work_ptr + row.to(tl.int64) * (4 * (2 * N_BINS + 1))
    lists_row = lists_ptr + row.to(tl.int64) * (N_BINS * BIN_LIST)
    st = state_ptr + row * (N_SLOTS * N_STATE)
    sync = sync_ptr + row * N_SYNC
    if RELAY:
        if FIRST <= _TALLY:
            relay_phase(scores_row, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, work_row, lists_row, st, stats_ptr,
                        n_keep_ptr, tally_ptr, row, part, n_keys, n_blocks, chunk, n_chunks, target, min_tokens,
                        max_tokens, FIRST, NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB, BLOCK, BIN_LIST,
                        PDL)
        else:
            gather_phase(scores_row, st + _TALLY * N_STATE, tally_ptr,
                         order_ptr + row.to(tl.int64) * capacity, row, part, n_keys, chunk, n_chunks, NC_PAD, BLOCK,
                         PDL)
    else:
        for phase in tl.static_range(FIRST, LAST + 1):
            if phase == 0:
                logit_phase(scores_row, bmax_ptr, bsum_ptr, bcount_ptr, bmin_ptr, work_row, st, stats_ptr, n_keep_ptr,
                             sync, row, part, n_keys, n_blocks, chunk, n_chunks, target, min_tokens, max_tokens,
                             NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB, FIRST < LAST, PDL, CUT_SLOT)
                if phase < LAST:
                    wait_for(sync, 1, sync + _STALLS, SPIN_LIMIT)
            elif phase < _TALLY:
                searching = key_phase(scores_row, work_row + phase * (2 * N_BINS + 1), lists_row, st, stats_ptr,
                                      n_keep_ptr, sync + phase, row, part, n_keys, chunk, n_chunks, target, N_LOGIT,
                                      N_BINS, BLOCK, BIN_LIST, FIRST < LAST, PDL, phase >= EARLY_NEXT_LAUNCH,
                                      CUT_SLOT, phase == LAST)
                if phase < LAST:
                    if searching:
                        wait_for(sync + phase, 1, sync + _STALLS, SPIN_LIMIT)
            elif phase == _TALLY:
                tally_phase(scores_row, st, tally_ptr, row, part, n_keys, chunk, n_chunks, BLOCK, PDL)
                if phase < LAST:
                    tl.debug_barrier()
                    tl.atomic_add(sync + _ARRIVED, 1, sem="acq_rel")
                    wait_for(sync + _ARRIVED, n_chunks, sync + _STALLS, SPIN_LIMIT)
            else:
                gather_phase(scores_row, st, tally_ptr, order_ptr + row.to(tl.int64) * capacity, row, part, n_keys,
                              chunk, n_chunks, NC_PAD, BLOCK, PDL)


SCHEDULES = ("fused", "phased", "relay")


class Threshold(NamedTuple):
    """The search's result without the slots (:func:`topp_threshold` with ``until_cut=True``).

    n_keep: (BH,) int64 keys selected per row. state: (BH, N_SLOTS, N_STATE) int64, the final search state in slot 0:
    the selection is every key scoring above ``state[r, 0, TAU]``'s score, and those scoring it at slots up to
    ``state[r, 0, CUT]`` (:data:`~rtpurbo.ops.triton.threshold_phases.CUT`).
    """

    n_keep: torch.Tensor
    state: torch.Tensor


def workspace_size(rows: int) -> int:
    """int64 elements of the zeroed workspace of :func:`topp_threshold` for ``rows`` rows (``work``, then ``sync``)."""
    return rows * (N_LEVELS * (2 * N_BINS + 1) + N_SYNC)


def split_workspace(flat: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(work, sync) views of a flat workspace of :func:`workspace_size` elements."""
    size = rows * N_LEVELS * (2 * N_BINS + 1)
    return flat[:size].view(rows, N_LEVELS, 2 * N_BINS + 1), flat[size:].view(rows, N_SYNC)


def level0_sub(block: int, programs: int, device: torch.device, schedule: str) -> int:
    """Keys per step of level 0's one-hot mass accumulator, ``(SUB, N_LOGIT)`` fp32 per program: 512 where the phased
    or relay launch is one wave (at most one program per SM), else 256 (at most ``block``).

    512-key steps halve a program's steps but take 147 registers per thread instead of 84 (sm_90, compiled by triton
    3.9). In one wave that pays: the selecting layer step (per layer of 8, H100, paired, the same keys) -0.4 us at 128K
    keys and -1.1 at 256K, where one retrieval head's level 0 was 64 / 128 programs (at 256K, :func:`level0_chunks`
    now launches 256 programs in 256-key steps). Where the programs outnumber the SMs and queue beside the local
    heads' ring it does not: +3.8 us at 512K and +6.0 at 1M
    (``benchmarks/results/llama-3.1-8b_h100_2026-12-06_index-keys-walk.md``, ``l0s512``). The fused schedule keeps
    256 (its one kernel would carry the registers through every phase). Steps of 256 keys loaded as a ``(256, 1)``
    column, so that each key's row of the accumulators stays in its lane (80 registers, no barrier in the loop), made
    the step slower: +2.4 / +3.4 / +5.4 / +5.8 us at 128K / 256K / 512K / 1M keys
    (``benchmarks/results/llama-3.1-8b_h100_2026-12-06_column-level0-early-tail.md``)."""
    one_wave = schedule != "fused" and programs <= _num_sms(device)
    return min(512 if one_wave else 256, block)


SPIN_LIMIT = 1 << 22  # polls before a waiting program gives up: far past any real wait (see topp_threshold)


def _chunks(n_keys: int, rows: int, device: torch.device, block: int, schedule: str,
            programs_per_sm: int = 2) -> tuple[int, int]:
    """(keys per program, programs per row).

    phased: about ``programs_per_sm`` programs per SM over all rows. fused: at most one program per SM over all
    rows, so that every program is resident at once (one per row on a CPU: the interpreter runs
    programs one after another, and a lone program never waits)."""
    if schedule == "fused":
        per_row = max(1, _num_sms(device) // rows) if device.type == "cuda" else 1
    else:
        per_row = max(1, triton.cdiv(programs_per_sm * _num_sms(device), rows))
    chunk = triton.cdiv(triton.cdiv(max(n_keys, 1), per_row), block) * block
    return chunk, triton.cdiv(max(n_keys, 1), chunk)


LEVEL0_ALIGN = 256  # level 0's own chunks are whole steps of this many keys
LEVEL0_OWN_FILL = 1.25  # ... taken where the block chunks would put at most this many programs on an SM


def level0_chunks(n_keys: int, rows: int, device: torch.device, block: int,
                  programs_per_sm: int = 2) -> tuple[int, int]:
    """(keys per program, programs per row) of the phased schedule's level-0 launch.

    The other launches' chunks are ``block`` multiples. Where those fill the SMs about once (at most
    :data:`LEVEL0_OWN_FILL` programs per SM over all rows), level 0 takes its own: whole :data:`LEVEL0_ALIGN`-key steps
    at about ``programs_per_sm`` programs per SM, if they hold at least half a ``block``.

    Measured on an H100 with one retrieval head (the selecting layer step, per layer of 8, paired against the block
    chunks, the same keys; ``benchmarks/results/llama-3.1-8b_h100_2026-12-07_level0-chunks.md``): own chunks took
    1.5-1.9 us off the step at 288K keys (231 programs of 1,280 keys in place of 144 of 2,048), 0.7-1.0 us at 320K
    and 0.3-0.6 us at 256K (256 of 1,024 for 128 of 2,048). They added 0.1 us at 384K and 1.8 us at 448K, where the
    block chunks already put 1.5-1.7 programs on an SM, and 2.3-3.3 us at 128K (512- or 1,024-key chunks for 64 of
    2,048): hence both bounds."""
    shared = _chunks(n_keys, rows, device, block, "phased", programs_per_sm)
    own = _chunks(n_keys, rows, device, min(block, LEVEL0_ALIGN), "phased", programs_per_sm)
    if rows * shared[1] <= LEVEL0_OWN_FILL * _num_sms(device) and own[0] >= block // 2:
        return own
    return shared


def topp_threshold(
    scores: torch.Tensor, block_max: torch.Tensor, block_sum: torch.Tensor, block_count: torch.Tensor,
    block_min: torch.Tensor, *, top_p: float, min_tokens: int, max_tokens: int | None, block: int = 2048,
    work: torch.Tensor | None = None, n_logit: int = N_LOGIT, schedule: str = "phased",
    sync: torch.Tensor | None = None, programs_per_sm: int = 2, num_warps: int = 8, pdl: bool = False,
    after_level0: Callable[[], object] | None = None, bin_list: int = BIN_LIST, until_cut: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | Threshold:
    """The top-p selection of each row as a list of slots (see the module docstring).

    Args:
        scores: (BH, L) fp32 indexer scores, ``-inf`` where not visible.
        block_max, block_sum, block_count, block_min: (BH, n_blocks) per-block statistics of the
            scores (:class:`rtpurbo.ops.triton.decode.IndexScores`).
        block: keys per inner step (a power of two; small values only to test many programs).
        work: optional zeroed workspace (BH, N_LEVELS, 2 * N_BINS + 1) int64. Afterwards
            ``work[r, l, :N_BINS]`` holds level ``l``'s key counts per bin: the sum at level 1 is
            the number of keys the per-key levels histogrammed (0 when level 0 resolved the row; at level 2, 0 when
            level 1 resolved it, e.g. from a bin's list).
        n_logit: level-0 bins (a power of two, 2..N_BINS; default :data:`N_LOGIT`). Only the work
            changes with it, not the selection (benchmarks compare settings with it).
        schedule: ``"phased"`` (default): one launch per phase of the search (level 0, level 1, levels 2-3 together:
            :data:`PHASED_LAUNCHES`, tally, gather), about ``programs_per_sm`` programs per SM (levels 2-3: at most
            one per SM); ``"relay"``: one launch per phase without
            tickets, each launch walking the bins of the one before in every program; ``"fused"``: all six in one
            launch, a persistent kernel of at most one program per SM whose programs of a row wait for each
            other between phases (slower on an H200: module docstring). All select the same keys.
        sync: optional zeroed (BH, N_SYNC) int64 for the waits of the fused schedule and of the phased schedule's
            launch of levels 2-3. Afterwards
            ``sync[r, STALLS]`` counts the waits of row ``r`` that gave up after
            :data:`SPIN_LIMIT` polls (0 unless some program of the launch could not become
            resident; that row's selection is then undefined). Tests and benchmarks check it.
        programs_per_sm, num_warps: the phased schedule's launches (but that of levels 2-3, at most one program
            per SM): programs per SM over all rows, and the
            warps of each program of levels 0-3 (the tally and gather run 4). They change the speed, and the
            selection only where level 0's fp32 sums per program round differently (module docstring).
        pdl: the phased or relay schedule's launches use programmatic dependent launch
            (:mod:`rtpurbo.ops.triton.dependent_launch`): each phase launches while the one before it finishes.
            Levels 0-1 let the next launch start once their pass is done (the walk of their last program overlaps
            it); levels 2-3, the tally and the gather as soon as their programs have begun, since the next launch
            waits for their end anyway: -0.6 to -1.4 us per selecting layer step at 128K, 512K and 1M keys on an
            H100 against letting it start after their pass, 0.0 and -0.9 at 256K in two calls
            (``benchmarks/results/llama-3.1-8b_h100_2026-12-06_launch-triggers-substamps.md``).
            The same keys either way. The fused schedule (one launch) takes no ``pdl``.
        after_level0: called once on the current stream, right after level 0's launch (the fused schedule: after
            its one launch); :func:`rtpurbo.ops.triton.topp.select` forks the local heads there at long contexts.
        bin_list: keys listed per key-level bin (a power of two up to 128, or 0: no lists); a walk whose chosen bin
            holds at most this many keys resolves ``tau`` from its list (module docstring). The same keys either way.
        until_cut: (phased schedule) launch levels 0-3 only, the resolving walk storing the cut among the ties, and
            return :class:`Threshold`: no tally, no gather, no list of slots
            (:mod:`rtpurbo.ops.triton.cut_attend` selects each key where it attends).
    Returns:
        order (BH, C) int64, C = L or ``min(max_tokens, L)``: the first ``n_keep`` entries are the
        selected slots in ascending order, the rest unspecified; n_keep (BH,) int64. ``until_cut``:
        :class:`Threshold`.
    """
    if n_logit < 2 or n_logit > N_BINS or n_logit & (n_logit - 1):
        raise ValueError(f"n_logit must be a power of two in [2, {N_BINS}], got {n_logit}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if pdl and schedule == "fused":
        raise ValueError("pdl applies to the phased and relay schedules' launches; the fused schedule is one launch")
    if until_cut and schedule != "phased":
        raise ValueError(f"until_cut runs the phased schedule's launches of levels 0-3; got schedule {schedule!r}")
    rows, n_keys = scores.shape
    device = scores.device
    capacity = n_keys if max_tokens is None else max(0, min(max_tokens, n_keys))
    if programs_per_sm < 1 or num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"programs_per_sm must be >= 1 and num_warps a power of two <= 16, got {programs_per_sm}, "
                         f"{num_warps}")
    chunk, n_chunks = _chunks(n_keys, rows, device, block, schedule, programs_per_sm)
    steps = triton.cdiv(chunk, block)
    if steps >= 1 << 15:  # the tally packs two per-lane counts of steps into one int32
        raise ValueError(f"{steps} steps of {block} keys per program; the search takes fewer than 32768: raise block")
    if bin_list < 0 or bin_list > 128 or bin_list & (bin_list - 1):
        raise ValueError(f"bin_list must be 0 or a power of two up to 128, got {bin_list}")
    if n_keys >= 1 << 31:  # slots are listed in 31 bits (threshold_phases._list_entry)
        raise ValueError(f"{n_keys} keys per row; the search takes fewer than 2^31")
    target = 1 << 62 if top_p >= 1.0 else round(top_p * FIXED_ONE)
    work_shape = (rows, N_LEVELS, 2 * N_BINS + 1)
    if work is not None and (work.shape != work_shape or work.dtype != torch.int64):
        raise ValueError(f"work must be zeroed int64 of shape {work_shape}, got {work.dtype} {tuple(work.shape)}")
    if sync is not None and (sync.shape != (rows, N_SYNC) or sync.dtype != torch.int64):
        raise ValueError(f"sync must be zeroed int64 of shape {(rows, N_SYNC)}, got {sync.dtype} {tuple(sync.shape)}")
    if work is None or sync is None:  # one zeroed allocation (one memset) for what is missing
        fresh_work, fresh_sync = split_workspace(torch.zeros(workspace_size(rows), dtype=torch.int64, device=device),
                                                 rows)
        work = fresh_work if work is None else work
        sync = fresh_sync if sync is None else sync
    state = torch.empty(rows, N_SLOTS.value, N_STATE, dtype=torch.int64, device=device)
    stats = torch.empty(rows, N_STATS.value, dtype=torch.float32, device=device)
    n_keep = torch.empty(rows, dtype=torch.int64, device=device)
    # until_cut launches neither the tally nor the gather: nothing to hold their counts or the slots
    tally = torch.empty(rows, 0 if until_cut else n_chunks, 2, dtype=torch.int32, device=device)
    order = torch.empty(rows, 0 if until_cut else capacity, dtype=torch.int64, device=device)
    # N_BINS lists per row; an entry is read only where its level wrote it (module docstring)
    lists = torch.empty(rows, max(1, N_BINS * bin_list), dtype=torch.int64, device=device)
    n_blocks = block_max.shape[1]

    def launch_args(keys_per_program: int, programs: int) -> tuple:
        return (scores, block_max, block_sum, block_count, block_min, work, lists, sync, state, stats, n_keep, tally,
                order, n_keys, n_blocks, keys_per_program, programs, capacity, target, min_tokens,
                n_keys if max_tokens is None else max_tokens)

    meta = dict(NB_PAD=max(16, triton.next_power_of_2(n_blocks)), N_LOGIT=n_logit, MIN_INV_WIDTH=MIN_INV_WIDTH,
                MAX_INV_WIDTH=MAX_INV_WIDTH, N_BINS=N_BINS, N_STATE=N_STATE, N_SYNC=N_SYNC,
                SUB=level0_sub(block, rows * n_chunks, device, schedule),
                BLOCK=block, BIN_LIST=bin_list, NC_PAD=max(16, triton.next_power_of_2(n_chunks)), SPIN_LIMIT=SPIN_LIMIT,
                CUT_SLOT=until_cut)
    if schedule == "fused":
        spans = [(0, N_PHASES - 1)]
    elif schedule == "phased":
        spans = [span for span in PHASED_LAUNCHES if not (until_cut and span[0] >= TALLY)]
    else:
        spans = [(p, p) for p in range(N_PHASES)]
    # a launch of several phases: at most one program per SM, all resident at once (they wait for each other)
    merged = _chunks(n_keys, rows, device, block, "fused")
    # the phased schedule's level 0 alone: chunks of its own where they pay (level0_chunks)
    level0, level0_meta = (chunk, n_chunks), meta
    if schedule == "phased":
        level0 = level0_chunks(n_keys, rows, device, block, programs_per_sm)
        level0_meta = dict(meta, SUB=level0_sub(block, rows * level0[1], device, schedule))
    for first, last in spans:
        warps = 4 if first >= TALLY else num_warps  # the tally and gather alone: 4 warps
        keys_per_program, programs = merged if first < last else (chunk, n_chunks)
        launch_meta = meta
        if first == last == 0:
            (keys_per_program, programs), launch_meta = level0, level0_meta
        _search_kernel[(rows, programs)](*launch_args(keys_per_program, programs), FIRST=first, LAST=last, PDL=pdl,
                                         RELAY=schedule == "relay", num_warps=warps, **launch_meta,
                                         **dependent_launch.options(pdl))
        if first == 0 and after_level0 is not None:
            after_level0()
    if until_cut:
        return Threshold(n_keep, state)
    return order, n_keep
