"""Local-head plain prefill on cuDNN's banded SDPA plus the sink merge (:mod:`rtpurbo.ops.cudnn_window`), on a GPU.

Against the fp32 reference on the window kernel's cases (GQA, the model's transposed layout, sinks beyond a
16-key tile, no sinks, a window past the length, head dims 64-256, bf16 and fp16), within twice the eager error at
the same precision; through a head map into a wider layer output; and through ``ops.attention(plain=True)`` once
``set_window_kernel("cudnn")`` chose it (bit-equal to the direct call, and an input it cannot run raises).
"""
from __future__ import annotations

import importlib.util
import zlib

import pytest
import torch

from rtpurbo.ops import api, cudnn_window, flex, reference

from .test_ops_gpu import WINDOW_CASES, _assert_budget, _eager, _poison, _qkv

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN's banded SDPA needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("cudnn") is None,
                       reason=f"cudnn-frontend is not installed ({cudnn_window.INSTALL_HINT})"),
]


def _inputs(case):
    name, batch, length, n_kv, group, dim, window, sinks, dtype, layout = case
    torch.manual_seed(zlib.crc32(name.encode()))
    if layout:
        q, k, v = (torch.randn(batch, length, n, dim, device="cuda", dtype=dtype).transpose(1, 2)
                   for n in (n_kv * group, n_kv, n_kv))
    else:
        q, k, v = _qkv(batch, n_kv * group, n_kv, length, length, dim, dtype)
    return q, k, v, torch.arange(length, device="cuda").repeat(batch, 1)


@pytest.mark.parametrize("case", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_cudnn_window_matches_reference(case):
    name, _, _, _, _, dim, window, sinks, dtype, _ = case
    q, k, v, pos = _inputs(case)
    ref = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=window, sinks=sinks)
    eager = _eager(q, k, v, pos, pos, window, sinks)
    _poison()
    out = cudnn_window.window_attention(q, k, v, window=window, sinks=sinks, scale=dim**-0.5)
    assert out.shape == q.shape and out.dtype == dtype
    _assert_budget(out, ref, eager, name)


def test_cudnn_window_writes_through_a_head_map():
    case = ("1025-g4-w256-s4-layout", 2, 1025, 2, 4, 128, 256, 4, torch.bfloat16, True)
    q, k, v, pos = _inputs(case)
    layer = torch.full((2, 1025, 10, 128), 7.0, device="cuda", dtype=torch.bfloat16)
    heads = torch.tensor([9, 8, 5, 4, 3, 2, 1, 0], device="cuda")
    got = cudnn_window.window_attention(q, k, v, window=256, sinks=4, scale=128**-0.5, out=layer.transpose(1, 2),
                                        out_heads=heads)
    assert got.data_ptr() == layer.data_ptr()
    ref = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=256, sinks=4)
    _assert_budget(layer[:, :, heads].transpose(1, 2), ref, _eager(q, k, v, pos, pos, 256, 4), "head map")
    assert (layer[:, :, [6, 7]] == 7.0).all(), "heads outside the map were overwritten"


def test_plain_prefill_runs_cudnn_once_chosen_and_raises_where_it_cannot():
    case = ("3000-g7-w1000-s4-layout", 1, 3000, 1, 7, 128, 1000, 4, torch.bfloat16, True)
    q, k, v, pos = _inputs(case)
    direct = cudnn_window.window_attention(q, k, v, window=1000, sinks=4, scale=128**-0.5)
    previous = flex.set_window_kernel("cudnn")
    try:
        through = api.attention(q, k, v, pos, pos, window=1000, sinks=4, impl="flex", plain=True)
        assert torch.equal(through, direct)
        with pytest.raises(ValueError, match="cuDNN window kernel cannot run this"):
            api.attention(q.float(), k.float(), v.float(), pos, pos, window=1000, sinks=4, impl="flex", plain=True)
    finally:
        flex.set_window_kernel(previous)
    triton = api.attention(q, k, v, pos, pos, window=1000, sinks=4, impl="flex", plain=True)
    assert not torch.equal(triton, direct), "the default (Triton) path ran the cuDNN kernel"
