"""The plan cost model on a base model with its own sliding windows (Mistral's ``sliding_window``, Qwen's windowed
layers): the dense model and the plan's retrieval heads on a windowed layer attend within ``W_b`` (no sinks) and
cache at most ``W_b`` tokens, so pairs, decode bytes and KV bytes shrink on both sides; hand-computed values."""
import dataclasses

import numpy as np
import pytest

from rtpurbo.commands import kv_report
from rtpurbo.config import HeadPlan, PlanMismatch, SparseConfig
from rtpurbo.convert import check_local_windows, convert, is_converted
from rtpurbo.families import geometry
from rtpurbo.memory import KVGeometry
from rtpurbo.ops.semantics import causal_pairs, local_pairs
from rtpurbo.plan.cost import ModelShape, plan_cost
from rtpurbo.plan.search import SearchSettings, search_plans
from rtpurbo.testing import tiny_model

from .test_plan_search import tune_data

# 4 layers, 2 KV heads, 4 query heads (G = 2), head_dim 16: a (query, key) pair of one KV head costs 4 * 16 * 2 = 128
# FLOPs, one token of one KV head 2 * 16 * 2 = 64 bytes (K and V, bf16), a retrieval token 64 + 16 * 2 = 96 bytes
SHAPE = ModelShape(num_layers=4, num_kv_heads=2, num_q_heads=4, head_dim=16, layer_params=10_000, head_params=5_000)
PER_LAYER = (1, 1, 0, 2)  # the plan's retrieval KV heads by layer
LINEAR = 2 * 10_000 * 256  # prefill FLOPs of the projections and MLPs over 256 tokens
WEIGHTS = (10_000 + 5_000) * 2  # decode bytes of the weights


def windowed(*windows):
    return dataclasses.replace(SHAPE, base_windows=windows)


def formulas_before_base_windows(shape, n_retrieval, window, sinks, context, index_dim=16, keep=1.0):
    """plan_cost as it was before it knew base windows (every layer full causal)."""
    kv = KVGeometry(shape.num_layers, shape.num_kv_heads, shape.head_dim, n_retrieval, window, sinks, index_dim, 2)
    n_local = shape.num_layers * shape.num_kv_heads - n_retrieval
    per_pair = 4 * shape.head_dim * (shape.num_q_heads // shape.num_kv_heads)
    linear = 2 * shape.layer_params * context
    dense_attention = per_pair * shape.num_layers * shape.num_kv_heads * causal_pairs(context)
    plan_attention = per_pair * (n_retrieval * causal_pairs(context) + n_local * local_pairs(context, window, sinks))
    row = 2 * shape.head_dim * 2
    weights = (shape.layer_params + shape.head_params) * 2
    dense_read = shape.num_layers * shape.num_kv_heads * context * row
    plan_read = n_retrieval * context * (keep * row + (index_dim * 2 if keep < 1 else 0))
    plan_read += n_local * min(context, window + sinks) * row
    return {"context": context, "kv_bytes_per_token": kv.sparse_bytes(context) / context,
            "dense_kv_bytes_per_token": kv.dense_bytes(context) / context,
            "kv_ratio": kv.dense_bytes(context) / kv.sparse_bytes(context),
            "prefill_speedup": (linear + dense_attention) / (linear + plan_attention),
            "decode_speedup": (weights + dense_read) / (weights + plan_read)}


@pytest.mark.parametrize("keep", [1.0, 0.25])
@pytest.mark.parametrize("per_layer", [(0, 0, 0, 0), PER_LAYER, (2, 2, 2, 2)])
@pytest.mark.parametrize("window,sinks,context", [(32, 4, 256), (64, 0, 1000), (512, 4, 256)])
def test_without_base_windows_nothing_changes(per_layer, window, sinks, context, keep):
    want = formulas_before_base_windows(SHAPE, sum(per_layer), window, sinks, context, keep=keep)
    assert plan_cost(SHAPE, sum(per_layer), window, sinks, context, keep=keep) == want
    assert plan_cost(SHAPE, sum(per_layer), window, sinks, context, keep=keep, retrieval_per_layer=per_layer) == want
    assert plan_cost(windowed(None, None, None, None), sum(per_layer), window, sinks, context, keep=keep,
                     retrieval_per_layer=per_layer) == want


@pytest.mark.parametrize("base_window", [256, 300, 100_000])
def test_a_base_window_beyond_the_context_changes_nothing(base_window):
    got = plan_cost(windowed(None, base_window, None, base_window), 4, 32, 4, 256, retrieval_per_layer=PER_LAYER)
    assert got == pytest.approx(formulas_before_base_windows(SHAPE, 4, 32, 4, 256), rel=1e-12)


def test_a_base_window_inside_the_context_costs_its_pairs_and_tokens():
    """Layers 1 and 3 attend over W_b = 64 at context 256; the plan has W = 32, S = 4 and PER_LAYER retrieval heads:
    1 on a full layer, 3 on windowed ones, 4 local."""
    causal = 256 * 257 // 2  # 32896 pairs of one full head
    base = 64 * 65 // 2 + (256 - 64) * 64  # 14368 pairs within W_b = 64 (no sinks)
    local = 32 * 33 // 2 + (256 - 32) * 32 + (1 + 2 + 3 + 4) + (256 - 32 - 4) * 4  # 8586: window 32 + 4 sinks
    dense_pairs = 2 * (2 * causal + 2 * base)
    plan_pairs = 1 * causal + 3 * base + 4 * local
    dense_read = 64 * 2 * (256 + 64 + 256 + 64)  # every cached K, V: 64 tokens on the windowed layers
    plan_read = 64 * (1 * 256 + 3 * 64 + 4 * (32 + 4))
    dense_kv = dense_read
    plan_kv = 96 * (1 * 256 + 3 * 64) + 64 * 4 * (32 + 4)
    got = plan_cost(windowed(None, 64, None, 64), 4, 32, 4, 256, retrieval_per_layer=PER_LAYER)
    assert got == {
        "context": 256,
        "kv_bytes_per_token": plan_kv / 256,
        "dense_kv_bytes_per_token": dense_kv / 256,
        "kv_ratio": dense_kv / plan_kv,
        "prefill_speedup": (LINEAR + 128 * dense_pairs) / (LINEAR + 128 * plan_pairs),
        "decode_speedup": (WEIGHTS + dense_read) / (WEIGHTS + plan_read),
    }
    # 3 of the 4 retrieval heads sit on windowed layers: the plan saves nearly what dense saves, and more than the
    # model without windows credits it with
    unwindowed = plan_cost(SHAPE, 4, 32, 4, 256, retrieval_per_layer=PER_LAYER)
    assert all(got[key] > unwindowed[key] for key in ("prefill_speedup", "decode_speedup", "kv_ratio"))
    # keep < 1 thins (and adds indexer keys to) only the full layer's retrieval head: windowed ones read every key
    thin = plan_cost(windowed(None, 64, None, 64), 4, 32, 4, 256, keep=0.25, retrieval_per_layer=PER_LAYER)
    assert thin["decode_speedup"] == (WEIGHTS + dense_read) / (WEIGHTS + plan_read - 256 * 64 + 256 * (16 + 32))


def test_windows_shrink_the_gains_of_a_plan_spread_over_the_layers():
    """One retrieval head per layer: the windowed layers' local heads save W_b - W pairs and slots instead of
    context - W, so every modelled gain shrinks, to hand-computed values."""
    got = plan_cost(windowed(None, 64, None, 64), 4, 32, 4, 256, retrieval_per_layer=(1, 1, 1, 1))
    unwindowed = plan_cost(SHAPE, 4, 32, 4, 256, retrieval_per_layer=(1, 1, 1, 1))
    causal, base, local = 32896, 14368, 8586  # pairs of one head: full, within W_b = 64, W = 32 + 4 sinks
    assert got["prefill_speedup"] == (LINEAR + 128 * 2 * (2 * causal + 2 * base)) / (
        LINEAR + 128 * (2 * causal + 2 * base + 4 * local))
    assert got["decode_speedup"] == (WEIGHTS + 64 * 2 * 640) / (WEIGHTS + 64 * (2 * 256 + 2 * 64 + 4 * 36))
    assert got["kv_ratio"] == 64 * 2 * 640 / (96 * (2 * 256 + 2 * 64) + 64 * 4 * 36)
    assert all(1 < got[key] < unwindowed[key] for key in ("prefill_speedup", "decode_speedup", "kv_ratio"))


def test_where_the_retrieval_heads_sit_matters_on_a_windowed_base():
    shape = windowed(None, 64, None, 64)
    on_full = plan_cost(shape, 2, 32, 4, 256, retrieval_per_layer=(1, 0, 1, 0))
    on_windowed = plan_cost(shape, 2, 32, 4, 256, retrieval_per_layer=(0, 1, 0, 1))
    assert on_windowed["kv_ratio"] > on_full["kv_ratio"]
    assert on_windowed["prefill_speedup"] > on_full["prefill_speedup"]
    assert on_windowed["decode_speedup"] > on_full["decode_speedup"]
    with pytest.raises(ValueError, match="needs retrieval_per_layer"):
        plan_cost(shape, 2, 32, 4, 256)
    with pytest.raises(ValueError, match="does not give 3 retrieval KV heads"):
        plan_cost(shape, 3, 32, 4, 256, retrieval_per_layer=(1, 0, 1, 0))
    with pytest.raises(ValueError, match="3 base_windows for 4 layers"):
        windowed(None, 64, 64)


def test_a_fully_windowed_base_at_its_own_window_gains_nothing_but_pays_indexer_keys_and_sinks():
    """Every layer attends over W_b = 32 and the plan's local heads use W = W_b: retrieval heads cost what dense
    heads do, local heads 4 sinks more, so both speedups sit just below 1 and the KV ratio is the dense bytes over
    the dense bytes plus the retrieval heads' indexer keys and the local heads' sinks."""
    got = plan_cost(windowed(32, 32, 32, 32), 4, 32, 4, 256, retrieval_per_layer=PER_LAYER)
    base = 32 * 33 // 2 + (256 - 32) * 32  # 7696 pairs within 32 tokens
    local = base + (1 + 2 + 3 + 4) + (256 - 32 - 4) * 4  # 8586: the same window plus 4 sinks
    dense_kv = 8 * 32 * 64  # 16384: 32 tokens of every KV head
    plan_kv = dense_kv + 4 * 32 * 16 * 2 + 4 * 4 * 64  # + 4096 indexer-key bytes + 1024 sink bytes
    assert got["kv_ratio"] == 16384 / 21504 == dense_kv / plan_kv
    assert got["prefill_speedup"] == (LINEAR + 128 * 8 * base) / (LINEAR + 128 * (4 * base + 4 * local))
    assert got["decode_speedup"] == (WEIGHTS + dense_kv) / (WEIGHTS + dense_kv + 4 * 4 * 64)
    assert 0.95 < got["prefill_speedup"] < 1 and 0.97 < got["decode_speedup"] < 1


def test_kv_geometry_dense_windows_are_what_kv_report_applies():
    geo = KVGeometry(4, 2, 16, 3, 32, 4, 16, retrieval_windows=(64,))
    with_windows = dataclasses.replace(geo, dense_windows=(None, 64, None, 64))
    assert geo.dense_bytes(256) == 2 * 4 * 2 * 16 * 2 * 256
    assert with_windows.dense_bytes(256) == 2 * 2 * 16 * 2 * (256 + 64 + 256 + 64)
    assert with_windows.dense_bytes(50) == geo.dense_bytes(50)  # inside every window
    assert with_windows.sparse_bytes(256) == geo.sparse_bytes(256)  # the head-wise side is unchanged
    rows = kv_report(geo, [None, 64, None, 64])
    assert rows == with_windows.report()
    assert [r["dense_bytes"] for r in rows] == [2 * 2 * 16 * 2 * (2 * c + 2 * 64) for c in (8192, 131072, 1048576)]
    assert all(r["ratio"] == r["dense_bytes"] / r["sparse_bytes"] for r in rows)
    assert kv_report(geo, []) == kv_report(geo, [None] * 4) == geo.report()
    with pytest.raises(ValueError, match="3 dense_windows for 4 layers"):
        dataclasses.replace(geo, dense_windows=(None, 64, 64))


def test_model_shape_reads_the_base_windows_of_base_and_converted_models():
    mistral = tiny_model("mistral", sliding_window=16, num_layers=3)
    assert ModelShape.of(mistral).base_windows == (16, 16, 16)
    layers, kv, q, _ = geometry(mistral.config)
    convert(mistral, HeadPlan(layers, kv, q, [[0], [], [1]]), SparseConfig(window=8, sinks=2))
    assert ModelShape.of(mistral).base_windows == (16, 16, 16)
    # Qwen2 windows layers from max_window_layers on; a converted layer records its window itself
    qwen = tiny_model("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1, num_layers=3)
    assert ModelShape.of(qwen).base_windows == (None, 16, 16)
    layers, kv, q, _ = geometry(qwen.config)
    convert(qwen, HeadPlan(layers, kv, q, [[0], [1], []]), SparseConfig(window=8, sinks=2))
    assert ModelShape.of(qwen).base_windows == (None, 16, 16)
    assert ModelShape.of(tiny_model("llama")).base_windows == (None, None)


def test_plan_search_costs_each_plan_on_its_layers_base_windows():
    model = tiny_model("mistral", sliding_window=16, num_layers=3)
    ranking = np.random.default_rng(0).random((3, 2)).tolist()
    result = search_plans(model, ranking, tune_data(), SearchSettings(ratios=[0.34], windows=[8], sinks=2),
                          progress=False)
    shape = ModelShape.of(model)  # converted, as the search costs it
    assert shape == ModelShape.of(tiny_model("mistral", sliding_window=16, num_layers=3))  # indexers not counted
    assert shape.base_windows == (16, 16, 16)
    row = result["rows"][0]
    plan = HeadPlan.from_dict(row["plan"])
    want = plan_cost(shape, 2, 8, 2, 64, retrieval_per_layer=[len(heads) for heads in plan.retrieval])
    assert {key: row[key] for key in want} == want
    assert row["dense_kv_bytes_per_token"] == 2 * 3 * 2 * 16 * 2 * 16 / 64  # 16 of the 64 tokens per layer


def test_plan_search_refuses_a_window_above_the_base_window_before_measuring(monkeypatch):
    """A candidate W above a windowed base's own window (which convert refuses) stops the search before its dense
    pass, naming the candidate; the model is left unconverted."""
    import rtpurbo.plan.search as search

    model = tiny_model("mistral", sliding_window=16, num_layers=3)
    ranking = np.random.default_rng(0).random((3, 2)).tolist()
    monkeypatch.setattr(search, "measure", lambda *a, **k: pytest.fail("measured before the window check"))
    with pytest.raises(PlanMismatch, match="candidate ratio 0.34, W 32: layer 0 .* sliding window of 16"):
        search_plans(model, ranking, tune_data(), SearchSettings(ratios=[0.34], windows=[8, 32], sinks=2),
                     progress=False)
    assert not is_converted(model)


def test_converted_qwen_layers_keep_their_base_window_for_convert_checks():
    """check_local_windows reads a converted Qwen2 layer's recorded window (the module no longer carries the base
    attention's sliding_window), so re-planning a converted model refuses W above it too."""
    qwen = tiny_model("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1, num_layers=3)
    layers, kv, q, _ = geometry(qwen.config)
    convert(qwen, HeadPlan(layers, kv, q, [[0], [1], []]), SparseConfig(window=8, sinks=2))
    with pytest.raises(PlanMismatch, match="layer 1 .* sliding window of 16"):
        check_local_windows(qwen, HeadPlan(layers, kv, q, [[0], [], []]), SparseConfig(window=32, sinks=2))
