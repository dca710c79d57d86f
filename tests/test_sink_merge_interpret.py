"""The sink-token merge of a window-only attention output (:mod:`rtpurbo.ops.triton.sink_merge`), on CPU
through the Triton interpreter.

The window-only attention (``0 <= i - j < W``, no sinks) and its log-sum-exp come from the fp32 reference; its
output is rounded to fp16 as a kernel would return it. The merge must then give window + sinks attention
(:func:`rtpurbo.ops.reference.attention` in fp32) within twice the error of the same attention done eagerly in
fp16: in place, into a fresh tensor, and through a head map into a wider layer output (other heads untouched).
Cases cover rows that gain every sink, some, or none (a window past the length), more sinks than a 16-key tile,
no sinks, GQA, the model's transposed layout and a length that is no multiple of the query tile.
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, batch, length, KV heads, group, head dim, window, sinks, model layout, block_m)
CASES = [
    ("gqa-4-sinks", 1, 150, 2, 2, 32, 40, 4, False, 32),
    ("model-layout-b2", 2, 97, 1, 3, 16, 30, 4, True, 32),
    ("sinks-over-a-tile", 1, 130, 1, 2, 32, 40, 20, False, 32),
    ("window-past-length", 1, 60, 1, 2, 32, 100, 4, False, 32),
    ("no-sinks", 1, 90, 2, 1, 32, 20, 0, False, 32),
    ("window-1", 1, 70, 1, 2, 32, 1, 3, True, 16),
]
MODES = ("in-place", "fresh", "head-map")


def _window_only(q, k, v, window: int, scale: float):
    """(o (B, Hq, L, D) fp32, lse (B, Hq, L)) of the window alone, from the fp32 reference."""
    import torch

    from rtpurbo.ops import reference

    batch, n_q, length, _ = q.shape
    pos = torch.arange(length).repeat(batch, 1)
    o = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=window, sinks=0, scale=scale)
    kk = k.float().repeat_interleave(n_q // k.shape[1], 1)
    s = q.float() @ kk.transpose(-1, -2) * scale
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    s = s.masked_fill(~((j <= i) & (i - j < window)), float("-inf"))
    return o, torch.logsumexp(s, -1)


def _check(case, mode: str) -> list[str]:
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import sink_merge

    name, batch, length, n_kv, group, dim, win, sinks, layout, block_m = case
    g = torch.Generator().manual_seed(len(name))
    shape = lambda n: (batch, length, n, dim) if layout else (batch, n, length, dim)  # noqa: E731
    q, k, v = (torch.randn(*shape(n), generator=g).half() for n in (n_kv * group, n_kv, n_kv))
    if layout:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    scale = dim**-0.5
    pos = torch.arange(length).repeat(batch, 1)
    want = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=win, sinks=sinks, scale=scale)
    eager = reference.attention(q, k, v, pos, pos, window=win, sinks=sinks, scale=scale).float()
    o, lse = _window_only(q, k, v, win, scale)
    o = o.half()
    n_q = n_kv * group
    problems = []
    if mode == "in-place":
        got = sink_merge.sink_merge(q, k, v, o, lse, window=win, sinks=sinks, scale=scale, block_m=block_m)
        if got.data_ptr() != o.data_ptr():
            problems.append("in place: did not return o")
    elif mode == "fresh":
        before = o.clone()
        got = sink_merge.sink_merge(q, k, v, o, lse[..., None], window=win, sinks=sinks, scale=scale,
                                    out=torch.empty_like(o), block_m=block_m)
        if not torch.equal(o, before):
            problems.append("a fresh output changed o")
    else:
        layer = torch.full((batch, length, n_q + 2, dim), 5.0).half()
        heads = torch.arange(n_q + 2).flip(0)[:n_q]  # reversed, skipping the two lowest heads
        sink_merge.sink_merge(q, k, v, o, lse, window=win, sinks=sinks, scale=scale, out=layer.transpose(1, 2),
                              out_heads=heads, block_m=block_m)
        got = layer[:, :, heads].transpose(1, 2)
        if not (layer[:, :, [0, 1]] == 5.0).all():
            problems.append("heads outside the map were overwritten")
    err = ((got.float() - want).norm() / want.norm()).item()
    budget = 2 * ((eager - want).norm() / want.norm()).item()
    if not err <= budget:
        problems.append(f"{mode}: relative error {err:.2e} > twice eager fp16 ({budget:.2e})")
    return problems


def _check_sinks_matter() -> list[str]:
    """The check can fail: the window-only output itself is far from window + sinks attention."""
    import torch

    from rtpurbo.ops import reference

    name, batch, length, n_kv, group, dim, win, sinks, _, _ = CASES[0]
    g = torch.Generator().manual_seed(len(name))
    q, k, v = (torch.randn(batch, n, length, dim, generator=g).half() for n in (n_kv * group, n_kv, n_kv))
    pos = torch.arange(length).repeat(batch, 1)
    want = reference.attention(q.float(), k.float(), v.float(), pos, pos, window=win, sinks=sinks)
    o, _ = _window_only(q, k, v, win, dim**-0.5)
    err = ((o - want).norm() / want.norm()).item()
    return [] if err > 0.05 else [f"window-only output already within {err:.2e} of window + sinks"]


def _check_errors() -> list[str]:
    """Bad shapes and dtypes raise before any launch."""
    import torch

    from rtpurbo.ops.triton import sink_merge

    q, k, v = (torch.randn(1, n, 40, 32).half() for n in (2, 1, 1))
    o, lse = torch.zeros_like(q), torch.zeros(1, 2, 40)
    bad = {"lse dtype": dict(lse=lse.half()), "lse shape": dict(lse=lse[:, :, :30]), "o shape": dict(o=o[:, :1]),
           "head dim": dict(q=q[..., :24], k=k[..., :24], v=v[..., :24], o=o[..., :24]),
           "out_heads float": dict(out=torch.zeros(1, 3, 40, 32).half(), out_heads=torch.tensor([0.0, 1.0]))}
    problems = []
    for what, kwargs in bad.items():
        args = dict(q=q, k=k, v=v, o=o, lse=lse) | {n: kwargs.pop(n) for n in ("q", "k", "v", "o", "lse") if n in kwargs}
        try:
            sink_merge.sink_merge(args["q"], args["k"], args["v"], args["o"], args["lse"], window=8, sinks=2, scale=0.2,
                                  **kwargs)
            problems.append(f"bad {what} accepted")
        except ValueError:
            pass
    return problems


def _run_all() -> dict[str, list[str]]:
    checks = [(f"{case[0]}-{mode}", lambda case=case, mode=mode: _check(case, mode)) for case in CASES for mode in MODES]
    return report_checks(checks + [("sinks-matter", _check_sinks_matter), ("errors", _check_errors)])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", [f"{c[0]}-{m}" for c in CASES for m in MODES] + ["sinks-matter", "errors"])
def test_sink_merge_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(_run_all()))
