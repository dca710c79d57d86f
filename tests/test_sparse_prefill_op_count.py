"""PyTorch ops around the Triton sparse prefill of retrieval heads, against the flex path's block planning.

On a GPU each op that does work costs a kernel launch and 5-10 us of host time, and the sparse prefill runs once per
layer. Counted here on a CPU at 32K tokens with ``pooled`` block scores (the same PyTorch code on any device): the
Triton path's ops besides its kernels (replaced by stand-ins that only allocate their outputs, as the real wrappers
do) and the flex path's planning (``flex_plans.block_sparse_plan``, before its compiled attention). Views and
allocations launch nothing and are not counted. Measured with torch 2.13: 21 against 100.

With ``mass`` block scores, the CUDA branch (:func:`rtpurbo.ops.triton.block_mass.aligned_block_mass`, its two
kernels replaced by no-op launches, the branch reached on the CPU through a tensor that says it is on CUDA) adds no
op: 2 in all (the kept and seen counts' sums), where the general ``block_mass`` it replaced ran 43.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton", reason="the Triton kernels' module needs triton (pip install -e '.[test]')")

from rtpurbo.ops import flex_plans  # noqa: E402
from rtpurbo.ops.triton import block_mass, block_sparse  # noqa: E402

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


class OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: the sparse prefill takes its CUDA branch for it."""

    @property
    def is_cuda(self) -> bool:
        return True


class NoLaunch:
    """A jit kernel's stand-in: ``kernel[grid](...)`` launches nothing and counts the call."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            self.launches += 1
        return launch


def _prefill_inputs(length: int, group: int):
    """q_idx, k_idx (1, 1, L, 16) fp32; q (1, group, L, 64), k, v (1, 1, L, 64) fp16; positions (1, L)."""
    q_idx, k_idx = torch.randn(1, 1, length, 16), torch.randn(1, 1, length, 16)
    q = torch.randn(1, group, length, 64, dtype=torch.float16)
    k = v = torch.randn(1, 1, length, 64, dtype=torch.float16)
    return q_idx, k_idx, q, k, v, torch.arange(length)[None]


def _stand_in_selection_and_attention(monkeypatch) -> None:
    """Replace the selection and attention kernels' wrappers by stand-ins that only allocate their outputs."""
    def lists(scores, q_len, k_len, **kw):  # the selection kernel's outputs, unwritten
        shape = scores.shape[:3]
        return (torch.empty(*shape, 16, dtype=torch.int32), torch.empty(*shape, dtype=torch.int32),
                torch.empty(*shape, dtype=torch.int32))

    monkeypatch.setattr(block_sparse, "select_block_lists", lists)
    monkeypatch.setattr(block_sparse, "block_sparse_attention", lambda q, *args, **kw: torch.empty_like(q))


def test_the_triton_path_runs_a_quarter_of_the_flex_planning_ops(monkeypatch):
    group = 4
    q_idx, k_idx, q, k, v, pos = _prefill_inputs(32768, group)
    budget = dict(top_p=0.999, max_blocks=16, sinks=4, band=512, scoring="pooled")
    _stand_in_selection_and_attention(monkeypatch)
    with CountOps() as triton_path:
        block_sparse.sparse_prefill(q, k, v, pos, pos, q_idx, k_idx, scale=0.125, **budget)
    with CountOps() as flex_plan:
        flex_plans.block_sparse_plan(q_idx, k_idx, pos, pos, group=group, **budget)
    assert len(triton_path.ops) <= MAX_TRITON_PATH_OPS, triton_path.ops
    assert 4 * len(triton_path.ops) <= len(flex_plan.ops), (len(triton_path.ops), len(flex_plan.ops))


def test_mass_scores_add_no_ops_to_the_triton_path(monkeypatch):
    """``mass`` block scores on the CUDA branch: two kernel launches per chunk and no PyTorch op besides
    allocations, so the whole path stays within the ``pooled`` path's bound."""
    q_idx, k_idx, q, k, v, pos = _prefill_inputs(32768, 4)
    budget = dict(top_p=0.999, max_blocks=16, sinks=4, band=512, scoring="mass")
    _stand_in_selection_and_attention(monkeypatch)
    kernels = {name: NoLaunch() for name in ("_aligned_lse_kernel", "_log_mass_kernel")}
    for name, kernel in kernels.items():
        monkeypatch.setattr(block_mass, name, kernel)
    with CountOps() as mass_path:
        block_sparse.sparse_prefill(q, k, v, pos, pos, q_idx.as_subclass(OnCuda), k_idx, scale=0.125, **budget)
    assert {name: kernel.launches for name, kernel in kernels.items()} == dict.fromkeys(kernels, 1)  # one chunk
    assert len(mass_path.ops) <= MAX_TRITON_PATH_OPS, mass_path.ops
