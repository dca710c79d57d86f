"""PyTorch ops around the Triton sparse prefill of retrieval heads, against the flex path's block planning.

On a GPU each op that does work costs a kernel launch and 5-10 us of host time, and the sparse prefill runs once per
layer. Counted here on a CPU at 32K tokens with ``pooled`` block scores (the same PyTorch code on any device): the
Triton path's ops besides its kernels (replaced by stand-ins that only allocate their outputs, as the real wrappers
do) and the flex path's planning (``flex.block_sparse_plan``, before its compiled attention). Views and allocations
launch nothing and are not counted. Measured with torch 2.13: 21 against 100.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton", reason="the Triton kernels' module needs triton (pip install -e '.[test]')")

from rtpurbo.ops import flex  # noqa: E402
from rtpurbo.ops.triton import block_sparse  # noqa: E402

LAUNCH_FREE = {"view", "_unsafe_view", "expand", "slice", "select", "unsqueeze", "squeeze", "transpose", "permute",
               "t", "alias", "detach", "as_strided", "empty", "empty_like", "empty_strided", "lift_fresh", "split",
               "unbind", "reshape"}
MAX_TRITON_PATH_OPS = 26  # 21 measured + 20 % for other torch versions


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in LAUNCH_FREE:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_the_triton_path_runs_a_quarter_of_the_flex_planning_ops(monkeypatch):
    length, group = 32768, 4
    q_idx, k_idx = torch.randn(1, 1, length, 16), torch.randn(1, 1, length, 16)
    q = torch.randn(1, group, length, 64, dtype=torch.float16)
    k = v = torch.randn(1, 1, length, 64, dtype=torch.float16)
    pos = torch.arange(length)[None]
    budget = dict(top_p=0.999, max_blocks=16, sinks=4, band=512, scoring="pooled")

    def lists(scores, q_len, k_len, **kw):  # the selection kernel's outputs, unwritten
        shape = scores.shape[:3]
        return (torch.empty(*shape, 16, dtype=torch.int32), torch.empty(*shape, dtype=torch.int32),
                torch.empty(*shape, dtype=torch.int32))

    monkeypatch.setattr(block_sparse, "select_block_lists", lists)
    monkeypatch.setattr(block_sparse, "block_sparse_attention", lambda q, *args, **kw: torch.empty_like(q))
    with CountOps() as triton_path:
        block_sparse.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, scale=0.125, **budget)
    with CountOps() as flex_plan:
        flex.block_sparse_plan(q_idx, k_idx, pos, pos, group=group, **budget)
    assert len(triton_path.ops) <= MAX_TRITON_PATH_OPS, triton_path.ops
    assert 4 * len(triton_path.ops) <= len(flex_plan.ops), (len(triton_path.ops), len(flex_plan.ops))
