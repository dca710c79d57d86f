"""The dense baseline's graphed decode (rtpurbo.bench.dense_graph): a StaticCache copy of the prefill.

On the CPU the steps run eagerly over the static cache, which is what the graph records; the
capture itself is checked on a GPU (skipped here).
"""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from rtpurbo._compat import cache_kwarg, set_attn_implementation
from rtpurbo.bench.dense_graph import GraphedDenseDecoder, static_from_dynamic
from rtpurbo.testing import tiny_model

from .test_decode_host_syncs import count_host_syncs

PROMPT, STEPS = 37, 5


def _model(device: str = "cpu") -> torch.nn.Module:
    model = tiny_model("llama").to(device).eval()
    set_attn_implementation(model, "sdpa")
    return model


def _prefill(model: torch.nn.Module, ids: torch.Tensor) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, position_ids=torch.arange(ids.shape[1], device=ids.device)[None], use_cache=True,
              **{cache_kwarg(): cache})
    return cache


def _reference_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(STEPS, V): one full forward over prompt + the decoded tokens, logits at the decode positions."""
    with torch.no_grad():
        return model(input_ids=ids).logits[0, PROMPT - 1:PROMPT - 1 + STEPS]


def _decode(model: torch.nn.Module, ids: torch.Tensor, decoder: GraphedDenseDecoder) -> torch.Tensor:
    positions = range(PROMPT - 1, PROMPT - 1 + STEPS)
    return torch.cat([decoder.step(ids[:, p:p + 1], torch.tensor([[p]], device=ids.device))[0] for p in positions])


def test_static_copy_decodes_like_a_full_forward():
    model = _model()
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT + STEPS), generator=torch.Generator().manual_seed(3))
    prefilled = _prefill(model, ids[:, :PROMPT - 1])
    decoder = GraphedDenseDecoder(model, prefilled, capacity=PROMPT + STEPS + 3)
    assert prefilled.get_seq_length() == 0  # the dynamic copy is freed
    logits = _decode(model, ids, decoder)
    torch.testing.assert_close(logits, _reference_logits(model, ids), atol=1e-5, rtol=1e-5)


def test_static_decode_step_has_no_host_sync():
    model = _model()
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(4))
    decoder = GraphedDenseDecoder(model, _prefill(model, ids[:, :-1]), capacity=PROMPT + 4)
    with count_host_syncs() as syncs:
        decoder.step(ids[:, -1:], torch.tensor([[PROMPT - 1]]))
    assert not syncs, syncs


def test_static_copy_needs_room():
    model = _model()
    prefilled = _prefill(model, torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="no room"):
        static_from_dynamic(model, prefilled, capacity=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
def test_dense_graph_replay_equals_full_forward_on_gpu():
    model = _model("cuda")
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT + STEPS), device="cuda")
    decoder = GraphedDenseDecoder(model, _prefill(model, ids[:, :PROMPT - 1]), capacity=PROMPT + STEPS + 3)
    logits = _decode(model, ids, decoder)
    assert decoder.graph is not None  # steps 2.. were replays
    torch.testing.assert_close(logits, _reference_logits(model, ids), atol=1e-4, rtol=1e-4)
