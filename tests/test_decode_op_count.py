"""Aten ops per layer of one decode step in rtpurbo's code outside the attention backends.

On a GPU each small op costs ~5-10 us of Python, dispatch and kernel launch, and a decode
step runs them for every layer, so their number bounds the decode speed of small batches.
The backends (``rtpurbo.ops``: flex / Triton on a GPU, ``reference`` here) are not counted:
on a GPU they are a few fused kernels. Ops in transformers' model body (norms, MLP) are not
counted either (nor is the model class's own forward, ``rtpurbo.causal_lm``, which only calls
transformers'); rotary and the projections, called by ``SparseAttention``, are.

Measured here (torch 2.13, transformers 5.24; tiny Llama, one retrieval and one local KV
head per layer, top-p decode, batch 1), per layer and decode step:

* converted model, outside the backends: 86.5 ops (87.5 before the selection statistics moved into the top-p
  attention's ``key_sums``; an earlier transformers read 85); 89 (44 of them not views) before the local
  heads stopped concatenating the whole ring to the new token and the indexer queries stopped
  copying; 128 (58) before the shared per-forward values, the one-token ring write and the
  einsum-free indexer. (Static decode on a GPU also fuses the cache writes into one kernel.)
* for reference, the dense model's attention module (HF SDPA with its DynamicCache): 44 ops.
"""
from __future__ import annotations

import collections
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rtpurbo
from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.testing import tiny_model

from .conftest import random_ids

MAX_OPS_PER_LAYER = 104  # 86.5 measured + 20% for other torch / transformers versions

_PACKAGE = os.path.dirname(rtpurbo.__file__) + os.sep
_BACKENDS = os.path.join(_PACKAGE, "ops") + os.sep
_MODEL_ENTRY = os.path.join(_PACKAGE, "causal_lm.py")  # the converted model's forward: transformers' body runs below


def _ours(filename: str) -> bool:
    return filename.startswith(_PACKAGE) and filename != _MODEL_ENTRY


class CountOps(TorchDispatchMode):
    """Counts aten ops by where they come from: "ours" (rtpurbo outside rtpurbo.ops), "backend", "other"."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frame = sys._getframe(1)
        while frame is not None and not _ours(frame.f_code.co_filename):
            frame = frame.f_back
        where = "other" if frame is None else "backend" if frame.f_code.co_filename.startswith(_BACKENDS) else "ours"
        self.counts[where] += 1
        return func(*args, **(kwargs or {}))


def _decode_step_ops(num_layers: int) -> collections.Counter:
    """Op counts of the second decode token after a 10-token prefill, through a HeadwiseCache."""
    model = tiny_model("llama", num_layers=num_layers)
    layers, n_kv, n_q, _ = geometry(model.config)
    plan = HeadPlan(layers, n_kv, n_q, [[layer % n_kv] for layer in range(layers)])
    backends = dict(impl="reference", decode_impl="reference")
    convert(model, plan, SparseConfig(seqlen_threshold=0, window=4, sinks=2, top_p=0.7, min_tokens=2, recent=2, **backends))
    ids = random_ids(1, 12)
    mask = torch.ones_like(ids)
    positions = torch.arange(12)[None]
    cache = HeadwiseCache(model)
    kw = {cache_kwarg(): cache}

    def forward(start: int, stop: int) -> None:
        model(ids[:, start:stop], attention_mask=mask[:, :stop], position_ids=positions[:, start:stop], use_cache=True, **kw)

    with torch.no_grad():
        forward(0, 10)
        forward(10, 11)  # the first decode step also allocates the selection statistics
        with CountOps() as counter:
            forward(11, 12)
    assert cache.stats.summary()["samples"] > 0  # the top-p decode path ran
    return counter.counts


def test_decode_ops_per_layer_outside_the_backends():
    two, four = _decode_step_ops(2), _decode_step_ops(4)
    per_layer = {where: (four[where] - two[where]) / 2 for where in ("ours", "backend")}
    assert per_layer["backend"] > 0, per_layer  # the counter sees the backends (and so tells them apart)
    assert 0 < per_layer["ours"] <= MAX_OPS_PER_LAYER, per_layer


def test_a_reused_position_ids_tensor_is_read_again_each_forward():
    """The cache shares one forward's positions between its layers, not between forwards."""
    model = tiny_model("llama")
    convert(model, HeadPlan(*geometry(model.config)[:3], [[0], [1]]), SparseConfig(seqlen_threshold=0, window=4, sinks=2, top_p=0.7))
    ids = random_ids(1, 14)
    logits = []
    for reuse in (False, True):
        cache = HeadwiseCache(model)
        kw = {cache_kwarg(): cache}
        position = torch.zeros(1, 1, dtype=torch.long)
        out = []
        with torch.no_grad():
            model(ids[:, :8], position_ids=torch.arange(8)[None], use_cache=True, **kw)
            for t in range(8, 14):
                if reuse:
                    position.fill_(t)  # same tensor object, new content
                else:
                    position = torch.full((1, 1), t)
                out.append(model(ids[:, t : t + 1], position_ids=position, use_cache=True, **kw).logits)
        logits.append(torch.cat(out, dim=1))
    assert torch.equal(logits[0], logits[1])
