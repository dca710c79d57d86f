"""The sort-free top-p selection kernels on CPU, through the Triton interpreter.

The kernels (:mod:`rtpurbo.ops.triton.threshold`) run under ``TRITON_INTERPRET=1``, which must be
set before triton compiles anything, so every case runs in one child process (this file run as a
script) and the tests read its report. Each case checks the selected slots (ascending, first
``n_keep`` of ``order``) against :func:`rtpurbo.ops.reference.select_topp` applied to the kernel's
own fp32 scores (the selection's semantics, free of score rounding). The reference ranks keys by
probability, the kernels by score; the two differ only where distinct scores share a
probability, e.g. probabilities that underflow to 0 (the "spread" cases) or scores closer than an
fp32 step of the probability (the "tiny" case): there the check is
against the reference's rule with keys ranked by score. Every schedule of the threshold search (phased; relay, whose
launches walk the bins of the launch before in every program; fused, which runs one program per row in the
interpreter) and the sort method run on the same cases.
CI installs a triton whose interpreter runs them (``tests/triton_interpreter.py``).
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")
tl = pytest.importorskip("triton.language")

from rtpurbo.ops.triton.threshold_phases import NO_KEY, _key_score, _order_key, _order_key32  # noqa: E402

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, B, Hkv, Lk, scores kind, top_p ("mid" = far from every prefix mass), min, max, block);
# block (keys per inner step) is small so that each row spans many programs
# kinds: randn indexer; ties (8 distinct keys); flat (scores within ~0.1); tiny (within ~1e-5: level-0
# bins far narrower than a logit); outlier (flat, one key 60 logits below); spread (scores over
# hundreds of logits, both signs); lattice (multiples of 0.5 in [-20, 20]: many scores exactly on
# level-0 bin edges); zero (every score 0.0 exactly); empty (the last row sees nothing); edge (keys a few ulps
# either side of every level-0 bin edge: the key levels must leave out the keys of the bins beside the chosen one)
CASES = [
    ("randn-odd-b2", 2, 2, 701, "randn", "mid", 0, None, 32),
    ("randn-1program", 1, 3, 97, "randn", "mid", 0, None, 1024),
    ("randn-min", 2, 1, 333, "randn", "mid", 120, None, 64),
    ("randn-max", 2, 2, 501, "randn", "mid", 0, 9, 64),
    ("randn-min>visible", 1, 2, 65, "randn", "mid", 500, None, 64),
    ("randn-min=max", 1, 2, 257, "randn", 0.5, 40, 40, 64),
    ("randn-min>max", 2, 2, 257, "randn", "mid", 60, 25, 32),
    ("ties-max", 2, 2, 515, "ties", "mid", 0, 77, 32),
    ("ties-min", 1, 2, 515, "ties", 0.05, 130, None, 64),
    ("ties-topp", 2, 1, 515, "ties", "mid", 0, None, 32),
    ("flat", 2, 1, 801, "flat", "mid", 0, None, 32),
    ("flat-max", 1, 1, 801, "flat", 0.9, 0, 301, 64),
    ("tiny-spread", 2, 1, 801, "tiny", "mid", 0, None, 32),
    ("outlier", 1, 2, 801, "outlier", "mid", 0, 400, 32),
    ("spread", 2, 2, 603, "spread", 0.999, 0, None, 32),
    ("spread-min-tail", 1, 1, 603, "spread", "mid", 590, None, 64),
    ("lattice-topp", 2, 1, 401, "lattice", "mid", 0, None, 64),
    ("lattice-max", 1, 2, 401, "lattice", 0.9, 0, 150, 32),
    ("zero-max", 1, 2, 130, "zero", 0.7, 0, 50, 64),
    ("zero-topp", 1, 1, 130, "zero", 0.7, 0, None, 64),
    ("empty-row", 2, 1, 200, "empty", "mid", 16, None, 64),
    ("max0", 1, 1, 100, "randn", 0.9, 0, 0, 64),
    ("edge-topp", 2, 1, 801, "edge", "mid", 0, None, 64),
    ("edge-max", 1, 2, 801, "edge", 0.9, 0, 300, 32),
    # level 0 in its own chunks (threshold.level0_chunks on the interpreter's 8 SMs: 12 programs of 768 keys, the
    # other launches 9 of 1,024)
    ("randn-level0-chunks", 1, 1, 9001, "randn", "mid", 0, None, 512),
]
REPEATED = {"randn-odd-b2", "ties-topp"}  # also run twice: the same selection both times


def select_inputs(kind: str, batch: int, n_kv: int, n_keys: int, seed: int, device: str = "cpu"):
    """(q_idx (B, Hkv, 1, 16), k_idx (B, Hkv, Lk, 16), q_pos (B, 1), k_pos (B, Lk)) of a scores kind."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q_idx = torch.randn(batch, n_kv, 1, 16, generator=g)
    k_idx = torch.randn(batch, n_kv, n_keys, 16, generator=g)
    if kind == "ties":
        k_idx = k_idx[:, :, torch.randint(0, 8, (n_keys,), generator=g)]
    elif kind == "flat":
        k_idx = k_idx * 0.01
    elif kind == "tiny":
        k_idx = k_idx * 1e-6
    elif kind == "outlier":
        k_idx = k_idx * 0.01
        k_idx[:, :, 7] = -60 * q_idx[:, :, 0] / q_idx[:, :, 0].square().sum(-1, keepdim=True)
    elif kind == "spread":
        k_idx = k_idx * 40
    elif kind == "lattice":
        q_idx = torch.zeros_like(q_idx)
        q_idx[..., 0] = 1.0
        k_idx = torch.zeros_like(k_idx)
        k_idx[..., 0] = torch.randint(-40, 41, k_idx.shape[:3], generator=g) / 2
    elif kind == "zero":
        q_idx = torch.zeros_like(q_idx)
    elif kind == "edge":  # scores in [-30, 10]: 32 level-0 bins of 1.25 logits, most of the mass in bin 1 (so the
        # search goes on in bin 1 or below), and clusters a few ulps either side of every bin edge
        q_idx = torch.zeros_like(q_idx)
        q_idx[..., 0] = 1.0
        values = torch.rand(k_idx.shape[:3], generator=g) * 36 - 30
        values[..., 10], values[..., 11] = 10.0, -30.0
        values[..., 12:112] = 7.5 + 1.25 * torch.rand(values[..., 12:112].shape, generator=g)
        edges = 10.0 - 1.25 * torch.arange(1, 32, dtype=torch.float32)
        near = [edges]
        for towards in (float("inf"), float("-inf")):
            step = edges
            for _ in range(3):
                step = torch.nextafter(step, torch.full_like(step, towards))
                near.append(step)
        cluster = torch.cat(near)
        values[..., 112 : 112 + len(cluster)] = cluster
        k_idx = torch.zeros_like(k_idx)
        k_idx[..., 0] = values
    k_pos = torch.arange(n_keys).repeat(batch, 1)
    k_pos[-1, :5] = -1  # padding of the last row
    k_pos[:, n_keys - 3 :] = -1  # empty tail
    q_pos = torch.full((batch, 1), n_keys - 4)
    if kind == "empty":
        q_pos[-1] = -1
    return tuple(t.to(device) for t in (q_idx, k_idx, q_pos, k_pos))


def separated_top_p(scores, q_pos, k_pos) -> float:
    """A top_p far from every row's prefix masses (no rounding can move the boundary).

    scores: (B, Hkv, 1, Lk); q_pos (B, 1); k_pos (B, Lk).
    """
    import torch

    from rtpurbo.ops.semantics import visible

    candidates = visible(q_pos, k_pos, None, 0)[:, None]
    probs = torch.softmax(scores.masked_fill(~candidates, float("-inf")), -1).nan_to_num(0.0)
    cum = probs.double().sort(-1, descending=True).values.cumsum(-1).flatten(0, -2)  # (rows, Lk) ascending
    grid = torch.linspace(0.2, 0.95, 151, dtype=torch.float64, device=scores.device)
    at = torch.searchsorted(cum, grid.expand(cum.shape[0], -1).contiguous())
    above = cum.gather(-1, at.clamp(max=cum.shape[-1] - 1))
    below = cum.gather(-1, (at - 1).clamp(min=0))
    gap = torch.minimum((above - grid).abs(), (grid - below).abs()).amin(0)
    return grid[gap.argmax()].item()


def score_ranked(scores, q_pos, k_pos, *, top_p, min_tokens, max_tokens):
    """The reference's rule with keys ranked by score (ties by slot): (B, Hkv, Lq, Lk) bool."""
    import torch

    from rtpurbo.ops.semantics import visible

    candidates = visible(q_pos, k_pos, None, 0)[:, None]
    masked = scores.masked_fill(~candidates, float("-inf"))
    probs = torch.softmax(masked, dim=-1).nan_to_num(0.0)
    order = masked.sort(dim=-1, descending=True, stable=True).indices
    sorted_p = probs.gather(-1, order)
    n_keep = ((sorted_p.cumsum(-1) - sorted_p) < top_p).sum(-1, keepdim=True)
    n_keep = torch.minimum(n_keep.clamp(min=min_tokens), candidates.sum(-1, keepdim=True))
    if max_tokens is not None:
        n_keep = n_keep.clamp(max=max_tokens)
    keep = torch.arange(scores.shape[-1], device=scores.device) < n_keep
    return torch.zeros_like(keep).scatter(-1, order, keep)


def check_selection(case, device: str = "cpu") -> list[str]:
    """Problems found in one case of CASES' form (empty = pass); also run on the GPU."""
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import topp as triton_topp
    from rtpurbo.ops.triton import decode, dependent_launch, threshold

    name, batch, n_kv, n_keys, kind, top_p, min_tokens, max_tokens, block = case
    q_idx, k_idx, q_pos, k_pos = select_inputs(kind, batch, n_kv, n_keys, seed=len(name) * 7919 + n_keys, device=device)
    scored = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=0, recent=0)
    scores = scored.scores[:, :, None]  # (B, Hkv, 1, Lk)
    top_p = separated_top_p(scores, q_pos, k_pos) if top_p == "mid" else top_p
    budget = dict(top_p=top_p, min_tokens=min_tokens, max_tokens=max_tokens)
    rows = batch * n_kv
    want = reference.select_topp(scores, q_pos, k_pos, **budget)[:, :, 0].reshape(rows, n_keys)
    by_score = score_ranked(scores, q_pos, k_pos, **budget)[:, :, 0].reshape(rows, n_keys)
    problems = []
    if kind in ("spread", "tiny", "edge"):  # distinct scores sharing an fp32 probability: rank by score
        want = by_score
    elif not torch.equal(want, by_score):
        problems.append("the score-ranked rule differs from the reference on these scores")
    flat = scored.scores.view(rows, n_keys)
    stats = (flat, scored.block_max, scored.block_sum, scored.block_count, scored.block_min)
    capacity = n_keys if max_tokens is None else min(max_tokens, n_keys)
    runs = [(schedule, False) for schedule in threshold.SCHEDULES]
    if dependent_launch.supported(torch.device(device)):  # a GPU with PDL: the phased and relay launches with it too
        runs += [("phased", True), ("relay", True)]
    for schedule, pdl in runs:
        sync = torch.zeros(rows, threshold.N_SYNC, dtype=torch.int64, device=device)
        order, n_keep = threshold.topp_threshold(*stats, **budget, block=block, schedule=schedule, sync=sync, pdl=pdl)
        schedule = schedule + (" with PDL" if pdl else "")
        if tuple(order.shape) != (rows, capacity):
            problems.append(f"{schedule}: order shape {tuple(order.shape)} != {(rows, capacity)}")
        if int(sync[:, threshold.STALLS].sum()):
            problems.append(f"{schedule}: {int(sync[:, threshold.STALLS].sum())} waits gave up")
        for r in range(rows):
            n = int(n_keep[r])
            slots = order[r, :n].tolist()
            expected = want[r].nonzero().flatten().tolist()
            if slots != expected:
                problems.append(f"{schedule}: row {r}: {n} slots {slots[:12]}... != reference {len(expected)} "
                                f"{expected[:12]}...")
        if name in REPEATED:
            again, n_again = threshold.topp_threshold(*stats, **budget, block=block, schedule=schedule.split()[0],
                                                      pdl=pdl)
            if not (torch.equal(n_keep, n_again) and all(
                torch.equal(order[r, : n_keep[r]], again[r, : n_keep[r]]) for r in range(rows)
            )):
                problems.append(f"{schedule}: a second run differs")
    for pdl in (False, True) if dependent_launch.supported(torch.device(device)) else (False,):
        found = threshold.topp_threshold(*stats, **budget, block=block, until_cut=True, pdl=pdl)
        problems += [f"until_cut{' with PDL' if pdl else ''}: {p}" for p in cut_problems(flat, found, want)]
    # the sort method; under max_tokens it takes torch.topk, which breaks ties in no set order
    chosen = triton_topp.select(q_idx, k_idx, q_pos, k_pos, **budget, method="sort")
    for r in range(rows):
        n = int(chosen.n_keep.view(rows)[r])
        sort_slots = sorted(chosen.order.view(rows, -1)[r, :n].tolist())
        expected = want[r].nonzero().flatten().tolist()
        if n != len(expected) or (max_tokens is None and sort_slots != expected):
            problems.append(f"row {r}: the sort method differs from the reference")
    return problems


def cut_problems(scores, found, want) -> list[str]:
    """Whether a search run ``until_cut`` selects ``want`` ((rows, L) bool) by its final state: every key scoring
    above ``tau``, and those scoring ``tau`` at slots up to the cut."""
    import torch

    from rtpurbo.ops.triton import threshold_phases as phases

    problems = []
    for r in range(scores.shape[0]):
        tau, cut = int(found.state[r, 0, phases.TAU.value]), int(found.state[r, 0, phases.CUT.value])
        key = scores[r].view(torch.int32).long()  # the order key of threshold_phases._order_key, on the host
        key = torch.where(scores[r] == 0, 2147483648, torch.where(key < 0, -1 - key, key + 2147483648))
        key = torch.where(scores[r] == float("-inf"), -1, key)
        slots = torch.arange(scores.shape[1], device=scores.device)
        chosen = (key > tau) | ((key == tau) & (slots <= cut))
        if not torch.equal(chosen, want[r]):
            problems.append(f"row {r}: tau {tau} and cut {cut} select {int(chosen.sum())} keys, the reference "
                            f"{int(want[r].sum())} ({int((chosen != want[r]).sum())} differ)")
        if int(found.n_keep[r]) != int(want[r].sum()):
            problems.append(f"row {r}: n_keep {int(found.n_keep[r])} != {int(want[r].sum())}")
    return problems


def _check_attention(positions: str = "int64") -> list[str]:
    """topp_attention's list mode fed by the threshold selection, against the reference (fp32); the kernels read the
    key positions as ``positions`` (int32: as a static-decode cache holds them), the reference as int64."""
    import torch
    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import topp as triton_topp
    from rtpurbo.ops.triton import decode
    from tests.test_decode_interpret import compare, random_qkv

    batch, n_kv, group, n_keys, dim = 2, 2, 3, 301, 32
    q, k, v = random_qkv(batch, n_kv, group, n_keys, dim, seed=5)
    q_idx, k_idx, q_pos, k_pos = select_inputs("randn", batch, n_kv, n_keys, seed=11)
    budget = dict(top_p=0.8, min_tokens=8, max_tokens=None, sinks=4, recent=16)
    cached = k_pos.to(getattr(torch, positions))
    chosen = triton_topp.select(q_idx, k_idx, q_pos, cached, **budget, method="threshold")
    sums = torch.arange(batch * n_kv * 2, dtype=torch.int64).view(batch, n_kv, 2)  # sums of earlier steps
    out, counts = decode.decode_attention(
        q, k, v, q_pos, cached, scale=dim**-0.5, index=chosen.order, n_index=chosen.n_keep,
        always=chosen.always, skip_sinks=4, skip_recent=16, key_sums=sums, block_count=chosen.block_count,
    )
    ref, ref_counts = reference.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **budget)
    problems = compare(out, ref, counts, ref_counts[..., 0]) + key_sums_problems(sums, ref_counts, q_pos, k_pos)
    try:
        decode.decode_attention(q, k, v, q_pos, cached, scale=dim**-0.5, index=chosen.order, n_index=chosen.n_keep,
                                always=chosen.always, skip_sinks=4, skip_recent=16, key_sums=sums)
        problems.append("a list's key sums without block counts were accepted")
    except ValueError:
        pass
    return problems


def key_sums_problems(sums, ref_counts, q_pos, k_pos) -> list[str]:
    """Whether the combine added one step to ``sums`` (which held ``arange`` before) as
    :func:`rtpurbo.ops.reference.add_key_sums` adds the reference's counts and visible keys."""
    import torch
    from rtpurbo.ops import reference

    want = torch.arange(sums.numel(), dtype=torch.int64).view(sums.shape)
    reference.add_key_sums(want, ref_counts, q_pos, k_pos)
    return [] if torch.equal(sums, want) else [f"key sums {sums.tolist()} != {want.tolist()}"]


def _check_cut_attention(positions: str = "int64") -> list[str]:
    """The search run ``until_cut`` and :func:`cut_attend.cut_attend` (each program selecting its own keys by ``tau``
    and the cut), against the reference (fp32): random scores, and scores all equal under a token budget (the cut
    found by a scan of the row: more ties than a bin's list holds), in nine parts per row of one scan step each, and in
    one part of three steps. The kernels read the key positions as ``positions``, the reference as int64."""
    import torch
    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import cut_attend, decode, threshold
    from tests.test_decode_interpret import compare, random_qkv

    problems = []
    batch, n_kv, group, n_keys, dim = 2, 2, 3, 2301, 32
    q, k, v = random_qkv(batch, n_kv, group, n_keys, dim, seed=5)
    for kind, budget, launch in (
        ("randn", dict(top_p=0.8, min_tokens=8, max_tokens=None), decode.DecodeLaunch(block_n=128, waves=8)),
        ("zero", dict(top_p=0.7, min_tokens=0, max_tokens=150), decode.LIST_LAUNCH),
    ):
        q_idx, k_idx, q_pos, k_pos = select_inputs(kind, batch, n_kv, n_keys, seed=11)
        cached = k_pos.to(getattr(torch, positions))
        scored = decode.index_scores(q_idx, k_idx, q_pos, cached, sinks=4, recent=16)
        flat = scored.scores.view(-1, n_keys)
        found = threshold.topp_threshold(flat, scored.block_max, scored.block_sum, scored.block_count,
                                         scored.block_min, **budget, block=64, until_cut=True)
        sums = torch.arange(batch * n_kv * 2, dtype=torch.int64).view(batch, n_kv, 2)
        out, counts = cut_attend.cut_attend(q, k, v, q_pos, cached, flat, found, scored.always, scale=dim**-0.5,
                                            skip_sinks=4, skip_recent=16, launch=launch, key_sums=sums,
                                            block_count=scored.block_count)
        ref, ref_counts = reference.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **budget, sinks=4, recent=16)
        problems += [f"{kind}: {p}" for p in compare(out, ref, counts, ref_counts[..., 0])
                     + key_sums_problems(sums, ref_counts, q_pos, k_pos)]
    bad_calls = {
        "scores of the wrong shape": dict(scores=flat[:1]),
        "key sums of the wrong shape": dict(key_sums=torch.zeros(batch, n_kv, 3, dtype=torch.int64)),
        "int32 key sums": dict(key_sums=torch.zeros(batch, n_kv, 2, dtype=torch.int32)),
        "key sums not contiguous": dict(key_sums=torch.zeros(batch, 2, n_kv, dtype=torch.int64).transpose(1, 2)),
        "block counts without key sums": dict(block_count=scored.block_count),
        "key sums without block counts": dict(key_sums=torch.zeros(batch, n_kv, 2, dtype=torch.int64)),
        "block counts of another row count": dict(key_sums=torch.zeros(batch, n_kv, 2, dtype=torch.int64),
                                                  block_count=scored.block_count[:1]),
    }
    for name, bad in bad_calls.items():
        args = dict(scores=flat, key_sums=None, block_count=None) | bad
        try:
            cut_attend.cut_attend(q, k, v, q_pos, k_pos, args.pop("scores"), found, scored.always, scale=1.0,
                                  skip_sinks=4, skip_recent=16, **args)
            problems.append(f"{name} were accepted")
        except ValueError:
            pass
    return problems


def _check_flat_interval() -> list[str]:
    """A nearly flat row (scores within ~0.01) must not send every key through the per-key levels:
    level-0 bins follow the row's spread, so level 1 histograms a small share of the keys."""
    import torch

    from rtpurbo.ops.triton import decode, threshold

    n_keys = 2048
    q_idx, k_idx, q_pos, k_pos = select_inputs("flat", 1, 1, n_keys, seed=3)
    scored = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=0, recent=0)
    work = torch.zeros(1, threshold.N_LEVELS, 2 * threshold.N_BINS + 1, dtype=torch.int64)
    threshold.topp_threshold(scored.scores.view(1, n_keys), scored.block_max, scored.block_sum, scored.block_count,
                             scored.block_min, top_p=0.9, min_tokens=0, max_tokens=None, block=256, work=work)
    scanned = int(work[0, 1, : threshold.N_BINS].sum())
    visible = int(scored.block_count.sum())
    return [] if 0 < scanned <= visible // 4 else [f"level 1 histogrammed {scanned} of {visible} keys"]


def _check_bin_lists() -> list[str]:
    """Where level 1's chosen bin holds at most ``bin_list`` keys, its walk resolves ``tau`` from the bin's list and
    level 2 histograms nothing; without lists level 2 searches. Same selection both ways."""
    import torch

    from rtpurbo.ops.triton import decode, threshold

    n_keys = 4000
    q_idx, k_idx, q_pos, k_pos = select_inputs("randn", 1, 1, n_keys, seed=29)
    scored = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=0, recent=0)
    args = (scored.scores.view(1, n_keys), scored.block_max, scored.block_sum, scored.block_count, scored.block_min)
    problems, kept = [], {}
    for bin_list in (0, threshold.BIN_LIST):
        work = torch.zeros(1, threshold.N_LEVELS, 2 * threshold.N_BINS + 1, dtype=torch.int64)
        order, n_keep = threshold.topp_threshold(*args, top_p=0.9, min_tokens=0, max_tokens=None, block=64,
                                                 work=work, bin_list=bin_list)
        kept[bin_list] = order[0, : n_keep[0]].tolist()
        level1, level2 = (int(work[0, level, : threshold.N_BINS].sum()) for level in (1, 2))
        if level1 == 0:
            problems.append(f"bin_list={bin_list}: level 1 histogrammed no key (level 0 resolved the row?)")
        if (level2 == 0) != (bin_list > 0):
            problems.append(f"bin_list={bin_list}: level 2 histogrammed {level2} keys")
    if kept[0] != kept[threshold.BIN_LIST]:
        problems.append(f"the lists changed the selection: {len(kept[threshold.BIN_LIST])} keys, not {len(kept[0])}")
    return problems


def _check_n_logit() -> list[str]:
    """The level-0 bin count, the phased launch (programs per SM, warps) and the bin lists change the work, not the
    selection: 4 and 64 bins, 1 or 16 programs per SM (4 or 64 programs per row here), no bin lists, and lists of 2
    keys under the relay schedule (most walks then go on to the next level, whose programs list their keys into the
    lists every program of that launch has just walked) select what the default does."""
    import torch

    from rtpurbo.ops.triton import decode, threshold

    problems = []
    for kind, top_p, max_tokens in (("flat", 0.9, None), ("lattice", 0.9, 150), ("spread", 0.999, None),
                                    ("randn", 0.7, None), ("ties", 0.5, 77)):
        q_idx, k_idx, q_pos, k_pos = select_inputs(kind, 2, 1, 515, seed=17)
        scored = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=0, recent=0)
        args = (scored.scores.view(2, -1), scored.block_max, scored.block_sum, scored.block_count, scored.block_min)
        budget = dict(top_p=top_p, min_tokens=0, max_tokens=max_tokens, block=64)
        order, n_keep = threshold.topp_threshold(*args, **budget)
        for launch in (dict(n_logit=4), dict(n_logit=64), dict(programs_per_sm=1, num_warps=4),
                       dict(programs_per_sm=16), dict(bin_list=0), dict(bin_list=2, schedule="relay")):
            other, n_other = threshold.topp_threshold(*args, **budget, **launch)
            same = torch.equal(n_keep, n_other) and all(
                torch.equal(order[r, : n_keep[r]], other[r, : n_keep[r]]) for r in range(2))
            if not same:
                problems.append(f"{kind}: {launch} selects {n_other.tolist()} keys, the default {n_keep.tolist()}")
    try:
        threshold.topp_threshold(*args, **budget, n_logit=24)
        problems.append("n_logit=24 (not a power of two) was accepted")
    except ValueError:
        pass
    return problems


def _check_zeroed_workspace() -> list[str]:
    """``index_scores(zero=...)`` zeroes the search's workspace in its own launch (no memset of its own): a buffer
    of garbage comes back all zero, the scores do not change, and ``select`` (which uses it) picks what
    ``topp_threshold`` with a freshly zeroed workspace picks."""
    import torch

    from rtpurbo.ops.triton import decode, threshold
    from rtpurbo.ops.triton import topp as triton_topp

    problems = []
    rows, n_keys = 3, 700
    q_idx, k_idx, q_pos, k_pos = select_inputs("randn", 1, rows, n_keys, seed=23)
    plain = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=2, recent=8)
    flat = torch.full((threshold.workspace_size(rows),), 7, dtype=torch.int64)
    zeroing = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=2, recent=8, zero=flat, block=256)
    if int(flat.count_nonzero()):
        problems.append(f"{int(flat.count_nonzero())} of {flat.numel()} workspace entries were not zeroed")
    named = [decode.named_always(run.always, q_pos, k_pos, n_kv=rows, sinks=2, recent=8) for run in (plain, zeroing)]
    if not torch.equal(plain.scores, zeroing.scores) or not torch.equal(*named):
        problems.append("zeroing the workspace changed the scores or the always list")
    budget = dict(top_p=0.85, min_tokens=4, max_tokens=None)
    order, n_keep = threshold.topp_threshold(plain.scores.view(rows, n_keys), plain.block_max, plain.block_sum,
                                             plain.block_count, plain.block_min, **budget)
    for schedule in threshold.SCHEDULES:
        chosen = triton_topp.select(q_idx, k_idx, q_pos, k_pos, **budget, sinks=2, recent=8, schedule=schedule)
        got_n = chosen.n_keep.view(rows)
        if not (torch.equal(got_n, n_keep) and all(torch.equal(chosen.order.view(rows, -1)[r, : n_keep[r]],
                                                                order[r, : n_keep[r]]) for r in range(rows))):
            problems.append(f"select ({schedule}) kept {got_n.tolist()} keys, topp_threshold {n_keep.tolist()}")
    try:
        decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=0, recent=0, zero=flat.to(torch.int32))
        problems.append("an int32 zero buffer was accepted")
    except ValueError:
        pass
    return problems


def _check_bad_args() -> list[str]:
    """An unknown schedule, work / sync buffers of the wrong shape or dtype, and bad launch settings are refused before
    any launch."""
    import torch

    from rtpurbo.ops.triton import decode, threshold

    q_idx, k_idx, q_pos, k_pos = select_inputs("randn", 1, 2, 64, seed=1)
    scored = decode.index_scores(q_idx, k_idx, q_pos, k_pos, sinks=0, recent=0)
    args = (scored.scores.view(2, -1), scored.block_max, scored.block_sum, scored.block_count, scored.block_min)
    budget = dict(top_p=0.9, min_tokens=0, max_tokens=None)
    bad = {"schedule": dict(schedule="persistent"),
           "sync shape": dict(sync=torch.zeros(1, threshold.N_SYNC, dtype=torch.int64)),
           "sync dtype": dict(sync=torch.zeros(2, threshold.N_SYNC, dtype=torch.int32)),
           "work shape": dict(work=torch.zeros(2, threshold.N_LEVELS, 8, dtype=torch.int64)),
           "programs per SM": dict(programs_per_sm=0), "warps": dict(num_warps=3),
           "bin list of 3": dict(bin_list=3), "bin list of 256": dict(bin_list=256),
           "PDL with the fused schedule": dict(schedule="fused", pdl=True)}
    problems = []
    for what, kwargs in bad.items():
        try:
            threshold.topp_threshold(*args, **budget, **kwargs)
            problems.append(f"bad {what} accepted")
        except ValueError:
            pass
    long_rows = torch.zeros(64, 1 << 15)  # one program per row, 32768 steps of one key: past what the tally counts
    try:
        threshold.topp_threshold(long_rows, *(torch.zeros(64, 1) for _ in range(4)), **budget, block=1)
        problems.append("a search of 32768 steps per program accepted")
    except ValueError:
        pass
    return problems


@triton.jit
def _key_score_kernel(s_ptr, t_ptr, out_ptr, N: tl.constexpr):
    """Per pair (s, t): the int64 key comparisons, their fp32 stand-ins through ``_key_score``, and the round trip."""
    i = tl.arange(0, N)
    s = tl.load(s_ptr + i)
    t = tl.load(t_ptr + i)
    tau = _order_key(t)
    back = _key_score(tau)
    tl.store(out_ptr + i, (_order_key(s) > tau).to(tl.int32))
    tl.store(out_ptr + N + i, (s > back).to(tl.int32))
    tl.store(out_ptr + 2 * N + i, (_order_key(s) == tau).to(tl.int32))
    tl.store(out_ptr + 3 * N + i, (s == back).to(tl.int32))
    plus_zero = tl.where(t == 0.0, 0.0, t)  # the key of -0.0 is +0.0's
    same_bits = back.to(tl.int32, bitcast=True) == plus_zero.to(tl.int32, bitcast=True)
    tl.store(out_ptr + 4 * N + i, same_bits.to(tl.int32))
    tl.store(out_ptr + 5 * N + i, (_key_score(tau * 0 + NO_KEY) == float("inf")).to(tl.int32))
    tl.store(out_ptr + 6 * N + i, (_order_key32(t).to(tl.int64) == tau).to(tl.int32))


def _check_key_score() -> list[str]:
    """``_key_score`` inverts ``_order_key`` (bit for bit, -0.0 -> +0.0), fp32 comparisons with it say what the
    int64 key comparisons say, and ``_order_key32`` gives ``_order_key``'s values: on zeros of both signs,
    subnormals, neighbours one ulp apart, extremes and random scores (each against itself, its neighbours and
    others)."""
    import torch

    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1.17549435e-38, -1.17549435e-38, 1.0, -1.0, 3.4028235e38,
                            -3.4028235e38, 2.5, -2.5, 1e-3, -1e-3, 17.25, -17.25])
    torch.manual_seed(3)
    values = torch.cat([special, torch.nextafter(special, torch.tensor(float("inf"))),
                        torch.nextafter(special, torch.tensor(float("-inf"))), torch.randn(80) * 8])
    s, t = torch.meshgrid(values, values, indexing="ij")
    s, t = s.reshape(-1).contiguous(), t.reshape(-1).contiguous()
    n = s.numel()  # 128 x 128 = 16384, a power of two
    out = torch.zeros(7 * n, dtype=torch.int32)
    _key_score_kernel[(1,)](s, t, out, N=n)
    keys_gt, fp_gt, keys_eq, fp_eq, round_trip, no_key, key32 = out.view(7, n)
    problems = []
    if not torch.equal(keys_gt, fp_gt):
        problems.append(f"s > key_score(tau) disagrees with the keys on {int((keys_gt != fp_gt).sum())} pairs")
    if not torch.equal(keys_eq, fp_eq):
        problems.append(f"s == key_score(tau) disagrees with the keys on {int((keys_eq != fp_eq).sum())} pairs")
    if not bool(round_trip.all()):
        problems.append(f"key_score(order_key(t)) != t on {int((round_trip == 0).sum())} values")
    if not bool(no_key.all()):
        problems.append("key_score(NO_KEY) is not +inf")
    if not bool(key32.all()):
        problems.append(f"order_key32 != order_key on {int((key32 == 0).sum())} values")
    return problems


def _run_all() -> dict[str, list[str]]:
    return report_checks([(case[0], lambda case=case: check_selection(case)) for case in CASES] + [
        ("attention", _check_attention), ("cut-attention", _check_cut_attention),
        ("attention-int32", lambda: _check_attention("int32")),
        ("cut-attention-int32", lambda: _check_cut_attention("int32")),
        ("flat-interval", _check_flat_interval), ("bin-lists", _check_bin_lists),
        ("n-logit", _check_n_logit),
        ("zeroed-workspace", _check_zeroed_workspace), ("bad-args", _check_bad_args),
        ("key-score", _check_key_score)])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", [c[0] for c in CASES] + ["attention", "cut-attention", "attention-int32",
                                                           "cut-attention-int32", "flat-interval", "bin-lists",
                                                           "n-logit",
                                                           "zeroed-workspace", "bad-args", "key-score"])
def test_threshold_selection_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(_run_all()))
