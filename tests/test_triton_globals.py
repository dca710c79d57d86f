"""Triton kernels read only ``tl.constexpr`` module globals.

Triton's compiler refuses any other global a ``@triton.jit`` function reads ("Cannot access global variable ...
from within @jit'ed function"), but the CPU interpreter that runs the kernel tests in CI does not check this, so a
plain ``N = 256`` read inside a kernel passes every CPU test and fails on the first GPU call. This test reads each
jit function of :mod:`rtpurbo.ops.triton` and flags names that resolve to plain module-level values.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
import types

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")
tl = pytest.importorskip("triton.language")


def _jit_functions():
    import rtpurbo.ops.triton as package

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.jit.JITFunction) and obj.fn.__module__ == module.__name__:
                yield module, name, obj


def plain_globals_read(module: types.ModuleType, fn) -> list[str]:
    """Names a jit function reads that are module globals holding plain values (not tl.constexpr)."""
    func = ast.parse(textwrap.dedent(inspect.getsource(fn.fn))).body[0]
    args = func.args
    local = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    local |= {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    found = []
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
            value = vars(module).get(node.id, tl)  # tl: a module, allowed
            if isinstance(value, (bool, int, float, str, tuple, list, dict, set)):
                found.append(f"{node.id} = {value!r}")
    return sorted(set(found))


def test_every_module_of_kernels_is_read():
    names = {module.__name__.rsplit(".", 1)[1] for module, _, _ in _jit_functions()}
    assert {"window", "sink_merge", "threshold_phases", "decode"} <= names


def test_jit_functions_read_only_constexpr_globals():
    bad = [f"{module.__name__}.{name}: {', '.join(found)}" for module, name, fn in _jit_functions()
           if (found := plain_globals_read(module, fn))]
    assert not bad, "make these globals tl.constexpr(...):\n" + "\n".join(bad)


def test_the_check_sees_a_plain_global(tmp_path, monkeypatch):
    (tmp_path / "plain_global_example.py").write_text(textwrap.dedent('''
        import triton
        import triton.language as tl

        LIMIT = 256
        BOUND = tl.constexpr(8)


        @triton.jit
        def kernel(x_ptr, N: tl.constexpr):
            i = tl.arange(0, N)
            tl.store(x_ptr + i, i * LIMIT + BOUND)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("plain_global_example")
    assert plain_globals_read(module, module.kernel) == ["LIMIT = 256"]
