"""Head-wise cache: decode through the cache equals one full forward under the same sparsity."""
import pytest
import torch

from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import apply_plan, convert
from rtpurbo.families import geometry
from rtpurbo.generate import PromptTooLong, generate
from rtpurbo.prefill import prefill
from rtpurbo.testing import tiny_model

from .conftest import random_ids


def mixed_plan(model):
    layers, n_kv, n_q, _ = geometry(model.config)
    return HeadPlan(layers, n_kv, n_q, [[h for h in range(n_kv) if (h + l) % 2 == 0] for l in range(layers)])


def step_by_step(model, ids, cache=None):
    cache = HeadwiseCache(model) if cache is None else cache
    with torch.no_grad():
        out = [model(ids[:, t : t + 1], use_cache=True, **{cache_kwarg(): cache}).logits for t in range(ids.shape[1])]
    return torch.cat(out, dim=1), cache


def full_forward(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("length", [97])
def test_decode_equals_full_forward_every_family(family, length):
    model = tiny_model(family)
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2, top_p=1.0))
    ids = random_ids(1, length)
    got, _ = step_by_step(model, ids)
    assert torch.allclose(got, full_forward(model, ids), atol=1e-4)


def test_decode_equals_full_forward_long_odd_length():
    model = tiny_model("llama", num_layers=1)
    convert(model, mixed_plan(model), SparseConfig(window=64, sinks=4, top_p=1.0))
    ids = random_ids(1, 1025)
    got, cache = step_by_step(model, ids)
    assert torch.allclose(got, full_forward(model, ids), atol=1e-4)
    layer = cache.store[0]
    assert layer.l_k.shape[2] == 64 + 4  # local heads never hold more than S + W slots
    assert layer.r_len == 1025


def test_topp_decode_equals_topp_forward():
    """With top_p < 1, decoding token by token selects exactly what the 'topp' full forward selects."""
    model = tiny_model("qwen3", num_key_value_heads=2)
    convert(model, mixed_plan(model), SparseConfig(seqlen_threshold=0, window=16, sinks=2, top_p=0.6, min_tokens=3, recent=2))
    ids = random_ids(1, 80)
    got, cache = step_by_step(model, ids)
    model.rtpurbo_sparse.retrieval_prefill = "topp"
    want = full_forward(model, ids)
    model.rtpurbo_sparse.retrieval_prefill = "dense"
    dense = full_forward(model, ids)
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, dense, atol=1e-3)  # the selection really drops keys
    stats = cache.stats.summary()
    assert 0 < stats["mean_fraction"] < 1 and stats["samples"] > 0


def test_fresh_cache_prefill_sends_no_empty_slot_to_the_backend(monkeypatch):
    """A prefill through a fresh cache attends over the prompt only: none of the ring's S + W
    empty slots reaches the attention backend (no masked work on them, whatever the backend);
    the next chunk does see the filled ring."""
    from rtpurbo.ops import api

    model = tiny_model("llama", num_layers=1)
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2, top_p=1.0))
    seen = []
    real_attention = api.attention

    def recording(q, k, v, q_pos, k_pos, **kwargs):
        seen.append((k.shape[2], bool((k_pos < 0).any())))
        return real_attention(q, k, v, q_pos, k_pos, **kwargs)

    monkeypatch.setattr(api, "attention", recording)
    ids = random_ids(1, 40)
    cache = HeadwiseCache(model)
    prefill(model, cache, ids[:, :30], torch.ones_like(ids[:, :30]), chunk=30)
    assert seen and all(keys == 30 and not empty for keys, empty in seen)  # local and retrieval heads
    seen.clear()
    with torch.no_grad():
        model(ids[:, 30:], position_ids=torch.arange(30, 40)[None], use_cache=True, **{cache_kwarg(): cache})
    assert any(keys == 2 + 16 + 10 for keys, _ in seen)  # the ring (S + W slots) and the new chunk


def test_chunked_prefill_equals_single_shot(family):
    model = tiny_model(family)
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2, top_p=1.0))
    ids = random_ids(2, 75)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    caches = []
    for chunk in (75, 10, 1):
        cache = HeadwiseCache(model)
        prefill(model, cache, ids, mask, chunk)
        caches.append(cache)
    nxt = random_ids(2, 1, seed=5)
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
    pos = mask2.sum(-1, keepdim=True) - 1
    outs = []
    with torch.no_grad():
        for cache in caches:
            kw = {cache_kwarg(): cache}
            outs.append(model(nxt, attention_mask=mask2, position_ids=pos, use_cache=True, **kw).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and torch.allclose(outs[0], outs[2], atol=1e-4)


@pytest.mark.parametrize("retrieval_prefill", ["dense", "topp", "sparse"])
def test_a_one_token_prompt_chunk_is_prefilled_not_decoded(retrieval_prefill, monkeypatch):
    """With selection on from the first token (seqlen_threshold 0, top_p < 1), a prompt chunk of one token (a
    chunk size of 1, or a prompt whose last chunk holds one token) attends by the prefill rule, as in the one-shot
    prefill, not by the decode step's top-p selection."""
    from rtpurbo.ops import api

    monkeypatch.setattr(api, "BLOCK_SIZE", 16)
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2, top_p=0.3, min_tokens=1, recent=1,
                                                   seqlen_threshold=0, retrieval_prefill=retrieval_prefill,
                                                   prefill_top_p=0.3, prefill_band=16, impl="sdpa"))
    ids = random_ids(1, 49)
    mask = torch.ones_like(ids)
    nxt = random_ids(1, 1, seed=5)
    logits = []
    for chunk in (49, 24, 1):  # 24: chunks of 24, 24 and 1 tokens (16, 16, 16 and 1 under the sparse prefill)
        cache = HeadwiseCache(model)
        prefill(model, cache, ids, mask, chunk)
        with torch.no_grad():
            logits.append(model(nxt, position_ids=torch.tensor([[49]]), use_cache=True,
                                **{cache_kwarg(): cache}).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-4) and torch.allclose(logits[0], logits[2], atol=1e-4)


def test_chunks_of_a_plain_prompt_take_the_position_ordered_layout(family, monkeypatch):
    """Later chunks of an unpadded prompt hand the local heads their keys in position order (sinks, the ring
    unrolled to the W positions before the chunk, the chunk: ``chunk_start``, checked against the positions on
    the CPU) and give the logits of one shot, whether the ring is still filling or has wrapped."""
    from rtpurbo.ops import api as ops

    model = tiny_model(family)
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2, top_p=1.0))
    ids = random_ids(2, 75, seed=3)
    mask = torch.ones_like(ids)
    starts = []
    attention = ops.attention

    def spy(*args, chunk_start=None, **kwargs):
        starts.append(chunk_start)
        return attention(*args, chunk_start=chunk_start, **kwargs)

    monkeypatch.setattr(ops, "attention", spy)
    outs = []
    for chunk in (75, 7, 20):
        cache = HeadwiseCache(model)
        prefill(model, cache, ids[:, :-1], mask[:, :-1], chunk)
        with torch.no_grad():
            outs.append(model(ids[:, -1:], attention_mask=mask, position_ids=torch.full((2, 1), 74), use_cache=True,
                              **{cache_kwarg(): cache}).logits)
    used = {s for s in starts if s is not None}
    assert {7, 14, 21, 70, 20, 40, 60} <= used, sorted(used)  # chunks of 7 and 20 past the sinks, ring filling or not
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and torch.allclose(outs[0], outs[2], atol=1e-4)


def test_a_later_padded_turn_is_not_taken_for_the_plain_prompt():
    """The plain-prompt promise of generate.prefill covers that prompt's chunks only: a second multi-token forward
    whose rows hold padding runs as through a cache that never saw a plain prompt."""
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(window=4, sinks=1, top_p=1.0))
    ids = random_ids(2, 20, seed=1)
    mask = torch.ones_like(ids)
    mask[1, 10:13] = 0  # the second turn of row 1 holds padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def second_turn(first_turn_through_prefill):
        cache = HeadwiseCache(model)
        with torch.no_grad():
            if first_turn_through_prefill:
                prefill(model, cache, ids[:, :10], mask[:, :10], chunk=10)
                assert not cache.plain_prompt
            else:
                model(ids[:, :10], attention_mask=mask[:, :10], use_cache=True, **{cache_kwarg(): cache})
            return model(ids[:, 10:], attention_mask=mask, position_ids=positions[:, 10:], use_cache=True,
                         **{cache_kwarg(): cache}).logits

    real = mask[:, 10:, None].bool()
    torch.testing.assert_close(second_turn(True).masked_fill(~real, 0), second_turn(False).masked_fill(~real, 0),
                               atol=1e-5, rtol=1e-5)


def test_generate_all_retrieval_top_p_one_equals_original_generate(family):
    model = tiny_model(family)
    ids = random_ids(2, 30, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    layers, n_kv, n_q, _ = geometry(model.config)
    convert(model, HeadPlan.uniform(layers, n_kv, n_q, True), SparseConfig(window=8, sinks=2, top_p=1.0))
    assert torch.equal(generate(model, None, ids, mask, max_new_tokens=12).sequences, want)
    assert torch.equal(generate(model, None, ids, mask, max_new_tokens=12, prefill_chunk=8).sequences, want)


def test_generate_with_sampling_runs_and_is_seeded():
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=0.8))
    ids = random_ids(1, 20)
    torch.manual_seed(0)
    a = generate(model, None, ids, max_new_tokens=10, do_sample=True).sequences
    torch.manual_seed(0)
    b = generate(model, None, ids, max_new_tokens=10, do_sample=True).sequences
    assert torch.equal(a, b) and a.shape == (1, 30)


def test_cache_is_really_smaller_than_dense():
    model = tiny_model("llama", num_layers=2)
    convert(model, mixed_plan(model), SparseConfig(window=32, sinks=4, top_p=1.0))
    ids = random_ids(1, 600)
    cache = HeadwiseCache(model, initial_capacity=600)
    prefill(model, cache, ids, torch.ones_like(ids), 600)
    layers, n_kv, _, dim = geometry(model.config)
    dense = 2 * layers * n_kv * 600 * dim * 4
    n_ret = model.rtpurbo_plan.num_retrieval()
    bound = n_ret * 600 * (2 * dim + 16) * 4 + (layers * n_kv - n_ret) * 36 * 2 * dim * 4 + layers * 600 * 8 + 2 * 36 * 8
    assert cache.allocated_bytes() <= bound < dense


def test_errors_prompt_too_long_and_plan_changed():
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(window=8, sinks=2))
    with pytest.raises(PromptTooLong, match="positions"):
        generate(model, None, random_ids(1, 4000), max_new_tokens=200)
    cache = HeadwiseCache(model)
    step_by_step(model, random_ids(1, 3), cache)
    layers, n_kv, n_q, _ = geometry(model.config)
    apply_plan(model, HeadPlan.uniform(layers, n_kv, n_q, True))
    with pytest.raises(ValueError, match="start a new HeadwiseCache"):
        step_by_step(model, random_ids(1, 2), cache)


def test_repeat_batch_branches_identical_rows():
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=0.7, min_tokens=2, recent=2))
    ids = random_ids(1, 20)
    cache = HeadwiseCache(model)
    prefill(model, cache, ids, torch.ones_like(ids), 20)
    cache.repeat_batch(2)
    nxt = random_ids(1, 1, seed=9).repeat(2, 1)
    with torch.no_grad():
        out = model(nxt, position_ids=torch.full((2, 1), 20), use_cache=True, **{cache_kwarg(): cache}).logits
    assert torch.allclose(out[0], out[1], atol=1e-5) and cache.store[0].r_k.shape[0] == 2


def test_decode_with_reordered_heads_equals_full_forward():
    model = tiny_model("qwen3", num_key_value_heads=4)
    layers, n_kv, n_q, _ = geometry(model.config)
    plan = HeadPlan(layers, n_kv, n_q, [[1, 3], [2]])
    convert(model, plan, SparseConfig(window=8, sinks=2, top_p=1.0, reorder_heads=True))
    assert model.model.layers[0].self_attn.heads_contiguous
    ids = random_ids(1, 40)
    got, _ = step_by_step(model, ids)
    assert torch.allclose(got, full_forward(model, ids), atol=1e-4)
