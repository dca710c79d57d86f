"""Choosing the local heads' plain-prefill kernel (``rtpurbo.ops.flex.set_window_kernel``) and the retrieval heads'
sparse-prefill kernels (``set_sparse_prefill_kernel``), on any machine."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rtpurbo.ops import cudnn_window, flex, flex_plans


def test_set_window_kernel_validates_and_returns_the_previous_choice():
    assert flex.window_kernel() in flex.WINDOW_KERNELS
    first = flex.window_kernel()
    try:
        assert flex.set_window_kernel("cudnn") == first
        assert flex.window_kernel() == "cudnn"
        with pytest.raises(ValueError, match="window kernel must be one of"):
            flex.set_window_kernel("flash")
        assert flex.window_kernel() == "cudnn"
    finally:
        flex.set_window_kernel(first)


def test_environment_variable_sets_the_initial_choice_and_a_bad_one_is_refused():
    code = "from rtpurbo.ops import flex; print(flex.window_kernel())"
    env = dict(os.environ, RTPURBO_WINDOW_KERNEL="cudnn")
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "cudnn"
    env["RTPURBO_WINDOW_KERNEL"] = "sdpa"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "RTPURBO_WINDOW_KERNEL must be one of" in done.stderr


def test_cudnn_window_says_why_it_cannot_run():
    q, k, v = torch.zeros(1, 4, 64, 32), torch.zeros(1, 2, 64, 32), torch.zeros(1, 2, 64, 32)
    problem = cudnn_window.unsupported(q, k, v)
    assert problem is not None and ("cudnn-frontend is not installed" in problem or "CUDA tensors" in problem)
    with pytest.raises(ValueError, match="cuDNN window kernel cannot run this"):
        cudnn_window.window_attention(q, k, v, window=16, sinks=4, scale=0.2)


def test_set_sparse_prefill_kernel_validates_and_the_environment_sets_it():
    first = flex.sparse_prefill_kernel()
    assert first == "auto" or os.environ.get("RTPURBO_SPARSE_PREFILL_KERNEL")  # auto unless the environment says
    try:
        assert flex.set_sparse_prefill_kernel("triton") == first
        assert flex.sparse_prefill_kernel() == "triton"
        with pytest.raises(ValueError, match="sparse prefill kernel must be one of"):
            flex.set_sparse_prefill_kernel("cudnn")
        assert flex.sparse_prefill_kernel() == "triton"
    finally:
        flex.set_sparse_prefill_kernel(first)
    code = "from rtpurbo.ops import flex; print(flex.sparse_prefill_kernel())"
    env = dict(os.environ, RTPURBO_SPARSE_PREFILL_KERNEL="triton")
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "triton"
    env["RTPURBO_SPARSE_PREFILL_KERNEL"] = "pallas"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "RTPURBO_SPARSE_PREFILL_KERNEL must be one of" in done.stderr


@pytest.mark.parametrize("kernel, aligned, grad, takes, expected", [
    ("triton", True, False, True, "triton"), ("triton", True, True, True, "flex"), ("triton", False, False, True, "flex"),
    ("flex", True, False, True, "flex"), ("auto", True, False, True, "triton"), ("auto", True, False, False, "flex"),
    ("auto", True, True, True, "flex"), ("auto", False, False, True, "flex")])
def test_sparse_prefill_routes_by_choice_layout_and_gradients(monkeypatch, kernel, aligned, grad, takes, expected):
    """api.sparse_prefill on the flex backend: the Triton kernels take aligned calls without gradients after
    set_sparse_prefill_kernel("triton"), and under "auto" where they take the tensors (``takes``); padded / unaligned
    calls, gradients and the flex choice plan for flex."""
    from rtpurbo.ops import api

    called = []
    monkeypatch.setattr(api, "resolve_impl", lambda impl, device: "flex")
    monkeypatch.setattr(flex, "aligned_sparse_prefill",
                        lambda q, *args: called.append("triton") or (torch.zeros_like(q), torch.tensor(1), torch.tensor(2)))
    monkeypatch.setattr(flex_plans, "block_sparse_plan",
                        lambda *args, **kw: called.append("flex") or (None, torch.tensor(1), torch.tensor(2)))
    monkeypatch.setattr(flex, "run", lambda plan, q, k, v, scale: torch.zeros_like(q))
    monkeypatch.setattr(flex, "triton_sparse_prefill_takes", lambda q, k, v: takes)
    q = torch.randn(1, 2, 256, 16, requires_grad=grad)
    pos = torch.arange(256)[None]
    idx = torch.randn(1, 1, 256, 4)
    previous = flex.set_sparse_prefill_kernel(kernel)
    try:
        api.sparse_prefill(q, q[:, :1], q[:, :1], pos, pos, idx, idx, top_p=0.5, impl="flex", aligned=aligned)
    finally:
        flex.set_sparse_prefill_kernel(previous)
    assert called == [expected]


@pytest.mark.skipif(flex.block_sparse_kernels is None, reason="the Triton kernels' module needs triton")
def test_auto_takes_what_the_triton_kernels_run():
    """``auto`` decides from dtypes and shapes: half-precision power-of-two heads on aligned blocks, nothing else."""
    def qkv(dtype, dim, q_len=256, k_len=512):
        return (torch.empty(1, 2, q_len, dim, dtype=dtype), torch.empty(1, 1, k_len, dim, dtype=dtype),
                torch.empty(1, 1, k_len, dim, dtype=dtype))

    assert flex.triton_sparse_prefill_takes(*qkv(torch.bfloat16, 128))
    assert flex.triton_sparse_prefill_takes(*qkv(torch.float16, 64))
    assert not flex.triton_sparse_prefill_takes(*qkv(torch.float32, 128))
    assert not flex.triton_sparse_prefill_takes(*qkv(torch.bfloat16, 96))
    assert not flex.triton_sparse_prefill_takes(*qkv(torch.bfloat16, 128, q_len=200, k_len=500))
