"""Batched generation on a GPU reaches a steady state: no recompiles, no L x L buffers.

A model of SmolLM2-135M's geometry (30 layers, 9 query / 3 KV heads, head dim 64, random weights,
bf16), converted with 15 % retrieval KV heads and W = 1024 (retrieval heads on the dense prefill, or on the
sparse prefill with a dense tail: three more compiled entries), generates from left-padded batches
of 8 prompts whose lengths vary row by row and batch by batch (over 20 distinct batch lengths
from 1K to 8K), as an eval over a RULER-style task set would. After the first batches:

* dynamo compiles nothing more (``torch._dynamo.utils.counters``): the compiled flex entries
  see new lengths and paddings without recompiling, and nothing falls back to an unfused flex. Whatever
  compiled before in the process (run after test_ops_gpu.py, whose flex tests go through the same entries
  with other head groups, fp16 and gradients) spends none of the model's budget: each variant compiles under
  its own code object (``rtpurbo.ops.flex._compiled``);
* the peak memory of an 8K batch stays within twice the dense model's (transformers SDPA) and within
  a bound from the geometry: weights + a dense KV cache + four (B, L, hidden + MLP) activations; the
  query heads' L x L scores of the batch alone would be 9 GiB.
"""
from __future__ import annotations

import random

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM, LlamaConfig

from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.generate import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled flex attention needs a CUDA device")

BATCH, WINDOW, NEW_TOKENS = 8, 1024, 4


def _smollm2_geometry() -> torch.nn.Module:
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def _batch(longest: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """ids, mask (BATCH, longest): row lengths between longest / 2 and longest, left-padded."""
    lengths = [longest] + [rng.randint(longest // 2, longest) for _ in range(BATCH - 1)]
    ids = torch.randint(1, 49152, (BATCH, longest), device="cuda")
    mask = torch.zeros(BATCH, longest, dtype=torch.long, device="cuda")
    for row, n in enumerate(lengths):
        mask[row, longest - n :] = 1
    return ids * mask, mask


def _peak_gib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


PREFILLS = {"dense-retrieval-prefill": {},
            "sparse-prefill-dense-tail": dict(retrieval_prefill="sparse", prefill_scoring="mass", prefill_dense_tail=256)}


@pytest.mark.parametrize("prefill", list(PREFILLS))
def test_batched_generation_stops_compiling_and_holds_no_lxl_buffer(prefill):
    model = _smollm2_geometry()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    ids, mask = _batch(8192 - NEW_TOKENS, random.Random(0))  # the prompt and its new tokens fit 8192 positions
    dense_peak = _peak_gib(lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                                  do_sample=False, pad_token_id=0))
    layers, n_kv, n_q = 30, 3, 9
    plan = HeadPlan.from_scores([[float((7 * layer + head) % 10) for head in range(n_kv)] for layer in range(layers)],
                                n_q, 0.15)
    convert(model, plan, SparseConfig(window=WINDOW, sinks=4, top_p=0.9, **PREFILLS[prefill]))

    rng = random.Random(1)
    lengths = [1024 + 340 * i + rng.randint(0, 63) for i in range(21)]  # 21 distinct lengths, 1K .. 8K
    rng.shuffle(lengths)
    compiled = []
    for longest in lengths:
        batch_ids, batch_mask = _batch(longest, rng)
        out = generate(model, None, batch_ids, batch_mask, max_new_tokens=NEW_TOKENS)
        assert out.sequences.shape == (BATCH, longest + NEW_TOKENS)
        compiled.append(counters["stats"]["unique_graphs"])
    warm = 4  # the first batches compile: each mask kind once, then its dynamic-shape variant
    assert compiled[warm:] == [compiled[warm - 1]] * (len(lengths) - warm), f"graphs compiled per batch: {compiled}"

    sparse_peak = _peak_gib(lambda: generate(model, None, ids, mask, max_new_tokens=NEW_TOKENS))
    tokens = BATCH * 8188
    dense_kv = tokens * layers * n_kv * 64 * 2 * 2 / 2**30  # K + V, bf16
    activations = 4 * tokens * (576 + 1536) * 2 / 2**30
    bound = weights + dense_kv + activations  # O(L) per layer: no L x L (let alone L x L per head) buffer fits
    one_lxl = BATCH * n_q * 8188**2 * 2 / 2**30  # bf16 scores of every query head over the batch: 9 GiB
    print(f"peak GiB: dense {dense_peak:.2f}, sparse {sparse_peak:.2f}, bound {bound:.2f} (weights {weights:.2f}), "
          f"L x L scores {one_lxl:.1f}; graphs per batch {compiled}")
    assert sparse_peak <= 2 * dense_peak, (sparse_peak, dense_peak)
    assert sparse_peak <= bound, (sparse_peak, bound)
