"""Can Triton's CPU interpreter run kernels here? (Shared by the ``*_interpret`` tests.)

The interpreter tests run rtpurbo's Triton kernels on the CPU, in a child process started with
``TRITON_INTERPRET=1``. CI installs a triton whose interpreter works (the ``test`` extra); the
interpreter of triton 3.6 (the H200 image) breaks under numpy >= 2 on any loop with a bound
computed from ``tl.program_id`` (``TypeError: only 0-dimensional arrays can be converted to
Python scalars``), so there the kernels are checked natively instead, by ``tests/test_ops_gpu.py``
and ``tests/test_decode_static.py``.

The interpreter never runs Triton's compiler, so :func:`run_script` also records every launch of the
interpreted run and compiles each one for a Hopper GPU (sm_90) with the installed triton, which needs no GPU:
rules and errors that only the compiler sees (globals a kernel may read, types, layouts) fail on the CPU
machine instead of on the first GPU call. The launches with programmatic dependent launch (``PDL=True``) are also
read in their PTX (:func:`pdl_order_problems`): the rules that keep a chain of such launches correct are about the
order of instructions, which no CPU run can observe. CI compiles with the triton it installed; to compile with the GPU
image's own version too, install that one into a folder and name it in ``RTPURBO_COMPILE_TRITON``, e.g.
``pip install --no-deps --target /tmp/t36 triton==3.6.0`` and
``RTPURBO_COMPILE_TRITON=/tmp/t36 python -m pytest tests -k hopper``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

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


COMPILE_CHECK = "compiles-for-sm90"  # the report entry of :func:`run_script`'s compile check
COMPILE_TRITON = "RTPURBO_COMPILE_TRITON"  # optional folder holding the triton that the compile check uses
SM90 = ("cuda", 90, 32)  # the H200's target: backend, compute capability, warp size

# run in the interpreter's child: record every launch, run the test file as a script, then write the launches
_BOOT = """
import runpy, sys
from tests.triton_interpreter import record_launches
record_launches(sys.argv[2])
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def run_script(path: str, timeout: int = 900) -> dict:
    """Run a test file as a script under ``TRITON_INTERPRET=1`` (repository root on the path) and return the
    JSON report it prints last: the interpreter must be switched on before triton compiles anything.

    Every kernel launch of that run is recorded and then compiled for a Hopper GPU (sm_90) in a second child
    without the interpreter; the report's :data:`COMPILE_CHECK` entry lists what failed to compile. The
    interpreter runs kernels without Triton's compiler, so rules only the compiler enforces (e.g. that a kernel
    reads only ``tl.constexpr`` globals) would otherwise first fail on a GPU."""
    import tempfile

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        launches = Path(tmp) / "launches.json"
        done = subprocess.run([sys.executable, "-c", _BOOT, path, str(launches)], env=dict(env, TRITON_INTERPRET="1"),
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"interpreter run failed:\n{done.stderr[-3000:]}"
        report = json.loads(done.stdout.strip().splitlines()[-1])
        env.pop("TRITON_INTERPRET", None)
        if os.environ.get(COMPILE_TRITON):  # another triton, ahead of the installed one
            other = Path(os.environ[COMPILE_TRITON])
            if not (other / "triton" / "__init__.py").is_file():
                raise FileNotFoundError(f"{COMPILE_TRITON}={other} holds no triton package (pip install --no-deps "
                                        f"--target {other} triton==VERSION)")
            env["PYTHONPATH"] = os.pathsep.join([str(other), env["PYTHONPATH"]])
        compiled = subprocess.run([sys.executable, "-m", "tests.triton_interpreter", str(launches), path], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        if compiled.returncode != 0:
            report[COMPILE_CHECK] = [f"the compile run failed:\n{compiled.stderr[-3000:]}"]
        else:
            report[COMPILE_CHECK] = json.loads(compiled.stdout.strip().splitlines()[-1])
    return report


_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int64": "i64",
           "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def launch_spec(fn, args: tuple, kwargs: dict) -> dict:
    """A launch as Triton's compiler takes it: the kernel's module and name, each argument's type (a pointer
    to the tensor's dtype, i32 / i64, fp32, i1) or constexpr value, and the launch options."""
    params = list(inspect.signature(fn).parameters.values())
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    values = dict(zip([p.name for p in params], args)) | kwargs
    signature, constexprs = {}, {}
    for p in params:
        value = values.get(p.name, p.default)
        value = getattr(value, "value", value)  # tl.constexpr defaults
        if "constexpr" in str(p.annotation) or value is None:
            signature[p.name], constexprs[p.name] = "constexpr", value
        elif hasattr(value, "dtype") and hasattr(value, "data_ptr"):
            signature[p.name] = "*" + _DTYPES[str(value.dtype).removeprefix("torch.")]
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int):
            signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: no compile type for argument {p.name}={value!r}")
    return dict(module=fn.__module__, name=fn.__name__, signature=signature, constexprs=constexprs, options=options)


def record_launches(path: str) -> None:
    """In the interpreter's process: record every kernel launch (:func:`launch_spec`, once per distinct spec) and
    write them to ``path`` as JSON at exit."""
    import atexit

    from triton.runtime.interpreter import InterpretedFunction

    seen: dict[str, dict] = {}
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        spec = launch_spec(self.fn, args, kwargs)
        seen.setdefault(json.dumps(spec, sort_keys=True, default=str), spec)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    atexit.register(lambda: Path(path).write_text(json.dumps(list(seen.values()), default=str)))


def with_pdl(specs: list[dict]) -> list[dict]:
    """The launches whose kernel takes a ``PDL`` constexpr, as a Hopper GPU launches them with programmatic
    dependent launch (``PDL=True``, ``launch_pdl``): the interpreter cannot run that branch (inline PTX), so the
    compile check covers it."""
    return [dict(spec, constexprs=dict(spec["constexprs"], PDL=True), options=dict(spec["options"], launch_pdl=True))
            for spec in specs if spec["constexprs"].get("PDL") is False]


_GLOBAL_WRITES = ("st.global", "atom.global", "red.global", "st.async", "cp.async.bulk.global")


def pdl_order_problems(ptx: str) -> list[str]:
    """What breaks the rules of :mod:`rtpurbo.ops.triton.dependent_launch` in the PTX of a kernel compiled for a launch
    with PDL, in the order of the text (each kernel's wait comes first, outside any branch):

    * it waits (``griddepcontrol.wait``) for the kernel before it;
    * nothing before that wait reads or writes global memory;
    * it lets the next kernel launch (``griddepcontrol.launch_dependents``) only after its wait."""
    lines = [line.strip() for line in ptx.splitlines()]
    waits = [i for i, line in enumerate(lines) if line.startswith("griddepcontrol.wait")]
    if not waits:
        return ["launched with PDL but never waits for the kernel before it (griddepcontrol.wait)"]
    problems = []
    for line in lines[:waits[0]]:
        op = line.split(None, 1)[1] if line.startswith("@") and " " in line else line
        if op.startswith(_GLOBAL_WRITES):
            problems.append(f"writes global memory before its wait: {line}")
        elif op.startswith(("ld.global", "cp.async")):
            problems.append(f"loads global memory before its wait: {line}")
    launches = [i for i, line in enumerate(lines) if line.startswith("griddepcontrol.launch_dependents")]
    if launches and launches[0] < waits[0]:
        problems.append("lets the next kernel launch before its own wait")
    return problems


def compile_problems(specs: list[dict], script: str) -> list[str]:
    """Compile every launch spec for :data:`SM90` (no GPU needed); one line per spec that fails. Kernels the
    test script defines itself (module ``__main__``) are taken from ``tests.<script name>``. The launches with PDL
    are also held to :func:`pdl_order_problems`. The specs compile in parallel, one worker process per CPU this
    process may run on (a compile takes 1-4 s, and a script records up to a hundred distinct launches)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tests.triton_interpreter import _compile_spec  # by its module's name: this file may be running as __main__

    if not specs:
        return ["no kernel launch was recorded"]
    every = specs + with_pdl(specs)
    workers = max(1, min(len(every), len(os.sched_getaffinity(0))))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return [line for lines in pool.map(functools.partial(_compile_spec, script=script), every) for line in lines]


def _compile_spec(spec: dict, script: str) -> list[str]:
    """:func:`compile_problems` for one spec."""
    import triton
    from triton.backends.compiler import GPUTarget

    module = spec["module"] if spec["module"] != "__main__" else f"tests.{Path(script).stem}"
    fn = getattr(importlib.import_module(module), spec["name"])
    names = list(inspect.signature(fn.fn).parameters)
    source = triton.compiler.ASTSource(fn=fn, signature=spec["signature"],
                                       constexprs={(names.index(n),): v for n, v in spec["constexprs"].items()})
    try:
        compiled = triton.compile(source, target=GPUTarget(*SM90), options=spec["options"])
    except Exception as err:  # noqa: BLE001 - report every failing launch
        cause = err  # nested CompilationErrors (one per jit function, each with its source) end in the reason
        while (cause.__cause__ or cause.__context__) is not None:
            cause = cause.__cause__ or cause.__context__
        why = f"{type(cause).__name__}: " + " ".join(str(cause).split())[:400]
        return [f"{module}.{spec['name']} {spec['constexprs']}: {why}"]
    if spec["constexprs"].get("PDL") is True:
        return [f"{module}.{spec['name']} {spec['constexprs']}: {why}"
                for why in pdl_order_problems(compiled.asm["ptx"])]
    return []


if __name__ == "__main__":  # python -m tests.triton_interpreter LAUNCHES.json SCRIPT: the compile check
    print(json.dumps(compile_problems(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])))
