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
    settings = dict(window=64, sinks=2, retrieval_prefill="sparse", prefill_band=64, prefill_min_blocks=0, impl="sdpa")
    convert(model, mixed_plan(model), SparseConfig(**{**settings, **sparse}))
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
    from rtpurbo.convert import prefill_mode
    from rtpurbo.train.stage2_distill import DistillSettings

    model = _model("llama", prefill_top_p=0.5)
    with prefill_mode(model, DistillSettings(student_prefill="sparse").student_prefill):
        assert model.rtpurbo_sparse.retrieval_prefill == "sparse"
    assert model.rtpurbo_sparse.retrieval_prefill == "sparse"
    with pytest.raises(ValueError, match="student_prefill"):
        DistillSettings(student_prefill="dense")


def test_stage2_student_scores_blocks_as_asked_and_restores_the_model():
    from rtpurbo.convert import prefill_mode
    from rtpurbo.train.stage2_distill import DistillSettings

    model = _model("llama", prefill_top_p=0.5)
    settings = DistillSettings(student_prefill="sparse", student_scoring="mass")
    with prefill_mode(model, settings.student_prefill, settings.student_scoring):
        assert model.rtpurbo_sparse.prefill_scoring == "mass"
    assert model.rtpurbo_sparse.prefill_scoring == "pooled"
    with prefill_mode(model, "sparse"):  # None: the model's own
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
    """rtpurbo.prefill.prefill tells the cache where the prompt ends: a dense tail of 300 spans the last two chunks
    of 256 and the next token's logits equal a one-chunk prefill's; with each chunk's own tail they do not."""
    from rtpurbo.prefill import prefill

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


def test_block_layout_puts_each_token_at_its_positions_slot():
    from rtpurbo.ops import block_layout

    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [-1, -1, -1, 0, 1, 2, 3, 4], [-1, 5, 6, -1, 7, 8, 9, 10]])
    layout = block_layout.lay_out(pos, 4)
    assert layout.pos.shape == (3, 12)  # L + block - 1, rounded up to a block
    assert layout.pos[0, :8].tolist() == list(range(8)) and layout.pos[1, :5].tolist() == list(range(5))
    assert layout.pos[2, :7].tolist() == [-1, 5, 6, 7, 8, 9, 10]  # base 4: position p at slot p - 4
    x = torch.randn(3, 2, 8, 5)
    laid = block_layout.take(x, layout)
    assert torch.equal(laid[1, :, 2], x[1, :, 5]) and torch.equal(laid[2, :, 3], x[2, :, 4])
    assert laid[2, :, 0].abs().sum() == 0  # no token sits there
    back = block_layout.put_back(laid, layout)
    assert torch.equal(back, x.masked_fill((pos < 0)[:, None, :, None], 0))
    assert block_layout.is_identity(block_layout.lay_out(pos[:1], 4))
    assert not block_layout.is_identity(layout)


def test_sparse_prefill_blocks_are_positions_whatever_the_padding(monkeypatch):
    """A left-padded row of a batch gets the blocks (so the selection and the logits) of the prompt alone; blocks
    of 16 keep the prompts short, the code path is the one of 128."""
    from rtpurbo.generate import generate
    from rtpurbo.ops import api

    monkeypatch.setattr(api, "BLOCK_SIZE", 16)
    model = _model("llama", window=8, prefill_top_p=0.3, prefill_band=4)
    ids = random_ids(2, 120, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, use_cache=False).logits
        alone = model(ids[1:, 5:], use_cache=False).logits
        model.rtpurbo_sparse.retrieval_prefill = "dense"
        dense = model(ids[1:, 5:], use_cache=False).logits
        model.rtpurbo_sparse.retrieval_prefill = "sparse"
    torch.testing.assert_close(batch[1:, 5:], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(alone, dense, atol=1e-3)  # blocks were skipped
    in_batch = generate(model, None, ids, mask, max_new_tokens=5).sequences[1, 120:]
    by_itself = generate(model, None, ids[1:, 5:], None, max_new_tokens=5).sequences[0, 115:]
    assert torch.equal(in_batch, by_itself)
    q = torch.randn(2, 2, 120, 16)
    idx = torch.randn(2, 2, 120, 4)
    with pytest.raises(ValueError, match="not an unpadded prompt's positions"):  # a false claim is caught on the CPU
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, -1)
        api.sparse_prefill(q, q, q, positions, positions, idx, idx, top_p=0.5, aligned=True, impl="reference")
    with pytest.raises(ValueError, match="not an unpadded prompt's positions"):  # queries not the keys' last ones
        keys = torch.arange(48).repeat(2, 1)
        k3 = torch.randn(2, 2, 48, 16)
        api.sparse_prefill(q[:, :, :16], k3, k3, keys[:, 16:32], keys, idx[:, :, :16], torch.randn(2, 2, 48, 4),
                           top_p=0.5, aligned=True, impl="reference")


def test_prefill_chunks_of_any_size_give_the_one_shot_sparse_prefill(monkeypatch):
    """rtpurbo.prefill.prefill cuts a sparse-prefill prompt on whole blocks, so a chunk size that is not a multiple
    of the block (or smaller than one) still gives the one-shot result."""
    from rtpurbo.generate import generate
    from rtpurbo.prefill import chunk_bounds
    from rtpurbo.ops import api

    assert chunk_bounds(300, 20, 0, 128) == [(0, 128), (128, 256), (256, 300)]
    assert chunk_bounds(300, 200, 5, 128) == [(0, 123), (123, 300)]  # cut where the cache holds 128 slots
    assert chunk_bounds(300, 300, 5, 128) == [(0, 300)]  # a prompt that fits is never cut
    assert chunk_bounds(10, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    monkeypatch.setattr(api, "BLOCK_SIZE", 16)
    model = _model("llama", window=8, prefill_top_p=0.3, prefill_band=4)
    ids = random_ids(1, 120, seed=3)
    one_shot = generate(model, None, ids, None, max_new_tokens=6).sequences
    for chunk in (20, 50, 7):
        assert torch.equal(generate(model, None, ids, None, max_new_tokens=6, prefill_chunk=chunk).sequences, one_shot)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton sparse-prefill kernels run on a CUDA device")
@pytest.mark.parametrize("scoring", ["pooled", "mass"])
def test_triton_sparse_prefill_kernels_give_the_flex_logits_in_the_model(scoring):
    """The model's unpadded prompt, one shot and in chunks of 512 (later chunks over cached keys), on the Triton
    kernels (``set_sparse_prefill_kernel("triton")``) against the flex path: the same kept blocks and logits within
    fp16 rounding."""
    from rtpurbo.ops import flex

    model = _model("llama", prefill_top_p=0.5, prefill_scoring=scoring, impl="flex").cuda().half()
    ids = random_ids(1, 1280, seed=4).cuda()

    def run():
        with torch.no_grad():
            one_shot = model(ids, use_cache=False).logits
            cache = HeadwiseCache(model)
            chunks = [model(ids[:, lo:lo + 512], use_cache=True, **{cache_kwarg(): cache}).logits
                      for lo in range(0, ids.shape[1], 512)]
        return one_shot, torch.cat(chunks, dim=1), cache.stats.summary()["prefill_block_fraction"]

    want = run()
    previous = flex.set_sparse_prefill_kernel("triton")
    try:
        got = run()
    finally:
        flex.set_sparse_prefill_kernel(previous)
    assert got[2] == want[2]
    for g, w in zip(got[:2], want[:2]):
        assert ((g.float() - w.float()).norm() / w.float().norm()).item() < 5e-3
