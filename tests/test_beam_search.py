"""Beam search and several sequences per prompt through the head-wise cache: the prompt is prefilled once, its rows
repeated as transformers repeats the prompt, and beams reorder the cache's rows."""
from __future__ import annotations

import pytest
import torch

from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.generate import generate
from rtpurbo.prefill import prefill
from rtpurbo.testing import tiny_model

from .conftest import random_ids


def _converted(family: str = "llama", top_p: float = 1.0):
    """A tiny model whose first layer's KV head 0 is a retrieval head; local heads at W 4 + 1 sink (shorter than the
    prompts, so the rings wrap). top_p 1: decode attends to every key, exactly what a forward without a cache
    computes; top_p < 1: the retrieval heads select from the first decode step on."""
    model = tiny_model(family)
    layers, num_kv, num_q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, num_kv, num_q, [[0]] + [[]] * (layers - 1)),
            SparseConfig(window=4, sinks=1, top_p=top_p, min_tokens=1, recent=1, seqlen_threshold=0))
    return model.eval()


def _padded(batch: int = 2, length: int = 16):
    ids = random_ids(batch, length, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding
    return ids, mask


BEAMS = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6, do_sample=False, top_p=None, top_k=None,
             temperature=None, pad_token_id=0, eos_token_id=None, output_scores=True, return_dict_in_generate=True)


def test_beam_search_through_the_cache_equals_beam_search_without_one(family):
    """top_p 1: beam search over the head-wise cache (prefill once, rows repeated, reordered every step) gives the
    sequences and scores of the same beam search recomputing every step from the whole sequence (use_cache=False)."""
    model = _converted(family)
    ids, mask = _padded()
    with torch.no_grad():
        cached = model.generate(ids, attention_mask=mask, **BEAMS)
        uncached = model.generate(ids, attention_mask=mask, use_cache=False, **BEAMS)
    assert cached.sequences.shape == (4, 22)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=1e-4, atol=1e-5)
    # the beams really differ and really were reordered: not one greedy sequence repeated
    assert not torch.equal(cached.sequences[0], cached.sequences[1])


def test_beams_of_a_batch_equal_each_prompt_alone_with_selection():
    """top_p 0.5 (the retrieval heads select at every step): the beams of a batch of two prompts are those of each
    prompt generated alone, so reordering moves each prompt's rows among its own beams only."""
    model = _converted(top_p=0.5)
    ids = random_ids(2, 16, seed=7)
    with torch.no_grad():
        both = model.generate(ids, **BEAMS).sequences
        alone = [model.generate(ids[i:i + 1], **BEAMS).sequences for i in range(2)]
    assert torch.equal(both, torch.cat(alone))


def test_several_samples_per_prompt_equal_the_prompt_repeated():
    """num_return_sequences=3 with sampling: the prompt prefilled once and its cache rows repeated samples what the
    prompt written three times samples, under the same seed (top_p 0.5: selection at decode)."""
    model = _converted(top_p=0.5)
    ids, mask = _padded()
    sampling = dict(do_sample=True, max_new_tokens=6, pad_token_id=0, eos_token_id=None, top_k=0, top_p=1.0)
    with torch.no_grad():
        torch.manual_seed(11)
        expanded = model.generate(ids, attention_mask=mask, num_return_sequences=3, **sampling)
        torch.manual_seed(11)
        repeated = model.generate(ids.repeat_interleave(3, 0), attention_mask=mask.repeat_interleave(3, 0), **sampling)
    assert expanded.shape == (6, 22)
    assert torch.equal(expanded, repeated)
    assert len({tuple(row.tolist()) for row in expanded[:3]}) > 1  # three samples, not one copied


def test_rtpurbo_generate_and_graphed_steps_run_beams():
    """rtpurbo.generate.generate passes num_beams through with its own cache, and model.generate(cuda_graph=True)
    (the eager stand-in on the CPU: the static cache reordered in place) gives the eager beams."""
    model = _converted()
    ids, mask = _padded()
    beams = {k: v for k, v in BEAMS.items() if k not in ("output_scores", "return_dict_in_generate")}
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=mask, **beams)
        ours = generate(model, None, ids, mask, **beams).sequences
        graphed = model.generate(ids, attention_mask=mask, cuda_graph=True, **beams)
    assert torch.equal(ours, eager)
    assert torch.equal(graphed, eager)


def test_row_operations_move_whole_rows_and_reorder_in_place():
    model = _converted()
    ids = random_ids(2, 10, seed=2)
    cache = HeadwiseCache(model)
    with torch.no_grad():
        prefill(model, cache, ids, torch.ones_like(ids), chunk=10)
    layer = cache.store[0]
    before = [t.clone() for t in layer.tensors()]
    pointers = [t.data_ptr() for t in layer.tensors()]
    cache.reorder_cache(torch.tensor([1, 1]))
    for old, new in zip(before, layer.tensors()):
        assert torch.equal(new, old[[1, 1]])
    assert [t.data_ptr() for t in layer.tensors()] == pointers  # in place: graph buffers stay valid
    cache.batch_repeat_interleave(3)
    assert all(t.shape[0] == 6 for t in layer.tensors())
    cache.batch_select_indices(torch.tensor([0, 5]))
    assert all(t.shape[0] == 2 for t in layer.tensors())
    cache.graphed_decoder = object()
    with pytest.raises(ValueError, match="cannot change size"):
        cache.batch_repeat_interleave(2)


@pytest.mark.parametrize("assist", [dict(prompt_lookup_num_tokens=3), dict(assistant_early_exit=1)])
def test_assisted_decoding_is_refused_before_any_work(assist):
    """Assisted decoding crops the cache after rejected drafts, which a head-wise cache cannot do: refused at the
    call, not at the first crop."""
    model = _converted()
    ids = random_ids(1, 16, seed=1)
    with pytest.raises(ValueError, match="cannot be cropped"):
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, **assist)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_graphed_beams_on_gpu_equal_eager_beams(top_p):
    """On a GPU, beams whose steps replay CUDA graphs (the static cache reordered in place between replays) give the
    eager beams, with and without selection."""
    model = _converted(top_p=top_p).cuda()
    ids, mask = (t.cuda() for t in _padded())
    beams = {k: v for k, v in BEAMS.items() if k not in ("output_scores", "return_dict_in_generate")}
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=mask, **beams)
        graphed = model.generate(ids, attention_mask=mask, cuda_graph=True, **beams)
    assert torch.equal(graphed, eager)


def test_beams_set_in_a_generation_config_expand_the_cache_too():
    """num_beams given through a GenerationConfig (not as an argument) expands the prefilled cache as well, in
    model.generate and in rtpurbo.generate.generate."""
    from transformers import GenerationConfig

    model = _converted()
    ids, mask = _padded()
    config = GenerationConfig(num_beams=2, num_return_sequences=2, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, use_cache=False, generation_config=config)
        assert torch.equal(model.generate(ids, attention_mask=mask, generation_config=config), want)
        assert torch.equal(generate(model, None, ids, mask, max_new_tokens=4, generation_config=config).sequences, want)
