"""``SparseConfig.seqlen_threshold``: retrieval heads select only from that many cached tokens on.

Below it a decode step attends to every key of the retrieval heads (what top-p 1 computes); from
it on, to the indexer's top-p selection. The decision is the cache's (a host counter), so graphed
decode keeps one graph per kind of step and switches when the cache crosses the threshold.
"""
from __future__ import annotations

import pytest
import torch

from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.decode_graph import GraphedDecoder
from rtpurbo.generate import generate
from rtpurbo.prefill import prefill
from rtpurbo.testing import tiny_model

from .conftest import random_ids
from .test_cache import mixed_plan

PROMPT, STEPS, THRESHOLD = 20, 12, 25  # steps 1-5 below the threshold (19 prefilled + 1..5), 6-12 above


def _model(threshold: int, top_p: float = 0.6):
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(window=8, sinks=2, top_p=top_p, min_tokens=2, recent=2,
                                                   seqlen_threshold=threshold))
    return model


def _decode(model, graphed: bool = False):
    """Greedy STEPS tokens after a padded batch of 2: (logits (B, STEPS, V), selection samples per step, decoder)."""
    ids = random_ids(2, PROMPT, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    cache = HeadwiseCache(model)
    prefill(model, cache, ids[:, :-1], mask[:, :-1], PROMPT)
    cache.static_decode(PROMPT + STEPS)
    decoder = GraphedDecoder(model, cache, graph=False) if graphed else None
    token, position = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
    logits, samples = [], []
    for _ in range(STEPS):
        before = cache.stats.summary()["samples"]
        if decoder is None:
            out = model(token, position_ids=position, use_cache=True, **{cache_kwarg(): cache}).logits
        else:
            out = decoder.step(token, position)
        samples.append(cache.stats.summary()["samples"] - before)
        logits.append(out)
        token, position = out.argmax(-1), position + 1
    return torch.cat(logits, 1), samples, decoder


def test_below_the_threshold_retrieval_heads_see_every_key():
    logits, samples, _ = _decode(_model(THRESHOLD))
    full, _, _ = _decode(_model(THRESHOLD, top_p=1.0))
    always, always_samples, _ = _decode(_model(0))
    below = THRESHOLD - PROMPT  # steps whose cache (prompt - 1 + step) stays under the threshold
    assert samples[:below] == [0] * below and all(samples[below:])  # selection stats start at the threshold
    assert all(always_samples)
    torch.testing.assert_close(logits[:, :below], full[:, :below], rtol=0, atol=1e-5)
    assert not torch.allclose(always[:, :below], full[:, :below], atol=1e-3)  # top-p 0.6 does change them
    torch.testing.assert_close(logits[:, below:], _decode(_model(THRESHOLD))[0][:, below:], rtol=0, atol=0)


def test_graphed_decode_switches_kind_at_the_threshold():
    model = _model(THRESHOLD)
    eager, eager_samples, _ = _decode(model)
    graphed, samples, decoder = _decode(model, graphed=True)
    assert set(decoder.kinds) == {False, True} and decoder.graphs == 0  # CPU: the eager stand-in, two kinds
    assert samples == eager_samples
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-5)


def test_generate_uses_the_threshold_and_it_round_trips_through_headwise_config():
    model = _model(THRESHOLD)
    ids = random_ids(1, PROMPT, seed=7)
    short = generate(model, None, ids, max_new_tokens=3)
    assert short.cache.stats.summary()["samples"] == 0  # 19 + 3 < 25: never selects
    longer = generate(model, None, ids, max_new_tokens=10)
    assert longer.cache.stats.summary()["samples"] > 0
    exported = model.rtpurbo_plan.to_headwise_config(2, 8, model.rtpurbo_sparse.seqlen_threshold)
    _, settings = HeadPlan.from_headwise_config(exported, num_kv_heads=model.rtpurbo_plan.num_kv_heads)
    assert settings["seqlen_threshold"] == THRESHOLD


def test_threshold_must_not_be_negative():
    with pytest.raises(ValueError, match="seqlen_threshold"):
        SparseConfig(seqlen_threshold=-1)
