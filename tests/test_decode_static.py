"""Static-shape decode (``HeadwiseCache.static_decode``) and ``GraphedDecoder``.

Static decode attends over the whole preallocated capacity, the unused slots at position -1,
instead of the used slots only. The selected and attended keys are the same, but the
reductions (softmax sums, probs @ V) run over more (zero) terms, so CPU SIMD summation order
may differ from the dynamic mode: logits are compared at ``atol=1e-5`` (fp32 logits of size
~1-10; a wrong key or position changes them by > 1e-2), tokens exactly.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import SparseConfig
from rtpurbo.convert import convert
from rtpurbo.decode_graph import GraphedDecoder
from rtpurbo.prefill import prefill
from rtpurbo.testing import tiny_model

from .conftest import random_ids
from .test_decode_host_syncs import count_host_syncs
from .test_cache import mixed_plan

PROMPT, STEPS = 20, 12


def _model(family: str, top_p: float, decode_impl: str = "reference"):
    model = tiny_model(family, num_key_value_heads=2) if family == "qwen3" else tiny_model(family)
    sparse = SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=top_p, min_tokens=2, recent=2, decode_impl=decode_impl)
    convert(model, mixed_plan(model), sparse)
    return model


def _prompt(batch: int):
    """(ids, mask) (B, PROMPT); row 1, if any, is left-padded by 5 tokens."""
    ids = random_ids(batch, PROMPT, seed=3)
    mask = torch.ones_like(ids)
    mask[1:, :5] = 0
    return ids, mask


def _prefilled(model, ids, mask) -> HeadwiseCache:
    cache = HeadwiseCache(model, initial_capacity=16)  # grows during the prefill
    prefill(model, cache, ids[:, :-1], mask[:, :-1], 7)
    return cache


def greedy(model, batch: int, static: int | None = None, graphed: bool = False):
    """Greedy decode of STEPS tokens after the prompt: (tokens (B, STEPS), logits (B, STEPS, V), cache).

    ``static``: capacity of static decode mode (None = dynamic mode, with the growing attention mask).
    """
    ids, mask = _prompt(batch)
    cache = _prefilled(model, ids, mask)
    if static is not None:
        cache.static_decode(static)
    decoder = GraphedDecoder(model, cache, graph=False) if graphed else None
    token, position = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
    tokens, logits = [], []
    with torch.no_grad():
        for _ in range(STEPS):
            if decoder is not None:
                out = decoder.step(token, position)
            elif static is not None:
                out = model(token, position_ids=position, use_cache=True, **{cache_kwarg(): cache}).logits
            else:
                kw = {cache_kwarg(): cache}
                out = model(token, attention_mask=mask, position_ids=position, use_cache=True, **kw).logits
            token, position = out.argmax(-1), position + 1
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            tokens.append(token)
            logits.append(out)
    return torch.cat(tokens, 1), torch.cat(logits, 1), cache


def _same_run(got, want) -> None:
    (tokens, logits, cache), (want_tokens, want_logits, want_cache) = got, want
    assert torch.equal(tokens, want_tokens)
    assert torch.allclose(logits, want_logits, rtol=0, atol=1e-5), (logits - want_logits).abs().max()
    assert cache.host_counters() == want_cache.host_counters()
    assert cache.stats.summary() == want_cache.stats.summary()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("top_p", [1.0, 0.7])
@pytest.mark.parametrize("batch", [1, 2])
def test_static_decode_equals_dynamic(family, top_p, batch):
    model = _model(family, top_p)
    want = greedy(model, batch)
    got = greedy(model, batch, static=PROMPT + STEPS + 5)
    _same_run(got, want)
    assert got[2].store[0].r_k.shape[2] == PROMPT + STEPS + 5
    assert int(got[2].store[0].r_next) == got[2].store[0].r_len == PROMPT - 1 + STEPS
    if top_p < 1:
        assert got[2].stats.summary()["samples"] > 0
    for static, dynamic in zip(got[2].store, want[2].store):  # int32 positions, the same as the growing cache's
        assert static.r_pos.dtype == torch.int32 and dynamic.r_pos.dtype == torch.int64
        assert torch.equal(static.r_pos[:, : dynamic.r_len].long(), dynamic.r_pos[:, : dynamic.r_len])
        assert (static.r_pos[:, dynamic.r_len :] == -1).all()


@pytest.mark.parametrize("batch", [1, 2])
def test_graphed_decoder_bookkeeping_on_cpu(batch):
    """The CPU stand-in of GraphedDecoder: counters advanced by the recorded per-step increments."""
    model = _model("llama", 0.7)
    _same_run(greedy(model, batch, static=PROMPT + STEPS, graphed=True), greedy(model, batch))


class _OpRecorder(TorchDispatchMode):
    """Every aten op with its argument signature: shapes and dtypes of tensors, values of the rest."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple] = []

    @staticmethod
    def _sig(x):
        if isinstance(x, torch.Tensor):
            return ("T", tuple(x.shape), x.dtype)
        if isinstance(x, (list, tuple)):
            return tuple(_OpRecorder._sig(y) for y in x)
        return x if isinstance(x, (int, float, bool, str, type(None))) else type(x).__name__

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((str(func), self._sig(args), self._sig(sorted(kwargs.items()))))
        return func(*args, **kwargs)


def _step_ops(static: bool) -> list[list[tuple]]:
    """Recorded ops of each decode step (batch 2, top-p 0.7)."""
    model = _model("llama", 0.7)
    ids, mask = _prompt(2)
    cache = _prefilled(model, ids, mask)
    if static:
        cache.static_decode(64)
    position = mask.sum(-1, keepdim=True) - 1
    steps = []
    with torch.no_grad():
        for step in range(5):
            recorder = _OpRecorder()
            kw = {cache_kwarg(): cache, "position_ids": position + step}
            if not static:
                kw["attention_mask"] = mask
            token = ids[:, -1:]
            with recorder:
                model(token, use_cache=True, **kw)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            steps.append(recorder.ops)
    return steps


def test_static_step_ops_do_not_change_between_steps():
    """Steps 2 and 5 launch the same ops on the same shapes (step 1 also creates the selection-stats sums)."""
    static = _step_ops(True)
    assert static[1] == static[4] and len(static[1]) > 100
    assert any("index_copy" in op[0] for op in static[1])
    dynamic = _step_ops(False)
    assert dynamic[1] != dynamic[4]  # the recorder does see the dynamic mode's growing shapes


def test_static_step_has_no_host_sync_in_rtpurbo():
    """Like tests/test_decode_host_syncs.py, for a static step (reference backends: sdpa's key check syncs)."""
    model = tiny_model("llama")
    sparse = SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=0.7, min_tokens=2, recent=2, impl="reference", decode_impl="reference")
    convert(model, mixed_plan(model), sparse)
    ids, mask = _prompt(2)
    cache = _prefilled(model, ids, mask)
    cache.static_decode(64)
    position = mask.sum(-1, keepdim=True) - 1
    with torch.no_grad(), count_host_syncs() as found:
        model(ids[:, -1:], position_ids=position, use_cache=True, **{cache_kwarg(): cache})
    assert cache.stats.summary()["samples"] > 0
    assert not {site: n for site, n in found.items() if site[1].startswith("rtpurbo" + os.sep)}, dict(found)


def test_static_decode_errors():
    model = _model("llama", 0.7)
    ids, mask = _prompt(1)
    with pytest.raises(ValueError, match="prefilled"):
        HeadwiseCache(model).static_decode(64)
    cache = _prefilled(model, ids, mask)
    with pytest.raises(ValueError, match="no slot"):
        cache.static_decode(PROMPT - 1)
    with pytest.raises(ValueError, match="int32"):  # the highest position is PROMPT - 2
        cache.static_decode(2**31 - PROMPT + 2)
    assert all(layer.r_pos.dtype == torch.int64 for layer in cache.store if layer is not None)
    cache.static_decode(PROMPT + 1)
    kw = {cache_kwarg(): cache}
    with torch.no_grad():
        with pytest.raises(ValueError, match="one token"):
            model(ids[:, :2], position_ids=torch.tensor([[19, 20]]), use_cache=True, **kw)
        for position in (19, 20):
            model(ids[:, :1], position_ids=torch.tensor([[position]]), use_cache=True, **kw)
        with pytest.raises(ValueError, match="full"):
            model(ids[:, :1], position_ids=torch.tensor([[21]]), use_cache=True, **kw)
    with pytest.raises(ValueError, match="static decode mode"):
        GraphedDecoder(model, HeadwiseCache(model))


def graphed_greedy(model, ids, mask, graph: bool = True, **cache_attributes):
    """Greedy decode of STEPS tokens on a GPU through a static cache (``cache_attributes`` set on it first), the
    steps replayed from a CUDA graph (or eager): (tokens (B, STEPS), logits (B, STEPS, V), cache, one-launch steps)."""
    cache = _prefilled(model, ids, mask)
    for name, value in cache_attributes.items():
        setattr(cache, name, value)
    one_launch = []
    attend = cache._attend_two_roles
    cache._attend_two_roles = lambda *args: one_launch.append(1) or attend(*args)
    cache.static_decode(PROMPT + STEPS)
    decoder = GraphedDecoder(model, cache, graph=graph)
    token, position = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
    tokens, logits = [], []
    for _ in range(STEPS):
        logits.append(decoder.step(token, position))
        token, position = logits[-1].argmax(-1), position + 1
        tokens.append(token)
    assert decoder.graphs == int(graph)
    return torch.cat(tokens, 1), torch.cat(logits, 1), cache, len(one_launch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_cuda_graph_replay_equals_eager_decode(top_p):
    model = _model("llama", top_p, decode_impl="auto").cuda()  # GPU backends: flex and the Triton top-p decode
    ids, mask = (t.cuda() for t in _prompt(2))
    (got, got_logits, graph_cache, _), (want, want_logits, eager_cache, _) = (
        graphed_greedy(model, ids, mask, graph) for graph in (True, False))
    assert torch.equal(got, want)
    assert torch.allclose(got_logits, want_logits, rtol=0, atol=1e-4)
    assert graph_cache.host_counters() == eager_cache.host_counters()
    assert graph_cache.stats.summary() == eager_cache.stats.summary()
    for layer in graph_cache.store:  # the device-side slot counters advanced with the replays
        assert int(layer.r_next) == layer.r_len


@pytest.mark.skipif(not torch.cuda.is_available(), reason="side streams and CUDA graphs need a CUDA device")
@pytest.mark.parametrize("threshold", [0, 10**9])
def test_side_stream_overlap_on_gpu(threshold, monkeypatch):
    """Static decode on a GPU runs the local heads on a side stream (cache.overlap_roles; fuse_roles off: the
    two-launch path, whose local launch the side stream carries). Beside a selecting step they run in the launch shape
    that leaves room for the selection (ring_beside_selection), which splits the ring's keys differently: the same
    greedy tokens and the logits up to that summation order. Without selection (below the seqlen threshold) the same
    kernels as on one stream, so the same bits."""
    from rtpurbo.ops.triton import decode_roles

    beside, ring_beside = [], decode_roles.ring_beside_selection
    monkeypatch.setattr(decode_roles, "ring_beside_selection", lambda *a, **kw: beside.append(1) or ring_beside(*a, **kw))
    model = _model("llama", 0.7, decode_impl="auto").cuda()
    model.rtpurbo_sparse.seqlen_threshold = threshold
    ids, mask = (t.cuda() for t in _prompt(2))
    (tokens, logits, _, _), (want_tokens, want_logits, _, _) = (
        graphed_greedy(model, ids, mask, fuse_roles=False, overlap_roles=overlap) for overlap in (True, False))
    assert bool(beside) == (threshold == 0), "the beside launch shape runs exactly where a step selects"
    assert torch.equal(tokens, want_tokens)
    if threshold:
        assert torch.equal(logits, want_logits)
    else:
        assert torch.allclose(logits, want_logits, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="programmatic dependent launch runs on a CUDA device")
@pytest.mark.parametrize("threshold", [0, 10**9])
def test_dependent_launch_decode_on_gpu(threshold, monkeypatch):
    """Static decode replayed from CUDA graphs with the chains' kernels launched with programmatic dependent launch
    (rtpurbo.ops.triton.dependent_launch): selecting steps (threshold 0; the local heads on a side stream) and steps
    over every key (one launch for both kinds of heads). Only the launches change, so the same tokens and logits
    bit for bit as without."""
    from rtpurbo.ops.triton import dependent_launch

    if not dependent_launch.supported(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs a GPU of compute capability 9.0 or later")
    model = _model("llama", 0.7, decode_impl="auto").cuda()
    model.rtpurbo_sparse.seqlen_threshold = threshold
    ids, mask = (t.cuda() for t in _prompt(2))
    runs = []
    for pdl in (True, False):
        monkeypatch.setattr(dependent_launch, "ENABLED", pdl)
        runs.append(graphed_greedy(model, ids, mask))
    (tokens, logits, _, _), (want_tokens, want_logits, _, _) = runs
    assert torch.equal(tokens, want_tokens)
    assert torch.equal(logits, want_logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the one-launch decode runs Triton kernels on a CUDA device")
@pytest.mark.parametrize("top_p, threshold", [(1.0, 0), (0.7, 10**9), (0.7, 0)])
def test_one_launch_decode_matches_two_launches_on_gpu(top_p, threshold):
    """Static decode on a GPU runs both kinds of heads of a layer in one launch (cache.fuse_roles) when its retrieval
    heads read every key (top-p 1, or below the seqlen threshold), and two launches when they select: the same greedy
    tokens and logits as the two-launch path, eager and replayed from a graph, up to the summation order of differently
    split keys. A head written to the wrong place or a missed part changes the logits by far more."""
    model = _model("llama", top_p, decode_impl="auto").cuda()
    model.rtpurbo_sparse.seqlen_threshold = threshold
    ids, mask = (t.cuda() for t in _prompt(2))
    (tokens, logits, _, one_launch), (want_tokens, want_logits, _, two_launch) = (
        graphed_greedy(model, ids, mask, fuse_roles=fuse) for fuse in (True, False))
    assert bool(one_launch) == (top_p == 1.0 or threshold > 0), "one launch exactly when no step selects"
    assert two_launch == 0
    assert torch.equal(tokens, want_tokens)
    assert torch.allclose(logits, want_logits, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the one-launch decode runs Triton kernels on a CUDA device")
@pytest.mark.parametrize("top_p, threshold", [(1.0, 0), (0.7, 10**9)])
def test_one_launch_decode_in_dynamic_mode_on_gpu(top_p, threshold):
    """Eager decode through a growing (not static) cache also runs both kinds of heads in one launch when nothing
    selects, over the padded batch's attention mask: the same greedy tokens and logits as the two-launch path."""
    model = _model("llama", top_p, decode_impl="auto").cuda()
    model.rtpurbo_sparse.seqlen_threshold = threshold
    runs = {}
    for fuse in (True, False):
        ids, mask = (t.cuda() for t in _prompt(2))
        cache = _prefilled(model, ids, mask)
        cache.fuse_roles = fuse
        one_launch = []
        attend = cache._attend_two_roles
        cache._attend_two_roles = lambda *args: one_launch.append(1) or attend(*args)
        token, position = ids[:, -1:], mask.sum(-1, keepdim=True) - 1
        tokens, logits = [], []
        with torch.no_grad():
            for _ in range(STEPS):
                out = model(token, attention_mask=mask, position_ids=position, use_cache=True, **{cache_kwarg(): cache}).logits
                token, position = out.argmax(-1), position + 1
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                tokens.append(token)
                logits.append(out)
        assert len(one_launch) == (STEPS * len(cache.store) if fuse else 0)  # every layer has both kinds of heads
        runs[fuse] = torch.cat(tokens, 1), torch.cat(logits, 1)
    assert torch.equal(runs[True][0], runs[False][0])
    assert torch.allclose(runs[True][1], runs[False][1], rtol=0, atol=1e-4)
