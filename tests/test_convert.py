"""Conversion on tiny random models of every family."""
import pytest
import torch

from rtpurbo.config import HeadPlan, PlanMismatch, SparseConfig
from rtpurbo.convert import AlreadyConverted, apply_plan, convert
from rtpurbo.families import UnsupportedModel, family_of, geometry
from rtpurbo.testing import tiny_model

from .conftest import random_ids


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, use_cache=False, **kw).logits


def plan_for(model, retrieval):
    layers, n_kv, n_q, _ = geometry(model.config)
    return HeadPlan.uniform(layers, n_kv, n_q, retrieval)


def mixed_plan(model):
    layers, n_kv, n_q, _ = geometry(model.config)
    return HeadPlan(layers, n_kv, n_q, [[h for h in range(n_kv) if (h + l) % 2 == 0] for l in range(layers)])


def test_all_retrieval_equals_original(family):
    model = tiny_model(family)
    ids = random_ids(2, 97)
    want = logits(model, ids)
    convert(model, plan_for(model, True), SparseConfig(window=8, sinks=2))
    assert torch.allclose(logits(model, ids), want, atol=1e-5)


def test_all_retrieval_equals_original_with_left_padding(family):
    model = tiny_model(family)
    ids = random_ids(2, 40)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :11] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    want = logits(model, ids, attention_mask=mask, position_ids=pos)
    convert(model, plan_for(model, True), SparseConfig(window=8, sinks=2))
    got = logits(model, ids, attention_mask=mask, position_ids=pos)
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-5)


def test_window_wider_than_sequence_equals_original(family):
    model = tiny_model(family)
    ids = random_ids(1, 50)
    want = logits(model, ids)
    convert(model, plan_for(model, False), SparseConfig(window=64, sinks=4))
    assert torch.allclose(logits(model, ids), want, atol=1e-5)


def test_local_heads_change_the_output_and_match_reference_backend(family):
    model = tiny_model(family)
    ids = random_ids(2, 97)
    dense = logits(model, ids)
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2, impl="sdpa"))
    fast = logits(model, ids)
    model.rtpurbo_sparse.impl = "reference"
    ref = logits(model, ids)
    assert torch.allclose(fast, ref, atol=1e-4)
    assert not torch.allclose(fast[:, 20:], dense[:, 20:], atol=1e-3)  # the window really bites
    assert torch.allclose(fast[:, :16], dense[:, :16], atol=1e-5)  # before the window fills, nothing changes


def test_reorder_heads_computes_the_same_function(family):
    a, b = tiny_model(family), tiny_model(family)
    plan = mixed_plan(a)
    convert(a, plan, SparseConfig(window=16, sinks=2))
    convert(b, plan, SparseConfig(window=16, sinks=2, reorder_heads=True))
    ids = random_ids(1, 60)
    assert torch.allclose(logits(a, ids), logits(b, ids), atol=1e-5)
    layer = b.model.layers[0].self_attn
    assert layer.heads_contiguous and layer.retrieval_heads == list(range(len(plan.retrieval[0])))


def test_apply_plan_switches_roles_in_place():
    model = tiny_model("llama")
    ids = random_ids(1, 60)
    dense = logits(model, ids)
    convert(model, plan_for(model, False), SparseConfig(window=8, sinks=2))
    assert not torch.allclose(logits(model, ids), dense, atol=1e-3)
    apply_plan(model, plan_for(model, True))
    assert torch.allclose(logits(model, ids), dense, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model("llama")
    layers, n_kv, n_q, _ = geometry(model.config)
    with pytest.raises(PlanMismatch, match="model has"):
        convert(model, HeadPlan.uniform(layers + 1, n_kv, n_q, True), SparseConfig())
    convert(model, plan_for(model, True), SparseConfig())
    with pytest.raises(AlreadyConverted):
        convert(model, plan_for(model, True), SparseConfig())

    class Config:
        model_type = "gpt2"

    with pytest.raises(UnsupportedModel, match="llama, mistral, qwen2, qwen3, qwen3_moe"):
        family_of(Config())


def test_local_heads_never_see_further_than_a_base_window():
    """Mistral with its own sliding window: local heads at a wider W would see context the model never saw."""
    model = tiny_model("mistral", sliding_window=16)
    with pytest.raises(PlanMismatch, match="sliding window of 16 tokens.*--window 16"):
        convert(model, mixed_plan(model), SparseConfig(window=32, sinks=2))
    assert type(model.model.layers[0].self_attn).__name__ == "MistralAttention"  # untouched
    convert(model, plan_for(model, True), SparseConfig(window=32, sinks=2))  # no local heads: nothing to narrow
    model = tiny_model("mistral", sliding_window=16)
    ids = random_ids(1, 40)
    convert(model, mixed_plan(model), SparseConfig(window=16, sinks=2))
    assert torch.isfinite(logits(model, ids)).all()


def test_dynamic_cache_is_refused_with_a_clear_message():
    model = tiny_model("llama")
    convert(model, plan_for(model, True), SparseConfig())
    from transformers import DynamicCache

    with pytest.raises(TypeError, match="head-wise cache"):
        model(random_ids(1, 5), past_key_values=DynamicCache(config=model.config), use_cache=True)


def test_unconvert_restores_the_base_model():
    model = tiny_model("qwen3")
    ids = random_ids(1, 40)
    dense = logits(model, ids)
    convert(model, plan_for(model, False), SparseConfig(window=8, sinks=2))
    from rtpurbo.convert import unconvert

    unconvert(model)
    assert torch.equal(logits(model, ids), dense)
    assert model.config._attn_implementation == "sdpa"
    convert(model, plan_for(model, True), SparseConfig(window=8, sinks=2))  # convertible again


def test_cpu_bf16_autocast_forward_with_both_roles():
    """Under CPU autocast the attention of each role comes out in bf16 while the merged buffer follows q: the
    merge casts (training with --precision bf16 on a CPU ran into index_copy_'s dtype check). The error budget is
    the dense model's own under the same autocast."""
    ids = random_ids(1, 24)
    errors = []
    for convert_it in (False, True):
        model = tiny_model("llama")
        if convert_it:
            convert(model, mixed_plan(model), SparseConfig(window=64, sinks=2))  # W covers the prompt: same function
        with torch.no_grad():
            want = model(ids, use_cache=False).logits
            with torch.autocast("cpu", dtype=torch.bfloat16):
                errors.append((model(ids, use_cache=False).logits.float() - want).abs().max().item())
    assert errors[1] <= 2 * errors[0]


def test_a_model_built_from_a_converted_models_config_says_how_to_fix_it():
    """convert() points the model's config at rtpurbo's attention; a dense model built from that same config object
    would call rtpurbo's attention hook, which says what happened and what to do."""
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(window=16))
    other = AutoModelForCausalLM.from_config(model.config)
    with pytest.raises(RuntimeError, match=r"config of a converted model.*deepcopy"):
        other(random_ids(1, 8))
    other.set_attn_implementation("sdpa")
    assert torch.isfinite(other(random_ids(1, 8)).logits).all()
