"""Retrieval heads on a base model's windowed layers: their cache store is bounded by that window.

Such heads attend within the base window ``W_b`` (Mistral's ``sliding_window``, Qwen's windowed layers),
so the head-wise cache keeps at most ``W_b`` of their tokens (appended, then a ring), as the base model's
own cache does, and every output stays that of one full forward.
"""
import warnings

import pytest
import torch

from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.generate import generate
from rtpurbo.prefill import prefill
from rtpurbo.testing import tiny_model

from .conftest import random_ids

W_B = 48  # the base model's own sliding window in these tests


def mixed_plan(model):
    layers, n_kv, n_q, _ = geometry(model.config)
    return HeadPlan(layers, n_kv, n_q, [[h for h in range(n_kv) if (h + l) % 2 == 0] for l in range(layers)])


class FullStore(HeadwiseCache):
    """The reference: a head-wise cache whose windowed layers keep every retrieval token (appended, unbounded)."""

    def _layer(self, module, k):
        layer = super()._layer(module, k)
        layer.r_window = None
        return layer


def windowed_model(family="mistral", **sparse):
    """A tiny model whose layers (Mistral: all; Qwen2: 1 and 2 of 0..2) have their own window of ``W_B``, converted
    with retrieval and local heads on every layer."""
    if family == "mistral":
        model = tiny_model("mistral", sliding_window=W_B)
    else:
        model = tiny_model(family, use_sliding_window=True, sliding_window=W_B, max_window_layers=1, num_layers=3)
    convert(model, mixed_plan(model), SparseConfig(**{"window": 16, "sinks": 2, "top_p": 1.0, **sparse}))
    return model


def windowed_layers(model):
    return [m.layer_idx for m in _modules(model) if m.base_window is not None]


def _modules(model):
    return [layer.self_attn for layer in model.model.layers]


def full_forward(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=False).logits


def through_cache(model, cache, ids, mask, bounds):
    """Logits (B, L, V) of ``ids`` fed through ``cache`` in the forwards ``bounds`` [(start, stop)]."""
    out = []
    with torch.no_grad():
        for start, stop in bounds:
            out.append(model(ids[:, start:stop], attention_mask=mask[:, :stop], use_cache=True,
                             **{cache_kwarg(): cache}).logits)
    return torch.cat(out, dim=1)


def chunks(length, size):
    return [(s, min(s + size, length)) for s in range(0, length, size)]


def assert_bounded(model, cache):
    """Windowed layers hold a ring of W_B retrieval slots; the others every token (appended)."""
    for module in _modules(model):
        layer = cache.store[module.layer_idx]
        if module.base_window is not None:
            slots = (layer.r_k.shape[2], layer.r_v.shape[2], layer.r_idx.shape[2], layer.r_pos.shape[1])
            assert slots == (W_B,) * 4, (module.layer_idx, slots)
        else:
            assert layer.r_pos.shape[1] >= layer.r_len == layer.seen


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
@pytest.mark.parametrize("size", [160, 7, 30, 50, 100])
def test_prefill_in_chunks_equals_one_full_forward(family, size):
    """One shot, chunks shorter and longer than W_b that do not fall on its multiples, of a plain and a padded
    batch: the logits of a cache that keeps every token, and of one full forward (whose fp32 rounding differs from
    any chunked path's by up to ~3e-5 here, bounded store or not)."""
    model = windowed_model(family)
    ids = random_ids(2, 160, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :13] = 0  # row 1 left-padded
    for rows in (slice(0, 1), slice(0, 2)):  # plain (the position-ordered layout of later chunks) and padded
        cache = HeadwiseCache(model)
        got = through_cache(model, cache, ids[rows], mask[rows], chunks(160, size))
        kept_all = through_cache(model, FullStore(model), ids[rows], mask[rows], chunks(160, size))
        want = full_forward(model, ids[rows], mask[rows])
        real = mask[rows].bool()
        torch.testing.assert_close(got[real], kept_all[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)
        assert_bounded(model, cache)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_greedy_decode_far_past_the_window_equals_one_full_forward(family):
    """A left-padded batch of two prompts of different lengths (one longer than W_b, one shorter), then greedy
    decode to more than three windows: every step's logits are those of one full forward over the sequence."""
    model = windowed_model(family)
    mask = torch.ones(2, 60, dtype=torch.long)
    mask[1, :35] = 0  # prompts of 60 and 25 tokens
    prompt = random_ids(2, 60, seed=2).masked_fill(mask == 0, 0)
    result = generate(model, None, prompt, attention_mask=mask, max_new_tokens=120, prefill_chunk=17)
    sequences = result.sequences
    assert sequences.shape == (2, 180)
    full_mask = torch.cat([mask, torch.ones(2, 120, dtype=torch.long)], dim=1)
    want = full_forward(model, sequences, full_mask)
    assert torch.equal(want[:, 59:-1].argmax(-1), sequences[:, 60:])  # greedy under one full forward
    assert_bounded(model, result.cache)

    cache = HeadwiseCache(model)  # every step's logits, token by token
    got = through_cache(model, cache, sequences, full_mask, [(0, 60)] + [(t, t + 1) for t in range(60, 180)])
    real = full_mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)
    assert_bounded(model, cache)


def test_a_padded_later_turn_after_the_ring_wrapped_equals_one_full_forward():
    """Padding in the middle of a row (a second turn): ring slots follow positions, not columns."""
    model = windowed_model("qwen2")
    ids = random_ids(2, 150, seed=3)
    mask = torch.ones_like(ids)
    mask[1, 100:109] = 0
    cache = HeadwiseCache(model)
    got = through_cache(model, cache, ids, mask, [(0, 100), (100, 130), (130, 131), (131, 150)])
    want = full_forward(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)
    assert_bounded(model, cache)


def test_topp_selection_on_full_layers_beside_windowed_ones():
    """With top_p < 1 the un-windowed layer's retrieval heads still select over every token they appended, while
    the windowed layers' heads attend within W_b over their ring: decode equals the 'topp' full forward."""
    model = windowed_model("qwen2", top_p=0.6, min_tokens=3, recent=2, seqlen_threshold=0)
    ids = random_ids(1, 130, seed=4)
    mask = torch.ones_like(ids)
    cache = HeadwiseCache(model)
    got = through_cache(model, cache, ids, mask, [(t, t + 1) for t in range(130)])
    model.rtpurbo_sparse.retrieval_prefill = "topp"
    want = full_forward(model, ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert cache.stats.summary()["samples"] > 0 and set(cache.stats.samples) == {0}  # only layer 0 selects
    assert_bounded(model, cache)


@pytest.mark.parametrize("capacity", [90, 200])
def test_static_decode_is_bounded_and_exact(capacity):
    """Static decode (one token per forward into preallocated storage): a capacity above W_b gives the windowed
    layers a ring of W_b slots, one below keeps their appended store at that capacity; the logits are those of one
    full forward either way, and the layout does not change from step to step."""
    model = windowed_model("qwen2")
    ids = random_ids(2, capacity, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    cache = HeadwiseCache(model)
    prefill(model, cache, ids[:, :30], mask[:, :30], chunk=30)
    cache.static_decode(capacity)
    shapes = [tuple(t.shape) for layer in cache.store for t in layer.tensors()]
    positions = mask.cumsum(-1) - 1
    out = []
    with torch.no_grad():
        for t in range(30, capacity):
            out.append(model(ids[:, t : t + 1], position_ids=positions[:, t : t + 1], use_cache=True,
                             **{cache_kwarg(): cache}).logits)
    assert [tuple(t.shape) for layer in cache.store for t in layer.tensors()] == shapes
    want = full_forward(model, ids, mask)[:, 30:]
    torch.testing.assert_close(torch.cat(out, dim=1), want, atol=1e-4, rtol=0)
    for module in _modules(model):
        layer = cache.store[module.layer_idx]
        slots = min(capacity, W_B) if module.base_window is not None else capacity
        assert layer.r_pos.shape[1] == layer.r_k.shape[2] == slots, (module.layer_idx, capacity)
        assert layer.r_len == capacity


def test_graphed_generate_matches_eager_generate_with_a_bounded_cache():
    """generate(cuda_graph=True) (static decode; on the CPU the graph's eager stand-in) far past W_b gives the
    tokens of eager generate, and its windowed layers hold W_b retrieval slots."""
    model = windowed_model("mistral")
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, :9] = 0
    prompt = random_ids(2, 40, seed=6).masked_fill(mask == 0, 0)
    graphed = generate(model, None, prompt, attention_mask=mask, max_new_tokens=100, cuda_graph=True)
    eager = generate(model, None, prompt, attention_mask=mask, max_new_tokens=100)
    assert torch.equal(graphed.sequences, eager.sequences)
    assert_bounded(model, graphed.cache)


def test_cache_bytes_stop_growing_at_the_window():
    """After N >> W_b tokens every layer of an all-windowed model holds the same bytes as after W_b: the retrieval
    store is W_b slots, the local ring S + W, whatever N; a layer without a window keeps growing."""
    sizes = {}
    for family in ("mistral", "qwen2"):
        model = windowed_model(family)
        for length in (W_B, 4 * W_B, 10 * W_B):
            cache = HeadwiseCache(model)
            ids = random_ids(1, length, seed=7)
            prefill(model, cache, ids, torch.ones_like(ids), chunk=64)
            sizes[family, length] = cache.allocated_bytes(), cache.used_bytes(), cache
    for length in (4 * W_B, 10 * W_B):
        assert sizes["mistral", length][:2] == sizes["mistral", W_B][:2]
    _, _, cache = sizes["mistral", 10 * W_B]
    layer = cache.store[0]
    batch, n_r, _, dim = layer.r_k.shape
    per_slot = (2 * dim + layer.r_idx.shape[-1]) * layer.r_k.element_size()
    ring = (16 + 2) * (2 * layer.l_k.shape[1] * dim * layer.l_k.element_size() + layer.l_pos.element_size())
    retrieval = W_B * (n_r * per_slot + layer.r_pos.element_size())
    assert batch == 1 and cache.allocated_bytes() == len(cache.store) * (retrieval + ring)
    assert cache.used_bytes() == len(cache.store) * (W_B * n_r * per_slot + 2 * layer.l_k.numel() * 4)
    assert layer.r_len == 10 * W_B
    used = sizes["qwen2", 10 * W_B][2].store
    assert used[0].r_len == 10 * W_B <= used[0].r_pos.shape[1]
    assert used[1].r_pos.shape[1] == used[2].r_pos.shape[1] == W_B
    assert sizes["qwen2", 10 * W_B][1] > sizes["qwen2", 4 * W_B][1]  # layer 0 (no window) keeps every token


def test_fill_random_fills_a_ring_past_the_window():
    model = windowed_model("qwen2")
    cache = HeadwiseCache(model)
    cache.fill_random(model, 5 * W_B + 3)
    assert_bounded(model, cache)
    ring = cache.store[1]
    kept = torch.arange(4 * W_B + 3, 5 * W_B + 3)
    assert torch.equal(ring.r_pos[0].sort().values, kept) and torch.equal(ring.r_pos[0, kept % W_B], kept)
    assert torch.equal(cache.store[0].r_pos[0, : 5 * W_B + 3], torch.arange(5 * W_B + 3))


def test_short_contexts_keep_the_appended_store_below_the_window():
    """Until the context outgrows W_b the windowed layers' store is appended as before, never above W_b slots."""
    model = windowed_model("mistral")
    cache = HeadwiseCache(model)
    ids = random_ids(1, W_B, seed=8)
    got = through_cache(model, cache, ids, torch.ones_like(ids), [(0, 20), (20, W_B)])
    torch.testing.assert_close(got, full_forward(model, ids), atol=1e-4, rtol=0)
    for layer in cache.store:
        assert layer.r_pos.shape[1] == W_B == layer.r_len and torch.equal(layer.r_pos[0], torch.arange(W_B))


def test_convert_no_longer_warns_about_windowed_retrieval_caches():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        windowed_model("mistral")
        windowed_model("qwen2")


def test_kv_geometry_counts_windowed_retrieval_heads_as_the_cache_holds_them():
    """KVGeometry with the windowed layers' retrieval heads (``retrieval_windows``) gives the bytes the cache
    reports after N >> W_b tokens; without them it counts every token of theirs."""
    from rtpurbo.memory import KVGeometry

    model = windowed_model("mistral")
    cache = HeadwiseCache(model)
    ids = random_ids(1, 10 * W_B, seed=9)
    prefill(model, cache, ids, torch.ones_like(ids), chunk=100)
    layers, n_kv, _, head_dim = geometry(model.config)
    n_r = sum(len(m.retrieval_heads) for m in _modules(model))
    index_dim = cache.store[0].r_idx.shape[-1]
    shape = (layers, n_kv, head_dim, n_r, 16, 2, index_dim, 4)
    bounded = KVGeometry(*shape, retrieval_windows=(W_B,) * n_r)
    assert bounded.sparse_bytes(10 * W_B) == cache.used_bytes() == bounded.sparse_bytes(100 * W_B)
    assert KVGeometry(*shape).sparse_bytes(10 * W_B) > cache.used_bytes()
    with pytest.raises(ValueError, match="retrieval_windows"):
        KVGeometry(*shape, retrieval_windows=(W_B,) * (n_r + 1))


def test_eval_and_quickstart_count_the_windowed_retrieval_cache():
    """rtpurbo.converted.kv_geometry (eval's and quickstart's KV bytes) gives each retrieval KV head on a windowed
    base layer its base window, as the head-wise cache holds it."""
    from rtpurbo.converted import kv_geometry
    from rtpurbo.eval.suite import kv_bytes_per_token

    model = tiny_model("mistral", sliding_window=48)
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2))
    geo = kv_geometry(model)
    assert geo.retrieval_windows == (48,) * model.rtpurbo_plan.num_retrieval()
    assert geo.sparse_bytes(10_000) == geo.sparse_bytes(1_000)  # bounded once past the windows
    assert kv_bytes_per_token(model, "sparse", 10_000) * 10_000 == geo.sparse_bytes(10_000)


def test_graphed_steps_of_an_all_windowed_model_run_past_the_static_capacity():
    """Every layer of Mistral is windowed, so every store is bounded (rings): the graphed decoder (its eager stand-in
    on the CPU) keeps stepping past the static capacity, with the logits of one full forward."""
    from rtpurbo.decode_graph import GraphedDecoder

    model = windowed_model("mistral")
    ids = random_ids(1, 160, seed=8)
    cache = HeadwiseCache(model)
    prefill(model, cache, ids[:, :30], torch.ones_like(ids[:, :30]), chunk=30)
    cache.static_decode(60)
    decoder = GraphedDecoder(model, cache, graph=False)
    with torch.no_grad():
        out = [decoder.step(ids[:, t:t + 1], torch.tensor([[t]])) for t in range(30, 160)]
    torch.testing.assert_close(torch.cat(out, dim=1), full_forward(model, ids)[:, 30:], atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU paths (flex / Triton window kernel in the chunk "
                                                          "layout, fused append, CUDA graphs) need a CUDA device")
def test_gpu_paths_keep_the_ring_exact():
    """On CUDA (fp16, impl flex): chunked prefill of a plain prompt past W_b (the Triton window kernel's chunk layout
    with no sinks for the retrieval ring) against one full forward, and generate(cuda_graph=True) (fused append into
    the ring, CUDA graphs) against eager generate, far past W_b."""
    model = windowed_model("mistral", impl="flex").cuda().half()
    ids = random_ids(1, 256, seed=9).cuda()
    cache = HeadwiseCache(model)
    got = through_cache(model, cache, ids, torch.ones_like(ids), chunks(256, 64))
    want = full_forward(model, ids)
    assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 5e-3
    assert_bounded(model, cache)
    prompt = ids[:, :40]
    graphed = generate(model, None, prompt, max_new_tokens=120, cuda_graph=True)
    eager = generate(model, None, prompt, max_new_tokens=120)
    assert torch.equal(graphed.sequences[:, :60], eager.sequences[:, :60])  # fp16: later tokens may part at near-ties
    assert_bounded(model, graphed.cache)
