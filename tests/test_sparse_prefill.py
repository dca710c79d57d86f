"""Sparse prefill of retrieval heads (``retrieval_prefill="sparse"``) in a converted model.

* the reference rule (:func:`rtpurbo.ops.reference.select_blocks`): top-p 1 keeps every visible block;
  the sinks and the local band are always kept; a smaller top-p keeps fewer blocks;
* block scores (:mod:`rtpurbo.ops.block_scores`): ``mass`` keeps a needle's block that ``pooled``
  averages away, and computing it in chunks of query blocks changes nothing;
* the model: top-p 1 gives the dense prefill's logits exactly; a chunked prefill through the
  head-wise cache (chunks of whole blocks) gives the one-shot prefill's logits; the cache reports
  the fraction of key blocks kept;
* stage 2 can train the student with it.
"""
from __future__ import annotations

import pytest
import torch

from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import SparseConfig
from rtpurbo.convert import convert
from rtpurbo.ops import reference
from rtpurbo.testing import tiny_model

from .conftest import random_ids
from .test_cache import mixed_plan


def test_selection_keeps_sinks_band_and_shrinks_with_top_p():
    torch.manual_seed(0)
    q_idx, k_idx = torch.randn(1, 2, 1024, 16), torch.randn(1, 2, 1024, 16)
    pos = torch.arange(1024)[None]
    kept = {p: reference.select_blocks(q_idx, k_idx, pos, pos, block=64, top_p=p, sinks=4, band=100)
            for p in (0.3, 0.9, 1.0)}
    causal = torch.ones(16, 16).tril().bool()
    assert torch.equal(kept[1.0][0, 0], causal)
    for blocks in kept.values():
        assert blocks[..., :, 0].all()  # the sink block
        assert blocks.diagonal(dim1=-2, dim2=-1).all() and blocks.diagonal(-1, dim1=-2, dim2=-1).all()  # the band
        assert not (blocks & ~causal).any()
    assert kept[0.3].sum() < kept[0.9].sum() < kept[1.0].sum()
    with pytest.raises(ValueError, match="band"):
        reference.select_blocks(q_idx, k_idx, pos, pos, block=64, top_p=0.5, band=0)


def _needle_case():
    """Queries all along u; every key against u except one needle key (position 300, block 4 of 64 slots)
    along 5u, whose block's other keys lean a little further against u than the rest of the context."""
    u = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(1)), dim=0)
    q_idx = (2 * u).expand(1, 1, 1024, 16).clone()
    k_idx = (-u).expand(1, 1, 1024, 16).clone() + 0.01 * torch.randn(1, 1, 1024, 16)
    k_idx[0, 0, 256:320] = -1.2 * u
    k_idx[0, 0, 300] = 5 * u
    return q_idx, k_idx, torch.arange(1024)[None]


@pytest.mark.parametrize("scoring, keeps_needle", [("pooled", False), ("mass", True)])
def test_mass_scoring_keeps_the_needle_block_that_pooling_averages_away(scoring, keeps_needle):
    q_idx, k_idx, pos = _needle_case()
    kept = reference.select_blocks(q_idx, k_idx, pos, pos, block=64, top_p=0.3, sinks=4, band=64, scoring=scoring)
    assert bool(kept[0, 0, 15, 4]) == keeps_needle  # the last query block, the needle's key block
    if scoring == "mass":
        assert kept[0, 0, 15, 1:14].sum() == 1  # the needle's block holds nearly all the mass: nothing else
    with pytest.raises(ValueError, match="scoring"):
        reference.select_blocks(q_idx, k_idx, pos, pos, block=64, top_p=1.0, scoring="max")


def test_block_mass_in_chunks_equals_one_pass_and_is_a_distribution():
    from rtpurbo.ops import block_scores

    torch.manual_seed(3)
    q_idx, k_idx = torch.randn(2, 3, 700, 16), torch.randn(2, 3, 700, 16)
    pos = torch.arange(700).repeat(2, 1)
    pos[1, :150] = -1  # a left-padded row
    lo, hi, any_ = block_scores.block_ranges(pos, 64)
    candidates = (any_[:, None, :, None] & any_[:, None, None, :] & (lo[:, None, None, :] <= hi[:, None, :, None]))
    one = block_scores.block_mass(q_idx, k_idx, pos, pos, candidates, 64)
    chunked = block_scores.block_mass(q_idx, k_idx, pos, pos, candidates, 64, chunk_elements=1)
    assert torch.equal(one, chunked)
    mass = one.exp().sum(-1)  # over the candidates of each query block that has any
    has = candidates.any(-1).expand_as(mass)
    torch.testing.assert_close(mass[has], torch.ones_like(mass[has]), rtol=0, atol=1e-5)
    assert (one[~candidates.expand_as(one)] == float("-inf")).all()


def _model(family: str, **sparse):
    model = tiny_model(family, num_key_value_heads=2) if family == "qwen3" else tiny_model(family)
    convert(model, mixed_plan(model), SparseConfig(window=64, sinks=2, retrieval_prefill="sparse", prefill_band=64,
                                                   prefill_min_blocks=0, impl="sdpa", **sparse))
    return model


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_top_p_1_is_the_dense_prefill(family):
    model = _model(family, prefill_top_p=1.0)
    ids = random_ids(2, 900)
    mask = torch.ones_like(ids)
    mask[1, :70] = 0
    with torch.no_grad():
        sparse = model(ids, attention_mask=mask, use_cache=False).logits
        model.rtpurbo_sparse.retrieval_prefill = "dense"
        dense = model(ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(sparse, dense, rtol=0, atol=0)


@pytest.mark.parametrize("scoring", ["pooled", "mass"])
def test_chunked_sparse_prefill_equals_one_shot_and_reports_the_kept_fraction(scoring):
    model = _model("llama", prefill_top_p=0.5, prefill_scoring=scoring)
    ids = random_ids(1, 1280, seed=4)
    with torch.no_grad():
        one_shot = model(ids, use_cache=False).logits
        model.rtpurbo_sparse.retrieval_prefill = "dense"
        dense = model(ids, use_cache=False).logits
        model.rtpurbo_sparse.retrieval_prefill = "sparse"
        cache = HeadwiseCache(model)
        chunks = [model(ids[:, start : start + 256], use_cache=True, **{cache_kwarg(): cache}).logits
                  for start in range(0, 1280, 256)]
    # fp32 summed in another order per chunk (2e-5 apart at most on some CPUs); skipping blocks moves logits by > 1e-3
    torch.testing.assert_close(torch.cat(chunks, 1), one_shot, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(one_shot, dense, atol=1e-3)  # top-p 0.5 skipped blocks
    fraction = cache.stats.summary()["prefill_block_fraction"]
    assert 0 < fraction < 1


def test_stage2_can_train_the_student_with_sparse_prefill():
    from rtpurbo.train.stage2_distill import DistillSettings, topp_prefill

    model = _model("llama", prefill_top_p=0.5)
    with topp_prefill(model, DistillSettings(student_prefill="sparse").student_prefill):
        assert model.rtpurbo_sparse.retrieval_prefill == "sparse"
    assert model.rtpurbo_sparse.retrieval_prefill == "sparse"
    with pytest.raises(ValueError, match="student_prefill"):
        DistillSettings(student_prefill="dense")


def test_stage2_student_scores_blocks_as_asked_and_restores_the_model():
    from rtpurbo.train.stage2_distill import DistillSettings, topp_prefill

    model = _model("llama", prefill_top_p=0.5)
    settings = DistillSettings(student_prefill="sparse", student_scoring="mass")
    with topp_prefill(model, settings.student_prefill, settings.student_scoring):
        assert model.rtpurbo_sparse.prefill_scoring == "mass"
    assert model.rtpurbo_sparse.prefill_scoring == "pooled"
    with topp_prefill(model, "sparse"):  # None: the model's own
        assert model.rtpurbo_sparse.prefill_scoring == "pooled"
    with pytest.raises(ValueError, match="student_scoring"):
        DistillSettings(student_scoring="max")


def test_prefill_scoring_is_a_checked_setting():
    assert SparseConfig(prefill_scoring="mass").to_dict()["prefill_scoring"] == "mass"
    assert SparseConfig.from_dict({"window": 64}).prefill_scoring == "pooled"  # artifacts saved before it
    with pytest.raises(ValueError, match="prefill_scoring"):
        SparseConfig(prefill_scoring="max")


def test_a_dense_tail_as_long_as_the_prompt_is_the_dense_prefill():
    """prefill_dense_tail reaches the attention: covering the whole prompt, top-p 0.5 gives the dense logits."""
    model = _model("llama", prefill_top_p=0.5, prefill_dense_tail=900)
    ids = random_ids(1, 900, seed=6)
    with torch.no_grad():
        tail = model(ids, use_cache=False).logits
        model.rtpurbo_sparse.prefill_dense_tail = 0
        sparse = model(ids, use_cache=False).logits
        model.rtpurbo_sparse.retrieval_prefill = "dense"
        dense = model(ids, use_cache=False).logits
    torch.testing.assert_close(tail, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sparse, dense, atol=1e-3)
    with pytest.raises(ValueError, match="prefill_dense_tail"):
        SparseConfig(prefill_dense_tail=-1)


def test_the_dense_tail_covers_the_prompts_last_tokens_whatever_the_chunks():
    """rtpurbo.generate.prefill tells the cache where the prompt ends: a dense tail of 300 spans the last two chunks
    of 256 and the next token's logits equal a one-chunk prefill's; with each chunk's own tail they do not."""
    from rtpurbo.generate import prefill

    model = _model("llama", prefill_top_p=0.5, prefill_scoring="mass", prefill_dense_tail=300)
    ids = random_ids(1, 1281, seed=7)
    mask = torch.ones_like(ids)

    def next_logits(chunk: int, per_chunk_tails: bool = False) -> torch.Tensor:
        cache = HeadwiseCache(model)
        if per_chunk_tails:  # as a caller that feeds chunks itself, without saying where the prompt ends
            for start in range(0, 1280, chunk):
                model(ids[:, start : start + chunk], use_cache=True, **{cache_kwarg(): cache})
        else:
            prefill(model, cache, ids[:, :-1], mask[:, :-1], chunk)
            assert cache.prompt_slots is None  # only while prefilling
        return model(ids[:, -1:], use_cache=True, **{cache_kwarg(): cache}).logits[:, -1]

    with torch.no_grad():
        one_chunk, chunked, per_chunk = next_logits(1280), next_logits(256), next_logits(256, per_chunk_tails=True)
    torch.testing.assert_close(chunked, one_chunk, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(per_chunk, one_chunk, atol=1e-3)
