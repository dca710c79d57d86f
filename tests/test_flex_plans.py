"""The flex backend's block masks and compiled entries, on the CPU.

Block masks are pure tensor code: the band arithmetic of a plain prefill must list exactly the
blocks that the per-block position ranges give. The compiled entries run on the CPU too (flex
compiles there through inductor's C++ template), which is enough to check that new lengths stop
compiling after the first few and that the results match the reference.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from rtpurbo.ops import flex, flex_plans, reference

from .test_decode_host_syncs import count_host_syncs


def _dense(num: torch.Tensor, idx: torch.Tensor, n_k: int) -> torch.Tensor:
    """(1, 1, nq) counts + (1, 1, nq, C) lists -> (nq, n_k) bool."""
    out = torch.zeros(num.shape[-1], n_k, dtype=torch.bool)
    for row in range(num.shape[-1]):
        out[row, idx[0, 0, row, : num[0, 0, row]].long()] = True
    return out


@pytest.mark.parametrize("length, window, sinks", [(128, 16, 0), (1024, 256, 4), (2048, 200, 4), (4096, 1000, 130),
                                                   (1024, 128, 4), (1024, 129, 0), (3072, 2048, 4)])
def test_plain_window_blocks_equal_the_position_ranges(length, window, sinks):
    """The compact band lists of a plain prefill = the lists built from position ranges (partial and full)."""
    steps = torch.arange(length)[None]
    plain = flex_plans._index_block_mask(length, window, sinks, torch.device("cpu"), False)
    ranges = flex_plans._range_block_mask(steps, steps, window, sinks, None, exact=True, backward=False)
    n = length // flex_plans.BLOCK
    for a, b in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        assert torch.equal(_dense(getattr(plain, a), getattr(plain, b), n), _dense(getattr(ranges, a), getattr(ranges, b), n))
    per_row = (plain.kv_num_blocks + plain.full_kv_num_blocks).float().max().item()
    assert per_row <= window / flex_plans.BLOCK + 2 + -(-sinks // flex_plans.BLOCK)  # grows with W, not with L


def test_plans_need_no_host_sync():
    """Building a plan reads nothing back from the device."""
    pos = torch.arange(1000).repeat(2, 1)
    pos[1, :100] = -1
    pos[1, 100:] -= 100
    with count_host_syncs() as found:
        position_plan = flex_plans.plan(pos, pos, window=64, sinks=4)
        plain_plan = flex_plans.plan(pos[:1], pos[:1], window=64, sinks=4, plain=True)
        masked = flex_plans.plan(pos, pos, window=None, sinks=0,
                                 key_mask=torch.ones(2, 1, 1000, 1000, dtype=torch.bool))
    assert not found, dict(found)
    assert (position_plan.kind, plain_plan.kind, masked.kind) == ("position", "index", "key_mask")
    assert position_plan.q_len == position_plan.k_len == 1024  # padded to a multiple of the block
    with pytest.raises(ValueError, match="SDPA"):
        flex_plans.plan(pos, pos, window=None, sinks=0, plain=True)


def _run(batch: int, length: int, kind: str) -> float:
    torch.manual_seed(length)
    q, k, v = torch.randn(batch, 4, length, 64), torch.randn(batch, 2, length, 64), torch.randn(batch, 2, length, 64)
    pos = torch.arange(length).repeat(batch, 1)
    if kind == "pad":
        pos[-1, : length // 3] = -1
        pos[-1, length // 3 :] -= length // 3
    plan = flex_plans.plan(pos, pos, window=64, sinks=4, plain=kind == "plain")
    out = flex.run(plan, q, k, v, 64**-0.5)
    ref = reference.attention(q, k, v, pos, pos, window=64, sinks=4)
    return ((out - ref).norm() / ref.norm()).item()


def test_compiled_flex_stops_compiling_and_matches_the_reference():
    """Eight lengths (odd ones padded to 128-multiples) and two mask kinds: at most two compiles per kind
    (the first length, then the dynamic-shape variant), none after; every output matches fp32."""
    graphs = lambda: counters["stats"]["unique_graphs"]
    start = graphs()
    for length in (256, 300, 700, 1000, 129, 512):
        assert _run(1, length, "plain") < 1e-4
    plain_graphs = graphs() - start
    for length in (300, 520, 777):
        assert _run(2, length, "pad") < 1e-4
    assert plain_graphs <= 2 and graphs() - start - plain_graphs <= 2, (plain_graphs, graphs() - start)


def _dense_mask(plan) -> torch.Tensor:
    """(B, Hq, nq, nk) bool: the blocks a flex plan lists (partial or full)."""
    mask = plan.block_mask
    n_k = plan.k_len // flex_plans.BLOCK
    out = []
    for num, idx in ((mask.kv_num_blocks, mask.kv_indices), (mask.full_kv_num_blocks, mask.full_kv_indices)):
        keep = torch.arange(idx.shape[-1]) < num[..., None]
        out.append(torch.zeros(*idx.shape[:-1], n_k + 1, dtype=torch.bool).scatter(
            -1, torch.where(keep, idx.long(), n_k), True)[..., :n_k])
    assert not (out[0] & out[1]).any()  # a block is partial or full, never both
    return out[0] | out[1]


@pytest.mark.parametrize("top_p, max_blocks, padded, scoring", [(0.5, None, False, "pooled"), (0.8, 3, True, "pooled"),
                                                              (1.0, None, True, "pooled"), (0.5, None, True, "mass"),
                                                              (0.8, 3, False, "mass")])
def test_sparse_prefill_plan_lists_the_reference_selection(top_p, max_blocks, padded, scoring):
    """The device-side block plan keeps exactly reference.select_blocks' blocks (every query head of a KV head)."""
    torch.manual_seed(0)
    batch, n_kv, group, length = 2, 2, 3, 1000
    q_idx, k_idx = torch.randn(batch, n_kv, length, 16), torch.randn(batch, n_kv, length, 16)
    pos = torch.arange(length).repeat(batch, 1)
    if padded:
        pos[1, :300] = -1
        pos[1, 300:] -= 300
    budget = dict(top_p=top_p, min_blocks=1, max_blocks=max_blocks, sinks=4, band=64, scoring=scoring)
    with count_host_syncs() as found:
        plan, kept, seen = flex_plans.block_sparse_plan(q_idx, k_idx, pos, pos, group=group, **budget)
    assert not found, dict(found)
    want = reference.select_blocks(q_idx, k_idx, pos, pos, block=flex_plans.BLOCK, **budget)
    assert torch.equal(_dense_mask(plan), want.repeat_interleave(group, dim=1))
    assert int(kept) == int(want.sum()) and int(seen) >= int(kept)
    if top_p == 1.0:
        assert int(kept) == int(seen)


def test_sparse_prefill_top_p_1_is_dense_and_runs_compiled():
    """api.sparse_prefill: top-p 1 computes dense causal attention; top-p < 1 attends the kept blocks only
    (compiled flex on the CPU against the reference's key mask)."""
    from rtpurbo.ops import api

    torch.manual_seed(1)
    length = 1500
    q, k, v = torch.randn(1, 4, length, 64), torch.randn(1, 2, length, 64), torch.randn(1, 2, length, 64)
    q_idx, k_idx = torch.randn(1, 2, length, 16), torch.randn(1, 2, length, 16)
    pos = torch.arange(length)[None]
    dense = reference.attention(q, k, v, pos, pos)
    out, kept, seen = api.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, top_p=1.0, sinks=4, band=64, impl="reference")
    torch.testing.assert_close(out, dense, rtol=0, atol=0)
    plan, kept, seen = flex_plans.block_sparse_plan(q_idx, k_idx, pos, pos, group=2, top_p=0.6, sinks=4, band=64)
    fast = flex.run(plan, q, k, v, 64**-0.5)
    want, blocks = reference.block_sparse_attention(q, k, v, pos, pos, q_idx, k_idx, block=flex_plans.BLOCK, top_p=0.6,
                                                    sinks=4, band=64)
    assert int(blocks.sum()) == int(kept) < int(seen)  # some visible blocks were skipped
    assert ((fast - want).norm() / want.norm()).item() < 1e-4


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_sparse_prefill_dense_tail_attends_every_key_from_the_last_queries(impl):
    """tail=T: the last T queries of the call get dense causal attention, the others the sparse rule's output
    unchanged: the reference's definition, through the reference and SDPA backends, on a left-padded batch; gradients
    reach the tail's queries. Compiled flex runs it on a GPU (tests/test_ops_gpu.py)."""
    from rtpurbo.ops import api

    torch.manual_seed(2)
    length, tail = 900, 200
    q, k, v = torch.randn(2, 4, length, 32), torch.randn(2, 2, length, 32), torch.randn(2, 2, length, 32)
    q_idx, k_idx = torch.randn(2, 2, length, 16), torch.randn(2, 2, length, 16)
    pos = torch.arange(length).repeat(2, 1)
    pos[1, :130] = -1
    pos[1, 130:] -= 130
    budget = dict(top_p=0.5, sinks=4, band=64)
    sparse, _ = reference.block_sparse_attention(q, k, v, pos, pos, q_idx, k_idx, block=flex_plans.BLOCK, **budget)
    want, _ = reference.block_sparse_attention(q, k, v, pos, pos, q_idx, k_idx, block=flex_plans.BLOCK, tail=tail,
                                               **budget)
    dense = reference.attention(q, k, v, pos, pos)
    valid = (pos >= 0)[:, None, :, None]
    torch.testing.assert_close(want[:, :, -tail:] * valid[:, :, -tail:], dense[:, :, -tail:] * valid[:, :, -tail:])
    torch.testing.assert_close(want[:, :, :-tail], sparse[:, :, :-tail], rtol=0, atol=0)
    assert not torch.allclose(sparse[:, :, -tail:] * valid[:, :, -tail:], want[:, :, -tail:] * valid[:, :, -tail:],
                              atol=1e-3)  # top-p 0.5 had skipped blocks the tail now sees
    q.requires_grad_(True)
    got, kept, seen = api.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, tail=tail, impl=impl, **budget)
    err = ((got - want) * valid).norm() / (want * valid).norm()
    assert err.item() < 1e-4
    if q.requires_grad:
        got.float().sum().backward()
        assert q.grad is not None and q.grad[:, :, -tail:].abs().sum() > 0
    with pytest.raises(ValueError, match="tail"):
        api.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, tail=-1, impl=impl, **budget)


def _attention_with_lse(q, k, v, q_pos, k_pos, scale):
    """Readable reference of one flex part: (out (B, Hq, T, D), natural log-sum-exp (B, Hq, T), -inf where unseen)."""
    from rtpurbo.ops.semantics import visible

    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~visible(q_pos, k_pos, None, 0)[:, None], float("-inf"))
    lse = scores.logsumexp(-1)
    return torch.softmax(scores, -1).nan_to_num(0.0) @ v, lse


@pytest.mark.parametrize("split_keys", [256, 384, 1000])
def test_dense_tail_parts_merge_to_the_reference(split_keys):
    """flex.dense_tail's split over keys (tail_parts, then merge_tail_parts by log-sum-exps), each part attended
    by the readable reference, equals the reference over all keys on a left-padded batch (a query that sees no
    key of a part takes nothing from it); flex runs the parts on a GPU (tests/test_ops_gpu.py)."""
    torch.manual_seed(4)
    length, tail = 1000, 200
    q, k, v = torch.randn(2, 4, tail, 32), torch.randn(2, 2, length, 32), torch.randn(2, 2, length, 32)
    pos = torch.arange(length).repeat(2, 1)
    pos[1, :330] = -1  # row 1's first part (and more) is padding
    pos[1, 330:] -= 330
    q_pos = pos[:, -tail:]
    want = reference.attention(q, k, v, q_pos, pos)
    queries, keys, values, query_pos, key_pos = flex.tail_parts(q, k, v, q_pos, pos, split_keys)
    assert keys.shape[2] == split_keys and queries.shape[0] == 2 * -(-length // split_keys)
    got = flex.merge_tail_parts(*_attention_with_lse(queries, keys, values, query_pos, key_pos, 32**-0.5), batch=2)
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    with pytest.raises(ValueError, match="multiple of 128"):  # flex's parts must fill its key blocks
        flex.dense_tail(q, k, v, q_pos, pos, 32**-0.5, split_keys=1000)


def test_list_width_is_full_for_backward_and_cpu():
    """Compact key-block lists only where flex can read them: GPU forward. Backward and CPU: all blocks."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert flex_plans.list_width(64, 10, cuda, backward=False) == 10
    assert flex_plans.list_width(64, 10, cuda, backward=True) == 64
    assert flex_plans.list_width(64, 10, cpu, backward=False) == 64


def _transposed_lists_match(mask, n_q: int, n_k: int) -> None:
    """The query-block lists of a block mask (what flex's backward reads) = the transpose of its key-block lists."""
    for kv, q in ((("kv_num_blocks", "kv_indices"), ("q_num_blocks", "q_indices")),
                  (("full_kv_num_blocks", "full_kv_indices"), ("full_q_num_blocks", "full_q_indices"))):
        for b in range(mask.kv_num_blocks.shape[0]):
            for h in range(mask.kv_num_blocks.shape[1]):
                rows = _dense(getattr(mask, kv[0])[b : b + 1, h : h + 1], getattr(mask, kv[1])[b : b + 1, h : h + 1], n_k)
                cols = _dense(getattr(mask, q[0])[b : b + 1, h : h + 1], getattr(mask, q[1])[b : b + 1, h : h + 1], n_q)
                assert torch.equal(rows, cols.T), (kv, b, h)


def test_backward_block_masks_list_every_key_block_for_the_query_lists():
    """Backward plans (training) carry query-block lists that are the exact transpose of the key-block lists,
    for the plain window band and for the retrieval heads' sparse prefill, at lengths where compact lists
    would hold fewer columns than there are key blocks (16 key blocks; the band lists 4, the sparse plan 9)."""
    length = 2048
    n = length // flex_plans.BLOCK
    window_mask = flex_plans._index_block_mask(length, 256, 4, torch.device("cpu"), True)
    _transposed_lists_match(window_mask, n, n)
    torch.manual_seed(0)
    pos = torch.arange(length).repeat(2, 1)
    pos[1, :300] = -1
    pos[1, 300:] -= 300
    q_idx, k_idx = torch.randn(2, 2, length, 16), torch.randn(2, 2, length, 16)
    plan, kept, seen = flex_plans.block_sparse_plan(q_idx, k_idx, pos, pos, group=2, top_p=0.7, min_blocks=1,
                                                    max_blocks=4, sinks=4, band=256, backward=True)
    assert plan.block_mask.kv_indices.shape[-1] == n and 0 < int(kept) < int(seen)
    _transposed_lists_match(plan.block_mask, n, n)


def test_each_flex_variant_has_its_own_compile_budget(monkeypatch):
    """Dynamo specialises a compiled flex graph on dtype, head counts, head dim, a batch of one (sizes 0 and 1
    are never symbolic) and gradients, and compiles at most ``recompile_limit`` (8) graphs per code object: a
    process whose models mix head groups and dtypes would have hit rtpurbo's FlexRecompileError on the ninth.
    Each variant now compiles under its own code object: twelve variants of one mask kind run, and a variant
    compiles at most once more for a second length (its dynamic-shape graph) and never for a third. (Dynamo's
    caching with its eager backend, on CPU.)"""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    flex._compiled.cache_clear()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    graphs = lambda: counters["stats"]["unique_graphs"]

    def attend(dtype, batch, n_q, n_kv, dim, length):
        pos = torch.arange(length).repeat(batch, 1)
        pos[-1, :5] = -1  # a padded row: the position mask, not the plain window
        q = torch.randn(batch, n_q, length, dim, dtype=dtype)
        k, v = torch.randn(batch, n_kv, length, dim, dtype=dtype), torch.randn(batch, n_kv, length, dim, dtype=dtype)
        plan = flex_plans.plan(pos, pos, window=64, sinks=4, group=n_q // n_kv)
        return flex.run(plan, q, k, v, dim**-0.5)

    try:
        variants = [(dtype, batch, n_q, n_kv, dim) for dtype in (torch.float32, torch.bfloat16)
                    for batch, n_q, n_kv, dim in ((2, 4, 4, 32), (2, 4, 2, 32), (2, 9, 3, 32), (1, 4, 2, 32),
                                                  (2, 4, 2, 64), (2, 8, 1, 16))]
        for variant in variants:
            assert torch.isfinite(attend(*variant, 256)).all()
        seen = graphs()
        for variant in variants[:4]:  # a second length: each variant's dynamic-shape graph, at most one more
            attend(*variant, 384)
        assert graphs() - seen <= 4, f"{graphs() - seen} graphs for a second length of 4 variants"
        seen = graphs()
        for variant in variants[:4]:
            attend(*variant, 640)
        assert graphs() == seen, f"{graphs() - seen} graphs for a third length of variants seen before"
    finally:
        flex._compiled.cache_clear()
