"""The compile check's rules for kernels launched with programmatic dependent launch (PDL).

:func:`tests.triton_interpreter.pdl_order_problems` reads the PTX of every launch the interpreter tests record, compiled
for sm_90 with ``PDL=True``, and reports a global load or write before the kernel's wait, a missing wait, or a next
launch let in before the wait. Here it is shown to catch each of these, on PTX text and on kernels
compiled by Triton's own compiler (no GPU needed), and to pass a kernel that follows the rules.
"""
from __future__ import annotations

import inspect

import pytest

from tests.triton_interpreter import SM90, pdl_order_problems

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")
tl = pytest.importorskip("triton.language")

from rtpurbo.ops.triton.dependent_launch import let_next_launch, wait_for_previous  # noqa: E402


@triton.jit
def _by_the_rules(src, out, n, PDL: tl.constexpr):
    offs = tl.arange(0, 64)  # index arithmetic before the wait: no memory touched
    wait_for_previous(PDL)
    early = tl.load(src + offs, mask=offs < n, other=0.0)
    let_next_launch(PDL)
    tl.store(out + offs, early + tl.load(out + offs, mask=offs < n, other=0.0), mask=offs < n)


@triton.jit
def _store_before_wait(src, out, n, PDL: tl.constexpr):
    offs = tl.arange(0, 64)
    tl.store(out + offs, tl.zeros([64], tl.float32), mask=offs < n)
    wait_for_previous(PDL)
    tl.store(out + offs, tl.load(src + offs, mask=offs < n, other=0.0), mask=offs < n)


@triton.jit
def _load_before_wait(src, out, n, PDL: tl.constexpr):
    offs = tl.arange(0, 64)
    early = tl.load(src + offs, mask=offs < n, other=0.0, cache_modifier=".cg")
    wait_for_previous(PDL)
    tl.store(out + offs, early, mask=offs < n)


@triton.jit
def _launch_before_wait(src, out, n, PDL: tl.constexpr):
    offs = tl.arange(0, 64)
    let_next_launch(PDL)
    wait_for_previous(PDL)
    tl.store(out + offs, tl.load(src + offs, mask=offs < n, other=0.0), mask=offs < n)


@triton.jit
def _never_waits(src, out, n, PDL: tl.constexpr):
    offs = tl.arange(0, 64)
    tl.store(out + offs, tl.load(src + offs, mask=offs < n, other=0.0), mask=offs < n)


def _ptx(kernel) -> str:
    from triton.backends.compiler import GPUTarget

    names = list(inspect.signature(kernel.fn).parameters)
    source = triton.compiler.ASTSource(fn=kernel, signature=dict(src="*fp32", out="*fp32", n="i32", PDL="constexpr"),
                                       constexprs={(names.index("PDL"),): True})
    return triton.compile(source, target=GPUTarget(*SM90), options=dict(launch_pdl=True)).asm["ptx"]


@pytest.mark.parametrize("kernel, expected", [
    (_by_the_rules, None),
    (_store_before_wait, "writes global memory before its wait"),
    (_load_before_wait, "loads global memory before its wait"),
    (_launch_before_wait, "lets the next kernel launch before its own wait"),
    (_never_waits, "never waits"),
], ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_compiled_kernels_are_held_to_the_pdl_rules(kernel, expected):
    problems = pdl_order_problems(_ptx(kernel))
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_rules_read_predicated_instructions_and_only_the_text_before_the_first_wait():
    ptx = "\n".join(["ld.param.u64 %rd1, [p];", "@%p1 add.s32 %r1, %r2, 1;", "griddepcontrol.wait; // x",
                     "@%p2 ld.global.b32 {%r1}, [%rd1];", "@%p2 st.global.b32 [%rd1], %r1;",
                     "griddepcontrol.launch_dependents;"])
    assert pdl_order_problems(ptx) == []
    assert pdl_order_problems(ptx.replace("@%p1 add.s32 %r1, %r2, 1", "@%p1 atom.global.add.u32 %r2, [%rd1], 1")) != []
    assert pdl_order_problems(ptx.replace("@%p1 add.s32 %r1, %r2, 1", "@%p1 ld.global.cg.v4.b32 {%r1}, [%rd1]")) != []
