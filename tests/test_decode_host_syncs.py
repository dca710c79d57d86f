"""Host syncs of one decode step: none per layer in rtpurbo's decode path.

On a GPU every host sync (``.item()``, ``bool(t)``, ``nonzero``, boolean-mask indexing, ...)
waits for the queued kernels, so a sync in every layer serialises Python launch overhead
with GPU work. The CPU has no queue to wait for, so here the calls that would sync are
counted instead, by wrapping them for the duration of one decode step.

What runs here is what runs on both devices: ``SparseAttention.forward``, the cache
bookkeeping (``HeadwiseCache.attend``, ring writes, selection stats) and the ops dispatch.
The attention math runs on ``impl="reference"`` / ``decode_impl="reference"`` (the CUDA
backends, flex and triton, are sync-free by construction and cannot run on the CPU). The
CPU's automatic backend, ``sdpa``, still syncs once per local-head call (its key-order
check, ``rtpurbo/ops/sdpa.py``), so it is not used here.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys

import pytest
import torch

import rtpurbo
from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.testing import tiny_model

from .conftest import random_ids

# tensor methods / torch functions whose result the host needs before it can go on
_SYNC_METHODS = (
    "item", "tolist", "numpy", "cpu", "nonzero", "masked_select", "__bool__", "__int__", "__float__", "__index__",
)
_SYNC_FUNCTIONS = ("nonzero", "masked_select", "equal", "is_nonzero")
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_ROOT = os.path.dirname(os.path.dirname(rtpurbo.__file__))  # paths of call sites are relative to it


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch and this file."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith((_TORCH_DIR, __file__)):
        frame = frame.f_back
    return "?" if frame is None else f"{os.path.relpath(frame.f_code.co_filename, _ROOT)}:{frame.f_lineno}"


def _has_bool_index(index) -> bool:
    """True when an indexing key holds a boolean tensor (mask indexing needs the count of True)."""
    keys = index if isinstance(index, tuple) else (index,)
    return any(isinstance(key, torch.Tensor) and key.dtype == torch.bool for key in keys)


@contextlib.contextmanager
def count_host_syncs():
    """Counter of ``(call, file:line)`` for every would-be host sync inside the block."""
    found: collections.Counter = collections.Counter()
    patches = [(torch.Tensor, name) for name in _SYNC_METHODS] + [(torch, name) for name in _SYNC_FUNCTIONS]
    patches += [(torch.Tensor, "__getitem__"), (torch.Tensor, "__setitem__")]
    saved = [(owner, name, owner.__dict__.get(name), getattr(owner, name)) for owner, name in patches]

    def counting(name, original):
        def wrapper(*args, **kwargs):
            found[(name, _caller())] += 1
            return original(*args, **kwargs)
        return wrapper

    def counting_index(name, original):
        def wrapper(tensor, index, *rest):
            if _has_bool_index(index):
                found[(f"{name}[bool]", _caller())] += 1
            return original(tensor, index, *rest)
        return wrapper

    for owner, name, _, original in saved:
        make = counting_index if name in ("__getitem__", "__setitem__") else counting
        setattr(owner, name, make(name, original))
    try:
        yield found
    finally:
        for owner, name, own, _ in saved:
            if own is None:
                delattr(owner, name)  # was inherited: drop the wrapper, the base class's method shows again
            else:
                setattr(owner, name, own)


def _decode_step_syncs(num_layers: int, batch: int = 1) -> collections.Counter:
    """Host syncs of one decode token after an 11-token prefill, through a HeadwiseCache.

    Every layer has a retrieval KV head (top-p decode, so the selection stats run) and a
    local one (ring write); the decode row of batch row 1, if any, is padding.
    """
    model = tiny_model("llama", num_layers=num_layers)
    layers, n_kv, n_q, _ = geometry(model.config)
    plan = HeadPlan(layers, n_kv, n_q, [[layer % n_kv] for layer in range(layers)])
    backends = dict(impl="reference", decode_impl="reference")
    convert(model, plan, SparseConfig(seqlen_threshold=0, window=4, sinks=2, top_p=0.7, min_tokens=2, recent=2, **backends))
    ids = random_ids(batch, 12)
    mask = torch.ones_like(ids)
    mask[1:, -1] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = HeadwiseCache(model)
    kw = {cache_kwarg(): cache}
    with torch.no_grad():
        model(ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True, **kw)
        with count_host_syncs() as found:
            model(ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], use_cache=True, **kw)
    assert cache.stats.summary()["samples"] > 0  # the top-p decode path ran
    return found


@pytest.mark.parametrize("batch", [1, 2])
def test_decode_step_syncs_do_not_grow_with_layers(batch):
    two, four = _decode_step_syncs(2, batch), _decode_step_syncs(4, batch)
    ours = {site: n for site, n in four.items() if site[1].startswith("rtpurbo" + os.sep)}
    assert not ours, f"host syncs in rtpurbo's decode path: {ours}"
    # none today; a little room for per-step (not per-layer) syncs in transformers' model body
    assert sum(two.values()) == sum(four.values()) <= 2, f"2 layers: {dict(two)}; 4 layers: {dict(four)}"


@pytest.mark.parametrize("plain", [True, False])
def test_prefill_chunks_make_no_host_sync_in_rtpurbo(plain, monkeypatch):
    """A first chunk (plain or not) and a later chunk (of a plain prompt: the ring unrolled for chunk_start; of a
    padded batch: ring order): no sync in rtpurbo's code (the ring write of a chunk included). The ops API checks
    plain=True and chunk_start claims on CPU tensors only (free there, skipped on a GPU), so those checks are left
    out here."""
    monkeypatch.setattr("rtpurbo.ops.api._check_plain", lambda q_pos, k_pos: None)
    monkeypatch.setattr("rtpurbo.ops.api._check_chunk", lambda q_pos, k_pos, start, window, sinks: None)
    model = tiny_model("llama", num_layers=2)
    layers, n_kv, n_q, _ = geometry(model.config)
    plan = HeadPlan(layers, n_kv, n_q, [[layer % n_kv] for layer in range(layers)])
    convert(model, plan, SparseConfig(window=4, sinks=2, impl="reference", decode_impl="reference"))
    batch = 1 if plain else 2
    ids = random_ids(batch, 20)
    mask = torch.ones_like(ids)
    mask[1:, :3] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = HeadwiseCache(model)
    cache.plain_prompt = plain
    kw = {cache_kwarg(): cache}
    with torch.no_grad(), count_host_syncs() as found:
        for chunk in (slice(0, 12), slice(12, 20)):
            model(ids[:, chunk], attention_mask=mask[:, : chunk.stop], position_ids=positions[:, chunk], use_cache=True,
                  **kw)
    ours = {site: n for site, n in found.items() if site[1].startswith("rtpurbo" + os.sep)}
    assert not ours, f"host syncs in rtpurbo's prefill path: {ours}"
    assert cache.store[0].l_pos.max().item() == positions.max().item()  # the ring holds the newest token


def test_counter_sees_syncs():
    t = torch.tensor([0.0, 2.0])
    with count_host_syncs() as found:
        float(t[1]), t.nonzero(), t[t > 1], bool(t.any()), t.sum().item()
    assert sum(found.values()) == 5
    assert "__float__" not in torch.Tensor.__dict__  # wrappers removed afterwards


def test_ring_write_of_one_token_matches_the_general_rule():
    """Decode ring write: real rows write their slot, padding rows (-1) change nothing."""
    model = tiny_model("llama", num_layers=1)
    layers, n_kv, n_q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, n_kv, n_q, [[0]]), SparseConfig(window=4, sinks=2, impl="reference"))
    cache = HeadwiseCache(model)
    module = model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(0)
    layer = cache._layer(module, torch.zeros(4, n_kv, 0, 16))
    layer.l_k.normal_(generator=generator)
    layer.l_v.normal_(generator=generator)
    layer.l_pos.copy_(torch.arange(6).repeat(4, 1))
    positions = torch.tensor([[1], [-1], [9], [6]])
    k, v = (torch.randn(4, 1, 1, 16, generator=generator) for _ in range(2))
    want = [t.clone() for t in (layer.l_k, layer.l_v, layer.l_pos)]
    for row, position in enumerate(positions[:, 0].tolist()):
        if position >= 0:
            slot = position if position < 2 else 2 + (position - 2) % 4
            want[0][row, :, slot], want[1][row, :, slot], want[2][row, slot] = k[row, :, 0], v[row, :, 0], position
    with count_host_syncs() as found:
        cache._write_ring(layer, k, v, positions)
    assert not found
    for got, expected in zip((layer.l_k, layer.l_v, layer.l_pos), want):
        assert torch.equal(got, expected)
