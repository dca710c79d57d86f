"""The one-launch rotary embedding (:mod:`rtpurbo.ops.triton.rotary`) on CPU, through the Triton interpreter, and the
checks of :func:`rtpurbo.ops.rotary`.

The kernel runs under ``TRITON_INTERPRET=1`` (in a child process: this file run as a script) on the layouts a layer
hands it (q and k as transposed views of the projections, as ``SparseAttention.project`` returns them; contiguous
ones too), one token and several, head dims 64, 80 (masked lanes) and 128, head counts that fill one block and
several, in fp32, fp16 and bf16, against :func:`rtpurbo.ops.reference.rotary` (the rotation in fp32, rounded once)
and in fp32 the family's own ``apply_rotary_pos_emb``. The interpreter rounds fp32 to bf16 by truncation where a GPU
rounds to nearest, so in bf16 the budget is one unit in the last place of the reference; fp32 and fp16 must be
bit-equal. The GPU runs the kernel for real in ``tests/test_ops_gpu.py``, where it must also be at least as close to
the exact rotation as the family's function.
"""
from __future__ import annotations

import json

import pytest
import torch

from rtpurbo.ops import api as ops
from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

# (name, batch, tokens, query heads, kv heads, head dim, dtype, layout)
CASES = [
    ("decode-bf16", 2, 1, 32, 8, 128, "bfloat16", "projected"),
    ("prefill-bf16-d80", 2, 5, 9, 3, 80, "bfloat16", "projected"),
    ("prefill-fp32-d64", 1, 7, 4, 2, 64, "float32", "contiguous"),
    ("decode-fp16-d64", 3, 1, 12, 4, 64, "float16", "projected"),
]


def _inputs(case, seed: int = 0):
    """q, k as the case lays them out, and the cos / sin of transformers' Llama rotary embedding at random positions."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    _, batch, tokens, n_q, n_kv, dim, dtype, layout = case
    dtype = getattr(torch, dtype)
    g = torch.Generator().manual_seed(seed)
    if layout == "projected":  # (B, L, H, D) projections viewed as (B, H, L, D)
        q = torch.randn(batch, tokens, n_q, dim, generator=g).to(dtype).transpose(1, 2)
        k = torch.randn(batch, tokens, n_kv, dim, generator=g).to(dtype).transpose(1, 2)
    else:
        q = torch.randn(batch, n_q, tokens, dim, generator=g).to(dtype)
        k = torch.randn(batch, n_kv, tokens, dim, generator=g).to(dtype)
    config = LlamaConfig(hidden_size=dim * n_q, num_attention_heads=n_q, num_key_value_heads=n_kv, head_dim=dim,
                         max_position_embeddings=4096)
    positions = torch.randint(0, 4000, (batch, tokens), generator=g)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    return q, k, cos, sin


MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23, torch.float64: 52}


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each element of ``x`` in ``x``'s dtype, as fp64 (of the smallest normal for 0)."""
    wide = x.double().abs().clamp(min=torch.finfo(x.dtype).tiny)
    return torch.ldexp(torch.ones_like(wide), torch.frexp(wide).exponent - 1 - MANTISSA_BITS[x.dtype])


def _check(case) -> list[str]:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import rotary

    q, k, cos, sin = _inputs(case)
    got = rotary.rotary(q, k, cos, sin)
    want = reference.rotary(q, k, cos, sin)
    family = apply_rotary_pos_emb(q, k, cos, sin)  # compared in fp32, where both compute the same values
    problems = []
    for name, x, out, ref, theirs in zip("qk", (q, k), got, want, family):
        if out.stride() != x.stride() or out.dtype != x.dtype:
            problems.append(f"{name}: strides {out.stride()} {out.dtype}, want {x.stride()} {x.dtype}")
            continue
        off = (out.double() - ref.double()).abs()
        if x.dtype == torch.bfloat16:
            if not bool((off <= _ulp(ref)).all()):
                problems.append(f"{name}: {int((off > _ulp(ref)).sum())} elements more than one ulp off the reference")
        elif not torch.equal(out, ref):
            problems.append(f"{name}: {int((out != ref).sum())} elements differ from the reference")
        if x.dtype == torch.float32 and not torch.allclose(out, theirs, rtol=1e-6, atol=1e-6):
            problems.append(f"{name}: off the family's rotation by {(out - theirs).abs().max().item():.3g} in fp32")
    return problems


def _run_all() -> dict[str, list[str]]:
    return report_checks([(case[0], lambda case=case: _check(case)) for case in CASES])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


interpreted = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))


@interpreted
def test_every_launch_compiles_for_hopper(report):
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@interpreted
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_rotary_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


def test_the_reference_is_the_families_rotation_rounded_once():
    """In fp64 the reference equals transformers' ``apply_rotary_pos_emb`` (the same math); in bf16 it is at least
    as close to that exact rotation, element by element, up to one rounding."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from rtpurbo.ops import reference

    q, k, cos, sin = _inputs(CASES[1])
    wide = [t.double() for t in (q, k, cos, sin)]
    for ours, theirs in zip(reference.rotary(*wide), apply_rotary_pos_emb(*wide)):
        assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    exact = reference.rotary(q.double(), k.double(), cos.double(), sin.double())
    for ours, theirs, want in zip(reference.rotary(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin), exact):
        assert bool(((ours.double() - want).abs() <= 0.5 * _ulp(ours) + 1e-12).all())
        assert (ours.double() - want).abs().mean() <= (theirs.double() - want).abs().mean()


@pytest.mark.parametrize("change, match", [
    (lambda q, k, c, s: (q[..., :63], k[..., :63], c[..., :63], s[..., :63]), "even head dim"),
    (lambda q, k, c, s: (q, k, c[..., :32], s[..., :32]), "every dim"),
    (lambda q, k, c, s: (q, k[:1], c, s), "same B, L and D"),
    (lambda q, k, c, s: (q, k.float(), c, s), "float dtype"),
    (lambda q, k, c, s: (q, k, c.to("meta"), s), "one device"),
])
def test_bad_inputs_are_refused_before_any_backend(change, match):
    q, k, cos, sin = _inputs(("", 2, 3, 4, 2, 64, "bfloat16", "projected"))
    with pytest.raises(ValueError, match=match):
        ops.rotary(*change(q, k, cos, sin), impl="reference")


def test_the_triton_backend_needs_a_gpu():
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the kernel runs there (tests/test_ops_gpu.py)")
    q, k, cos, sin = _inputs(CASES[0])
    with pytest.raises(ops.BackendUnavailable, match="not available"):
        ops.rotary(q, k, cos, sin, impl="triton")


def test_a_layer_on_the_cpu_rotates_with_its_familys_function():
    """Off the GPU path a converted layer's rotation is transformers' own, bit for bit (the dense model's)."""
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    from rtpurbo.config import HeadPlan, SparseConfig
    from rtpurbo.convert import convert
    from rtpurbo.families import attention_modules, geometry
    from rtpurbo.testing import tiny_model

    model = tiny_model("qwen3")
    layers, n_kv, n_q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, n_kv, n_q, [[0]] * layers), SparseConfig())
    module = attention_modules(model)[0]
    q, k, cos, sin = _inputs(("", 2, 3, n_q, n_kv, module.head_dim, "float32", "projected"))
    with torch.no_grad():
        for ours, theirs in zip(module.rotate(q, k, (cos, sin)), apply_rotary_pos_emb(q, k, cos, sin)):
            assert torch.equal(ours, theirs)


if __name__ == "__main__":
    print(json.dumps(_run_all()))
