"""Top-p retrieval-head decode on the GPU: same contract as :func:`reference.topp_attention`, Lq == 1.

One decode step (no host sync, shapes fixed by the input shapes: CUDA-graph capturable):

1. :func:`rtpurbo.ops.triton.decode.index_scores` (Triton): fp32 indexer logits of every
   cached key, per-block softmax statistics, and the sinks / ``recent`` keys in a small list.
2. Selection (:func:`select`), one of two methods:

   * ``"threshold"`` (default): :func:`rtpurbo.ops.triton.threshold.topp_threshold` finds the
     score threshold of the selection by a radix search (a few passes over the ``L`` fp32
     scores, no sort) and writes the selected slots in ascending slot order, one launch per phase
     of the search, levels 2-3 in one (``schedule="phased"``; ``"relay"``: a launch per phase without tickets,
     slower without PDL; ``"fused"``: one persistent kernel, slower on an H200).
     On an H200 it selects the reference's set in every test case and took 50 / 66 / 88 us per
     step at 128K / 512K / 1M keys against 73 / 93 / 142 us for ``"sort"``
     (benchmarks/results/llama-3.1-8b_h200_2026-11-28_select.md).
   * ``"sort"``: keys sorted by score, best first -- ``torch.sort`` (stable) over all keys, or
     ``torch.topk`` of ``max_tokens`` keys when a budget caps the selection; then
     :func:`rtpurbo.ops.triton.decode.topp_count` (one program per row) walks the sorted
     scores to the smallest prefix whose mass reaches ``top_p``.

   Both clamp the count to ``[min_tokens, max_tokens]`` and to the visible keys.
3. :func:`rtpurbo.ops.triton.decode.decode_attention` (Triton, list mode): split-K attention of
   the ``G`` query heads of each KV head over the selected slots plus the always-kept ones,
   each key counted once. Its combine writes the keys used per row; given ``key_sums`` it also adds them, and the
   row's visible keys from the index scores' per-block counts, to those running sums (no launch of its own).

:func:`topp_attention` with the phased schedule (the default), below :data:`CUT_ATTEND_MAX_KEYS` cached keys, runs
the search only until ``tau`` and the cut among its ties are known, and
:func:`rtpurbo.ops.triton.cut_attend.cut_attend` does the rest in one launch: each program selects the keys of its run
of slots by their scores and attends to them (no tally, no gather, no list of slots; the same keys).

The index-score kernel zeroes the threshold search's workspace (no memset launch in the chain). On a GPU of compute
capability 9.0 or later the threshold method's chain (index scores, the search's five launches, the list attention and
its combine; below :data:`CUT_ATTEND_MAX_KEYS`, three search launches, the cut attention and its combine) launches each
kernel while the one before it finishes (:mod:`rtpurbo.ops.triton.dependent_launch`;
``RTPURBO_PDL=0`` switches it off). ``RTPURBO_SEARCH_SCHEDULE``
names the search's schedule where a call names none (:func:`default_schedule`).

``top_p >= 1`` skips 1-2 and attends to every visible key. Ties: keys are ordered by indexer
score (the reference orders by probability; the two differ only where distinct scores round
to the same fp32 probability, and then only at the boundary of the selection).
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch

try:
    from . import cut_attend
    from . import decode as kernels
    from . import dependent_launch, threshold
except ImportError:  # triton missing (CPU-only install): available() is False
    kernels = threshold = dependent_launch = cut_attend = None

METHODS = ("threshold", "sort")
# From this many cached keys a selecting step forks its local heads (``after_scores``) once level 0 of the search is
# launched, not once the index scores are. Forked there at every length, per layer of 8 and paired on an H100 against
# the fork after the index scores (twice each): -0.6 us at 512K keys and -1.5 at 1M, but +2.0 at 256K and +0.1 at 128K;
# as shipped, -0.8 at 512K and -1.7 at 1M (benchmarks/results/llama-3.1-8b_h100_2026-12-06_index-keys-walk.md).
FORK_AFTER_LEVEL0_KEYS = 1 << 19
# Below this many cached keys the phased search stops at tau and its cut, and the attention selects its own keys
# (cut_attend: no tally, no gather); from it on the search writes the list of slots and the list attention splits it.
# Per selecting layer step of 8 on an H100, paired against the list path (the same keys): -2.7 us at 128K keys, -0.9
# at 256K, +1.8 at 512K, +0.9 at 1M, where each program's serial scan of its scores grows with the keys
# (benchmarks/results/llama-3.1-8b_h100_2026-12-07_cut-attention.md).
CUT_ATTEND_MAX_KEYS = 1 << 19
SCHEDULE_ENV = "RTPURBO_SEARCH_SCHEDULE"  # the threshold search's schedule where a call names none (default phased)


def available() -> bool:
    """True when Triton and a CUDA device are present."""
    return kernels is not None and torch.cuda.is_available()


class Selection(NamedTuple):
    """Top-p selection of one decode step (B rows, Hkv retrieval heads).

    order: (B, Hkv, C) int64 key slots (C = Lk, or ``min(max_tokens, Lk)``); the first
        ``n_keep`` are the selected ones, the rest unspecified. Method "threshold": ascending
        slots; method "sort": descending indexer score.
    n_keep: (B, Hkv) int64, how many entries of ``order`` are selected.
    always: (B * Hkv, sinks + recent) int32 slots of the always-kept keys at fixed entries; entries of absent keys
        hold anything (see :class:`rtpurbo.ops.triton.decode.IndexScores`; :func:`rtpurbo.ops.triton.decode.named_always`).
    block_count: (B * Hkv, n_blocks) int32 visible keys per block of the index scores.
    """

    order: torch.Tensor
    n_keep: torch.Tensor
    always: torch.Tensor
    block_count: torch.Tensor


def _check(q: torch.Tensor, q_idx: torch.Tensor) -> None:
    if q.shape[2] != 1:
        raise ValueError(f"triton top-p attention is decode-only (Lq == 1); got q{tuple(q.shape)}")
    if not (q.is_cuda and q_idx.is_cuda):
        raise ValueError(f"triton top-p attention needs CUDA tensors; got q on {q.device}, q_idx on {q_idx.device}")


def default_schedule() -> str:
    """The threshold search's schedule where a call names none: ``RTPURBO_SEARCH_SCHEDULE``, else ``"phased"`` (so a
    whole model, e.g. ``rtpurbo bench model``, can run the relay schedule without code changes)."""
    name = os.environ.get(SCHEDULE_ENV, "phased")
    if name not in threshold.SCHEDULES:
        raise ValueError(f"{SCHEDULE_ENV} must be one of {threshold.SCHEDULES}, got {name!r}")
    return name


def launch_settings() -> dict[str, object]:
    """How the selecting decode chain launches in this process (for benchmark records): the search's default
    schedule and whether programmatic dependent launch is switched on."""
    return {"search_schedule": default_schedule(), "pdl": dependent_launch.ENABLED}


def _chain_pdl(device: torch.device, schedule: str) -> bool:
    """Whether the selection's chain (index scores, the phased or relay search, the list attention and its combine)
    launches with programmatic dependent launch on ``device``."""
    return schedule != "fused" and dependent_launch.enabled(device)


def _scores_and_search(q_idx, k_idx, q_pos, k_pos, *, top_p, min_tokens, max_tokens, sinks, recent, schedule,
                       after_scores, until_cut: bool = False):
    """Index scores, then the threshold search (see :func:`select`): (IndexScores, ``topp_threshold``'s result)."""
    rows, n_keys = q_idx.shape[0] * q_idx.shape[1], k_idx.shape[2]
    # the search's workspace is zeroed by the index-score kernel, and the chain launches with PDL where it can
    pdl = _chain_pdl(q_idx.device, schedule)
    flat = torch.empty(threshold.workspace_size(rows), dtype=torch.int64, device=q_idx.device)
    scored = kernels.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=sinks, recent=recent, zero=flat, pdl=pdl)
    late = n_keys >= FORK_AFTER_LEVEL0_KEYS
    if after_scores is not None and not late:
        after_scores()
    work, sync = threshold.split_workspace(flat, rows)
    return scored, threshold.topp_threshold(
        scored.scores.view(rows, n_keys), scored.block_max, scored.block_sum, scored.block_count,
        scored.block_min, top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens, schedule=schedule,
        work=work, sync=sync, pdl=pdl, after_level0=after_scores if late else None, until_cut=until_cut,
    )


def select(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    top_p: float,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    sinks: int = 0,
    recent: int = 0,
    method: str = "threshold",
    schedule: str | None = None,
    after_scores: Callable[[], object] | None = None,
) -> Selection:
    """Indexer top-p selection (``top_p < 1``) for one query per row.

    Args:
        q_idx: (B, Hkv, 1, d_idx); k_idx: (B, Hkv, Lk, d_idx); q_pos: (B, 1); k_pos: (B, Lk).
        method: ``"threshold"`` (sort-free) or ``"sort"`` (see the module docstring).
        schedule: the threshold search's launches, ``"phased"`` (one per phase), ``"relay"`` (one per phase, no
            tickets) or ``"fused"`` (one persistent kernel); see :func:`rtpurbo.ops.triton.threshold.topp_threshold`.
            None: :func:`default_schedule`.
        after_scores: called once: right after the index-score kernel's launch or, from
            :data:`FORK_AFTER_LEVEL0_KEYS` keys on (threshold method), right after level 0's (see
            :func:`topp_attention`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {METHODS}")
    batch, n_kv, _, _ = q_idx.shape
    n_keys = k_idx.shape[2]
    rows = batch * n_kv
    if method == "threshold":
        scored, (order, n_keep) = _scores_and_search(
            q_idx, k_idx, q_pos, k_pos, top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens, sinks=sinks,
            recent=recent, schedule=schedule or default_schedule(), after_scores=after_scores)
        return Selection(order.view(batch, n_kv, -1), n_keep.view(batch, n_kv), scored.always, scored.block_count)
    scored = kernels.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=sinks, recent=recent)
    if after_scores is not None:
        after_scores()
    scores = scored.scores.view(rows, n_keys)
    budget = n_keys if max_tokens is None else min(max_tokens, n_keys)
    if budget == n_keys:
        values, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    else:
        values, order = torch.topk(scores, budget, dim=-1)
    n_keep = kernels.topp_count(values, scored, top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens)
    return Selection(order.view(batch, n_kv, budget), n_keep.view(batch, n_kv), scored.always, scored.block_count)


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
    schedule: str | None = None,
    after_scores: Callable[[], object] | None = None,
    out: torch.Tensor | None = None,
    out_heads: torch.Tensor | None = None,
    key_sums: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`rtpurbo.ops.reference.topp_attention` (here Lq must be 1); ``schedule``: see :func:`select`.
    ``out`` / ``out_heads``: the destination the combine writes itself (:func:`rtpurbo.ops.triton.decode.combined`).
    ``key_sums``: (B, Hkv, 2) int64 running sums the combine adds the step's selected keys and visible keys to, as
    :func:`rtpurbo.ops.reference.add_key_sums` does (no launch of its own; the visible keys from the index scores'
    per-block counts).

    ``after_scores``: called once on the current stream right after the index-score kernel is launched (``top_p >=
    1``: before the attention) or, from :data:`FORK_AFTER_LEVEL0_KEYS` cached keys on, right after level 0 of the
    threshold search is launched. A caller that forks a side stream there (the local heads of the layer) keeps its
    kernels from taking SMs from the index scores, which read every indexer key: launched before them, the local
    heads' ring made the index kernel at 1M keys take 29 us instead of 19 (H100). At long contexts the ring waits for
    level 0's launch as well, which it slows down too (:data:`FORK_AFTER_LEVEL0_KEYS`).

    Args:
        q: (B, Hq, 1, D); k, v: (B, Hkv, Lk, D); q_pos (B, 1); k_pos (B, Lk).
        q_idx: (B, Hkv, 1, d_idx); k_idx: (B, Hkv, Lk, d_idx).
    Returns:
        out (B, Hq, 1, D) in ``q.dtype``, or ``out``, and the number of selected keys (B, Hkv, 1) int64.
    """
    _check(q, q_idx)
    kernels.check_key_sums(key_sums, None, q.shape[0], k.shape[1], q.device)  # before any launch
    into = dict(out=out, out_heads=out_heads, key_sums=key_sums)
    schedule = schedule or default_schedule()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if top_p >= 1.0:
        if after_scores is not None:
            after_scores()
        out, counts = kernels.decode_attention(q, k, v, q_pos, k_pos, scale=scale, **into)
    elif schedule == "phased" and k.shape[2] < CUT_ATTEND_MAX_KEYS:  # the search until tau and its cut
        scored, found = _scores_and_search(
            q_idx, k_idx, q_pos, k_pos, top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens, sinks=sinks,
            recent=recent, schedule=schedule, after_scores=after_scores, until_cut=True)
        out, counts = cut_attend.cut_attend(
            q, k, v, q_pos, k_pos, scored.scores.view(-1, k.shape[2]), found, scored.always, scale=scale,
            skip_sinks=sinks, skip_recent=recent, pdl=_chain_pdl(q.device, schedule),
            block_count=None if key_sums is None else scored.block_count, **into)
    else:
        chosen = select(
            q_idx, k_idx, q_pos, k_pos,
            top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens, sinks=sinks, recent=recent,
            schedule=schedule, after_scores=after_scores,
        )
        out, counts = kernels.decode_attention(
            q, k, v, q_pos, k_pos, scale=scale, index=chosen.order, n_index=chosen.n_keep,
            always=chosen.always, skip_sinks=sinks, skip_recent=recent, pdl=_chain_pdl(q.device, schedule),
            block_count=None if key_sums is None else chosen.block_count, **into,
        )
    return out, counts.unsqueeze(-1)
