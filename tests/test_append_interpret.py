"""The fused one-token cache write (rtpurbo.ops.triton.append) on CPU, through the Triton interpreter.

Static decode on a GPU writes each token into both roles' storage with one kernel launch
instead of 14 torch ops. Here that kernel runs under ``TRITON_INTERPRET=1`` (set before triton
compiles anything, so in a child process: this file run as a script) in place of the torch
path, through whole greedy decodes of tiny converted models (retrieval and local heads, a
non-contiguous head order in qwen3, a left-padded batch of 2, and a Mistral whose own sliding window makes its
retrieval heads' store a ring). The writes are copies, so the
cache tensors, logits and tokens must be bitwise those of the torch path. CI installs a triton whose
interpreter runs it (``tests/triton_interpreter.py``); the GPU runs the kernel for real in test_decode_static.py.
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (family, top_p, batch); "mistral-window" is a Mistral whose own sliding window (8 tokens) is shorter than the
# prompt: its retrieval heads' store is a ring, which the kernel writes at each row's own slot
CASES = [("llama", 0.7, 1), ("llama", 0.7, 2), ("qwen3", 0.7, 2), ("llama", 1.0, 2), ("mistral-window", 0.7, 2)]


def _windowed_model(top_p: float):
    from rtpurbo.config import SparseConfig
    from rtpurbo.convert import convert
    from rtpurbo.testing import tiny_model

    from tests.test_cache import mixed_plan

    model = tiny_model("mistral", sliding_window=8)
    convert(model, mixed_plan(model), SparseConfig(seqlen_threshold=0, window=8, sinks=2, top_p=top_p, min_tokens=2,
                                                   recent=2, decode_impl="reference"))
    return model


def _run_case(family: str, top_p: float, batch: int) -> dict:
    import torch

    import rtpurbo.cache_attention
    from rtpurbo.ops.triton import append

    from tests.test_decode_static import PROMPT, STEPS, _model, greedy

    model = _windowed_model(top_p) if family == "mistral-window" else _model(family, top_p)
    if family == "mistral-window":
        assert any(m.base_window == 8 and m.retrieval_heads for m in model.modules() if hasattr(m, "base_window"))
    capacity = PROMPT + STEPS + 3
    want_tokens, want_logits, want_cache = greedy(model, batch, static=capacity)
    original = rtpurbo.cache_attention._append_kernels
    rtpurbo.cache_attention._append_kernels = lambda like: append  # the kernel on CPU tensors (interpreted)
    try:
        tokens, logits, cache = greedy(model, batch, static=capacity)
    finally:
        rtpurbo.cache_attention._append_kernels = original
    same_tensors = all(torch.equal(a, b) for got, want in zip(cache.store, want_cache.store)
                       for a, b in zip(got.tensors(), want.tensors()))
    rings = [layer.r_ring for layer in cache.store if layer is not None]
    if family == "mistral-window" and not all(rings):
        return dict(ring=rings)  # the case must run the ring
    return dict(tokens=bool(torch.equal(tokens, want_tokens)), logits=bool(torch.equal(logits, want_logits)),
                cache=same_tensors, counters=cache.host_counters() == want_cache.host_counters())


@pytest.fixture(scope="module")
def report() -> dict:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch of the cases, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("case", [f"{f}-p{p}-b{b}" for f, p, b in CASES])
def test_fused_append_equals_torch_path(report, case):
    assert report[case] == dict(tokens=True, logits=True, cache=True, counters=True), report[case]


if __name__ == "__main__":
    print(json.dumps({f"{f}-p{p}-b{b}": _run_case(f, p, b) for f, p, b in CASES}))
