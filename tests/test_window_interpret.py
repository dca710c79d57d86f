"""The Triton window kernel of local-head plain prefill, on CPU through the Triton interpreter.

:func:`rtpurbo.ops.triton.window.window_attention` against :func:`rtpurbo.ops.reference.attention` in
fp32, under ``TRITON_INTERPRET=1`` (in a child process), with small tiles so that every kind of key
block occurs: sink blocks below the window, the window's lower edge, whole blocks and the diagonal,
windows shorter than a query tile, more sinks than a key tile, a window past the sequence, GQA groups,
the model's transposed (B, L, H, D) layout, a length that is no multiple of a tile, and output heads
written through a head map into a wider layer output; and later prefill chunks (queries at an offset over the
sinks, a head-wise cache's ring unrolled, and the chunk's own keys), with a full ring, a ring partly empty, a
chunk right after the sinks and no sinks. Both load kinds
run: tensor descriptors (TMA on a GPU) and pointers. The budget is twice the error of the same
attention done eagerly in the inputs' precision. fp16 only: the interpreter of triton 3.9 computes
``tl.dot`` of bf16 operands wrongly (it multiplies their raw bits), so bf16 runs natively on a GPU in
``tests/test_ops_gpu.py``.
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, batch, length, KV heads, group, head dim, window, sinks, model layout, block_m, block_n)
CASES = [
    ("edge-and-sinks", 1, 200, 2, 2, 32, 48, 4, False, 32, 16),
    ("window-below-tile", 2, 150, 1, 3, 16, 8, 0, True, 32, 16),
    ("window-past-length", 1, 100, 2, 1, 64, 300, 2, False, 32, 16),
    ("sinks-over-a-tile", 1, 130, 1, 2, 32, 40, 20, False, 32, 16),
    ("square-tiles", 1, 161, 1, 4, 32, 64, 4, True, 32, 32),
    ("many-whole-blocks", 1, 260, 1, 2, 32, 128, 4, False, 32, 16),
]


KINDS = {"tma": dict(tma=True), "pointers": dict(tma=False)}  # launch kinds: TMA descriptors, pointer loads


def _check(case, kind: dict) -> list[str]:
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import window

    name, batch, length, n_kv, group, dim, win, sinks, layout, block_m, block_n = case
    g = torch.Generator().manual_seed(len(name))
    shape = lambda n: (batch, length, n, dim) if layout else (batch, n, length, dim)  # noqa: E731
    q, k, v = (torch.randn(*shape(n), generator=g).half() for n in (n_kv * group, n_kv, n_kv))
    if layout:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    pos = torch.arange(length).repeat(batch, 1)
    want = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=win, sinks=sinks)
    eager = reference.attention(q, k, v, pos, pos, window=win, sinks=sinks).float()
    launch = window.WindowLaunch(block_m=block_m, block_n=block_n, **kind)
    got = window.window_attention(q, k, v, window=win, sinks=sinks, scale=dim**-0.5, launch=launch)
    problems = []
    if got.shape != q.shape or got.dtype != q.dtype:
        problems.append(f"output {got.dtype} {tuple(got.shape)}")
    err = ((got.float() - want).norm() / want.norm()).item()
    budget = 2 * ((eager - want).norm() / want.norm()).item()
    if not err <= budget:
        problems.append(f"relative error {err:.2e} > twice eager fp16 ({budget:.2e})")
    return problems


# (name, batch, chunk start P, chunk length, KV heads, group, head dim, window, sinks, block_m, block_n)
CHUNK_CASES = [
    ("full-ring", 1, 150, 70, 2, 2, 32, 48, 4, 32, 16),
    ("ring-partly-empty", 2, 30, 61, 1, 3, 16, 48, 4, 32, 16),
    ("chunk-at-the-sinks", 1, 4, 40, 1, 2, 32, 20, 4, 32, 16),
    ("window-below-tile-no-sinks", 1, 77, 50, 2, 1, 32, 9, 0, 32, 16),
]


def _check_chunk(case, kind: dict) -> list[str]:
    """A later prefill chunk: queries at positions P..P+L-1 over the sinks, the ring unrolled to positions P-W..P-1
    (zeros where a head-wise cache's ring holds nothing: positions below S or 0) and the chunk's own keys."""
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import window

    name, batch, start, length, n_kv, group, dim, win, sinks, block_m, block_n = case
    g = torch.Generator().manual_seed(len(name) + 11)
    total = start + length
    q, k, v = (torch.randn(batch, n, total, dim, generator=g).half() for n in (n_kv * group, n_kv, n_kv))
    pos = torch.arange(total)
    ring_pos = torch.arange(start - win, start)
    held = ring_pos >= sinks  # what the ring holds; the rest stays zero

    def layout(x):
        ring = torch.zeros(batch, n_kv, win, dim).half()
        ring[:, :, held] = x[:, :, ring_pos[held]]
        return torch.cat([x[:, :, :sinks], ring, x[:, :, start:]], dim=2)

    want = reference.attention(q[:, :, start:].float(), k.float(), v.float(), pos[start:].repeat(batch, 1),
                               pos.repeat(batch, 1), window=win, sinks=sinks)
    eager = reference.attention(q[:, :, start:], k, v, pos[start:].repeat(batch, 1), pos.repeat(batch, 1), window=win,
                                sinks=sinks).float()
    got = window.window_attention(q[:, :, start:], layout(k), layout(v), window=win, sinks=sinks, scale=dim**-0.5,
                                  chunk_start=start, launch=window.WindowLaunch(block_m=block_m, block_n=block_n,
                                                                                **kind))
    err = ((got.float() - want).norm() / want.norm()).item()
    budget = 2 * ((eager - want).norm() / want.norm()).item()
    return [] if err <= budget else [f"relative error {err:.2e} > twice eager fp16 ({budget:.2e})"]


def _check_out_heads(tma: bool) -> list[str]:
    """Query heads written straight into a wider (B, L, H_out, D) layer output through a head map; the
    other heads of that output stay as they were."""
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import window

    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, n, 90, 32, generator=g).half() for n in (4, 2, 2))
    merged = torch.full((2, 90, 7, 32), 5.0).half()
    heads = torch.tensor([6, 0, 3, 2])
    got = window.window_attention(q, k, v, window=20, sinks=2, scale=0.2, out=merged.transpose(1, 2), out_heads=heads,
                                  launch=window.WindowLaunch(block_m=32, block_n=16, tma=tma))
    pos = torch.arange(90).repeat(2, 1)
    want = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=20, sinks=2, scale=0.2)
    problems = []
    if got.data_ptr() != merged.data_ptr():
        problems.append("did not return the out tensor")
    err = ((merged[:, :, heads].transpose(1, 2).float() - want).norm() / want.norm()).item()
    if not err < 2e-3:
        problems.append(f"mapped heads: relative error {err:.2e}")
    if not (merged[:, :, [1, 4, 5]] == 5.0).all():
        problems.append("heads outside the map were overwritten")
    return problems


def _check_errors() -> list[str]:
    """Inputs the kernel cannot run raise before any launch."""
    import torch

    from rtpurbo.ops.triton import window

    ok = torch.zeros(1, 2, 16, 32).half()
    bad = {
        "head dim 40": (torch.zeros(1, 2, 16, 40).half(),) * 3,
        "fp32": (ok.float(),) * 3,
        "heads not a multiple": (torch.zeros(1, 3, 16, 32).half(), ok, ok),
        "lengths differ": (ok, torch.zeros(1, 2, 8, 32).half(), torch.zeros(1, 2, 8, 32).half()),
        "strided last dim": (ok, ok[..., ::1].transpose(2, 3).contiguous().transpose(2, 3), ok),
    }
    problems = []
    for what, (q, k, v) in bad.items():
        try:
            window.window_attention(q, k, v, window=4, sinks=0, scale=0.1)
            problems.append(f"no error for {what}")
        except ValueError:
            pass
    return problems


def _run_all() -> dict[str, list[str]]:
    checks = [(f"{case[0]}-{name}", lambda case=case, kind=kind: _check(case, kind))
              for case in CASES for name, kind in KINDS.items()]
    checks += [(f"out-heads-{kind}", lambda tma=tma: _check_out_heads(tma)) for kind, tma in (("tma", True),
                                                                                             ("pointers", False))]
    checks += [(f"chunk-{case[0]}-{name}", lambda case=case, kind=kind: _check_chunk(case, kind))
               for case in CHUNK_CASES for name, kind in KINDS.items()]
    return report_checks(checks + [("errors", _check_errors)])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", [f"{c[0]}-{kind}" for c in CASES for kind in KINDS]
                         + ["out-heads-tma", "out-heads-pointers", "errors"]
                         + [f"chunk-{c[0]}-{kind}" for c in CHUNK_CASES for kind in KINDS])
def test_window_kernel_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(_run_all()))
