"""generate(cuda_graph=True): the graphed decode loop (its CPU stand-in here) against the eager path."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rtpurbo.config import SparseConfig
from rtpurbo.convert import convert
from rtpurbo.generate import generate
from rtpurbo.testing import tiny_model

from .conftest import random_ids
from .test_cache import mixed_plan


def _converted(top_p: float = 0.7):
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=top_p, min_tokens=2, recent=2))
    return model


def _prompt():
    ids = random_ids(2, 30, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("top_p", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [None, 8])
def test_graphed_greedy_equals_eager_generate(top_p, chunk):
    model = _converted(top_p)
    ids, mask = _prompt()
    # the graphed path prefills all but the last prompt token, as the eager path does with a prefill_chunk
    # (without one, transformers' generate() also runs the last prompt token in the prefill: full attention)
    want = generate(model, None, ids, mask, max_new_tokens=12, prefill_chunk=chunk or ids.shape[1]).sequences
    got = generate(model, None, ids, mask, max_new_tokens=12, prefill_chunk=chunk, cuda_graph=True)
    assert torch.equal(got.sequences, want)
    assert got.cache.static_capacity == ids.shape[1] - 1 + 12


def test_graphed_generate_stops_rows_at_end_of_sequence():
    model = _converted()
    ids, mask = _prompt()
    free = generate(model, None, ids, mask, max_new_tokens=12, cuda_graph=True).new_tokens
    stop = int(free[0, 3])  # make row 0's 4th token the end-of-sequence token
    model.generation_config.eos_token_id = stop
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=stop)
    got = generate(model, tokenizer, ids, mask, max_new_tokens=12, cuda_graph=True).new_tokens
    first = int((free[0] == stop).nonzero()[0])  # the stop token may come earlier than position 3
    assert torch.equal(got[0, : first + 1], free[0, : first + 1])
    assert (got[0, first + 1 :] == 0).all()  # padded after its end
    row1_stops = (free[1] == stop).nonzero()
    end = int(row1_stops[0]) + 1 if len(row1_stops) else free.shape[1]
    assert torch.equal(got[1, :end], free[1, :end])


def test_graphed_sampling_is_seeded_and_refuses_bad_arguments():
    model = _converted()
    ids, mask = _prompt()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(generate(model, None, ids, mask, max_new_tokens=6, do_sample=True, cuda_graph=True).sequences)
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (2, 36)
    with pytest.raises(ValueError, match="no generate"):
        generate(model, None, ids, mask, max_new_tokens=4, cuda_graph=True, num_beams=2)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        generate(model, None, ids[:, -1:], None, max_new_tokens=4, cuda_graph=True)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, None, ids, mask, max_new_tokens=4, do_sample=True, temperature=0.0, cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
def test_graphed_generate_on_gpu_equals_eager():
    model = tiny_model("llama")
    convert(model, mixed_plan(model), SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=0.7, min_tokens=2, recent=2,
                                                   decode_impl="auto"))
    model = model.cuda()
    ids, mask = (t.cuda() for t in _prompt())
    want = generate(model, None, ids, mask, max_new_tokens=12, prefill_chunk=ids.shape[1]).sequences
    assert torch.equal(generate(model, None, ids, mask, max_new_tokens=12, cuda_graph=True).sequences, want)
