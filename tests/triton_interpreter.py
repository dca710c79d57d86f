"""Can Triton's CPU interpreter run kernels here? (Shared by the ``*_interpret`` tests.)

The interpreter tests run rtpurbo's Triton kernels on the CPU, in a child process started with
``TRITON_INTERPRET=1``. CI installs a triton whose interpreter works (the ``test`` extra); the
interpreter of triton 3.6 (the H200 image) breaks under numpy >= 2 on any loop with a bound
computed from ``tl.program_id`` (``TypeError: only 0-dimensional arrays can be converted to
Python scalars``), so there the kernels are checked natively instead, by ``tests/test_ops_gpu.py``
and ``tests/test_decode_static.py``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys

_PROBE = """
import torch, triton, triton.language as tl

@triton.jit
def probe(out, n, chunk):
    part = tl.program_id(0)
    total = 0
    for _ in range(part * chunk, tl.minimum(part * chunk + chunk, n), 4):
        total += 1
    tl.store(out + part, total)

out = torch.zeros(3, dtype=torch.int32)
probe[(3,)](out, 20, 8)
assert out.tolist() == [2, 2, 1], out.tolist()
"""


@functools.cache
def problem() -> str | None:
    """None when the interpreter runs a loop-over-program-range probe kernel correctly, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install -e '.[test]' installs it)"
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode == 0:
        return None
    import numpy
    import triton

    last = (done.stderr.strip().splitlines() or ["?"])[-1]
    return (f"triton {triton.__version__}'s interpreter cannot run kernels with numpy {numpy.__version__} ({last}); "
            "the kernels are checked natively on a GPU by tests/test_ops_gpu.py and tests/test_decode_static.py")


def report_checks(checks) -> dict[str, list[str]]:
    """Run ``(name, check)`` pairs, each returning its problems (a list of strings; empty = passed), in the
    interpreter's child process; an exception is that check's one problem, and the others still run."""
    report = {}
    for name, check in checks:
        try:
            report[name] = check()
        except Exception as err:  # report, keep going
            report[name] = [f"{type(err).__name__}: {err}"]
    return report


def run_script(path: str, timeout: int = 900) -> dict:
    """Run a test file as a script under ``TRITON_INTERPRET=1`` (repository root on the path) and return the
    JSON report it prints last: the interpreter must be switched on before triton compiles anything."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"interpreter run failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
