"""The running sums of the decode-time selection (:class:`rtpurbo.selection_stats.SelectionStats`) and the ``key_sums``
that :func:`rtpurbo.ops.topp_attention` adds a step to (the Triton combine's own sums: the ``*_interpret`` tests)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rtpurbo._compat import cache_kwarg
from rtpurbo.cache import HeadwiseCache
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.ops import api as ops
from rtpurbo.selection_stats import SelectionStats
from rtpurbo.testing import tiny_model

from .conftest import random_ids


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_summary_counts_every_row_head_and_step():
    """Two layers with 2 and 1 retrieval heads over three steps: the mean counts every (row, head, step) once, and
    the fraction divides by the keys every head saw."""
    stats = SelectionStats()
    for step in range(3):
        stats.step_sums(0, 1, 2, torch.device("cpu")).add_(torch.tensor([[[10, 100 + step], [20, 100 + step]]]))
        stats.step_sums(1, 1, 1, torch.device("cpu")).add_(torch.tensor([[[30, 100 + step]]]))
    summary = stats.summary()
    assert summary["samples"] == 9
    assert summary["mean_selected"] == pytest.approx((3 * (10 + 20) + 3 * 30) / 9)
    assert summary["mean_fraction"] == pytest.approx(180 / ((2 + 1) * (100 + 101 + 102)))


def test_a_later_step_of_a_layer_runs_no_op():
    """Once a layer's sums exist, handing them to a step is no op at all (no kernel launch on a GPU): the attention
    adds the step itself."""
    stats = SelectionStats()
    first = stats.step_sums(3, 2, 2, torch.device("cpu"))
    with _Ops() as seen:
        again = stats.step_sums(3, 2, 2, torch.device("cpu"))
    assert seen.names == [] and again is first
    assert stats.samples[3] == 8


def test_another_batch_keeps_the_total_and_other_heads_are_refused():
    stats = SelectionStats()
    stats.step_sums(0, 2, 1, torch.device("cpu")).add_(torch.tensor([[[4, 20]], [[6, 20]]]))  # two rows
    stats.step_sums(0, 1, 1, torch.device("cpu")).add_(torch.tensor([[[5, 8]]]))  # one row
    summary = stats.summary()
    assert summary["mean_selected"] == pytest.approx(15 / 3)
    assert summary["mean_fraction"] == pytest.approx(15 / 48)
    with pytest.raises(ValueError, match="retrieval heads"):
        stats.step_sums(0, 1, 2, torch.device("cpu"))


def _topp_inputs(seed: int):
    """One decode query per row over 40 keys; row 1 is left-padded by 7 slots and has 3 empty slots at the end."""
    g = torch.Generator().manual_seed(seed)
    batch, n_kv, group, n_keys, dim = 2, 2, 2, 40, 16
    q = torch.randn(batch, n_kv * group, 1, dim, generator=g)
    k, v = (torch.randn(batch, n_kv, n_keys, dim, generator=g) for _ in range(2))
    q_idx = torch.randn(batch, n_kv, 1, 8, generator=g)
    k_idx = torch.randn(batch, n_kv, n_keys, 8, generator=g)
    k_pos = torch.arange(n_keys).repeat(batch, 1)
    k_pos[1, :7] = -1
    k_pos[1, -3:] = -1
    q_pos = torch.tensor([[n_keys - 1], [n_keys - 5]])
    return q, k, v, q_pos, k_pos, q_idx, k_idx


@pytest.mark.parametrize("top_p", [0.7, 1.0])
def test_topp_attention_adds_selected_and_visible_keys(top_p):
    """The reference backend adds each call to ``key_sums``: the counts it returns and the keys a full head sees
    (row 0: positions 0..39 at query 39; row 1: 7..36 at query 35, 29 keys), on top of what the sums held."""
    q, k, v, q_pos, k_pos, q_idx, k_idx = _topp_inputs(seed=1)
    sums = torch.full((2, 2, 2), 5, dtype=torch.int64)
    args = dict(top_p=top_p, min_tokens=2, sinks=2, recent=3, impl="reference")
    _, counts = ops.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, key_sums=sums, **args)
    _, again = ops.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, key_sums=sums, **args)
    assert torch.equal(counts, again)
    assert torch.equal(sums[..., 0], 5 + 2 * counts[..., 0])
    assert sums[..., 1].tolist() == [[5 + 2 * 40] * 2, [5 + 2 * 29] * 2]
    if top_p == 1.0:
        assert torch.equal(sums[..., 0], sums[..., 1])  # every visible key


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 2, 3, dtype=torch.int64), r"\(2, 2, 2\)"),
    (torch.zeros(1, 2, 2, dtype=torch.int64), r"\(2, 2, 2\)"),
    (torch.zeros(2, 2, 2, dtype=torch.int32), "int64"),
])
def test_topp_attention_refuses_bad_key_sums(bad, match):
    q, k, v, q_pos, k_pos, q_idx, k_idx = _topp_inputs(seed=2)
    with pytest.raises(ValueError, match=match):
        ops.topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, top_p=0.7, impl="reference", key_sums=bad)
    assert not bad.any()


def test_cache_sums_every_step_of_a_left_padded_batch():
    """A converted model decoding a left-padded batch through :class:`HeadwiseCache`: each layer's sums hold, per row
    and head, the keys selected (each step's share of the visible keys is below 1 and at least ``min_tokens``) and
    exactly the keys a full head saw: at step ``t`` of row ``b``, the row's prompt tokens plus the ``t + 1`` tokens
    fed after it."""
    model = tiny_model("llama", num_layers=2, num_key_value_heads=2)
    layers, n_kv, n_q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, n_kv, n_q, [[0], [1]]),
            SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=0.5, min_tokens=3, recent=2))
    ids = random_ids(2, 30)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :6] = 0  # row 1: 24 prompt tokens
    cache = HeadwiseCache(model)
    steps = 5
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=True, **{cache_kwarg(): cache})
        for t in range(steps):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            model(random_ids(2, 1), attention_mask=mask, use_cache=True, **{cache_kwarg(): cache})
    want_visible = torch.tensor([sum(30 + t + 1 for t in range(steps)), sum(24 + t + 1 for t in range(steps))])
    assert sorted(cache.stats.key_sums) == [0, 1]
    for sums in cache.stats.key_sums.values():
        assert sums.shape == (2, 1, 2)
        assert torch.equal(sums[:, 0, 1], want_visible)
        assert (sums[..., 0] >= 3 * steps).all() and (sums[..., 0] < sums[..., 1]).all()
    summary = cache.stats.summary()
    assert summary["samples"] == 2 * 2 * steps
    total = sum(int(s[..., 0].sum()) for s in cache.stats.key_sums.values())
    assert summary["mean_fraction"] == pytest.approx(total / (2 * int(want_visible.sum())))
