"""The Triton sparse prefill of retrieval heads (aligned blocks) on CPU, through the Triton interpreter.

:mod:`rtpurbo.ops.triton.block_sparse` against the PyTorch reference:

* :func:`~rtpurbo.ops.triton.block_sparse.select_block_lists` must keep exactly the blocks of
  :func:`rtpurbo.ops.reference.select_blocks` (fp32 scores; top-p values away from prefix-mass boundaries): plain
  prompts and later chunks, a last block that is partly empty, sinks over one block, a wide band, ``min_blocks`` /
  ``max_blocks`` clamps, several rows and heads, and exact ties (equal scores: lower blocks first);
* :func:`~rtpurbo.ops.triton.block_sparse.block_sparse_attention` over those lists must match
  :func:`rtpurbo.ops.reference.attention` with the blocks' key mask, within twice the error of the same attention
  done eagerly in fp16: GQA groups, 64- and 128-key tiles, TMA descriptors and pointer loads, the model's
  transposed (B, L, H, D) layout;
  with the listed blocks in one program or split over three and merged by log-sum-exp;
* :func:`~rtpurbo.ops.triton.block_sparse.dense_causal_attention` (a dense tail) must match causal attention, with
  its keys split over up to five programs (more splits than key blocks included);
* :func:`~rtpurbo.ops.triton.block_sparse.sparse_prefill`, the kernels composed, must match
  :func:`rtpurbo.ops.api.sparse_prefill` with the reference backend (output, kept and seen blocks) for both block
  scorings, and with a dense tail that starts inside a block.

fp16 only: the interpreter of triton 3.9 computes ``tl.dot`` of bf16 operands wrongly; bf16 runs natively on a GPU
in ``tests/test_ops_gpu.py``. Runs in a child process under ``TRITON_INTERPRET=1`` (this file run as a script).
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, batch, heads, Lq, Lk, top_p, min_blocks, max_blocks, sinks, band, ties)
SELECT_CASES = [
    ("plain", 1, 2, 1100, 1100, 0.6, 0, None, 4, 1, False),
    ("later-chunk", 2, 1, 300, 1324, 0.45, 0, None, 4, 1, False),
    ("sinks-over-a-block", 1, 1, 1200, 1200, 0.7, 0, None, 200, 1, False),
    ("wide-band", 1, 2, 1100, 1100, 0.5, 0, None, 0, 300, False),
    ("min-blocks", 1, 1, 1300, 1300, 0.05, 3, None, 4, 1, False),
    ("max-blocks", 2, 2, 1000, 1128, 0.95, 0, 2, 4, 1, False),
    ("ties", 1, 2, 1200, 1200, 0.55, 0, None, 4, 1, True),
    ("one-block", 1, 1, 100, 100, 0.5, 0, None, 4, 1, False),
]


def _inputs(batch: int, heads: int, q_len: int, k_len: int, seed: int, d_idx: int = 16):
    import torch

    g = torch.Generator().manual_seed(seed)
    k_idx = torch.randn(batch, heads, k_len, d_idx, generator=g)
    q_idx = torch.randn(batch, heads, q_len, d_idx, generator=g)
    k_pos = torch.arange(k_len).repeat(batch, 1)
    return q_idx, k_idx, k_pos[:, k_len - q_len:], k_pos


def _check_select(case) -> list[str]:
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.block_scores import block_roles, block_scores
    from rtpurbo.ops.triton import block_sparse

    name, batch, heads, q_len, k_len, top_p, lo, hi, sinks, band, ties = case
    q_idx, k_idx, q_pos, k_pos = _inputs(batch, heads, q_len, k_len, len(name))
    if ties:  # every key of a block holds one of three vectors, every query the same: block scores tie exactly
        per_block = torch.randint(0, 3, (batch, heads, -(-k_len // 128), 1), generator=torch.Generator().manual_seed(1))
        k_idx = per_block.float().repeat_interleave(128, dim=2)[:, :, :k_len].expand_as(k_idx).contiguous()
        q_idx = torch.ones_like(q_idx)
    budget = dict(top_p=top_p, min_blocks=lo, max_blocks=hi, sinks=sinks, band=band)
    want = reference.select_blocks(q_idx, k_idx, q_pos, k_pos, block=128, **budget)
    seen, always = block_roles(q_pos, k_pos, 128, sinks, band)
    candidates = block_sparse.candidate_blocks(q_len, k_len, sinks, band, q_pos.device)
    problems = []
    if not torch.equal(candidates.expand_as(seen), seen & ~always):
        problems.append("candidate_blocks differs from block_roles")
    scores = block_scores(q_idx, k_idx, q_pos, k_pos, seen & ~always, 128, "pooled")
    lists, counts, seen_counts = block_sparse.select_block_lists(scores, q_len, k_len, **budget)
    got = torch.zeros_like(want)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in counts.shape)).tolist():
        row = lists[tuple(index)][: counts[tuple(index)]].long()
        if row.numel() and (row.diff() <= 0).any():
            problems.append(f"list {index} not ascending: {row.tolist()}")
        got[tuple(index)][row] = True
    if not torch.equal(got, want):
        diff = (got != want).nonzero().tolist()[:5]
        problems.append(f"{int((got != want).sum())} blocks differ from select_blocks, e.g. {diff}")
    if not torch.equal(seen_counts.long(), seen.expand_as(want).sum(-1)):
        problems.append("seen counts differ")
    if ties and scores.unique().numel() > scores.numel() / 4:
        problems.append("the ties case has few ties")
    return problems


# (name, batch, KV heads, group, Lq, Lk, head dim, block_n, model layout)
ATTEND_CASES = [
    ("plain-gqa", 1, 2, 2, 700, 700, 32, 128, False),
    ("later-chunk", 2, 1, 3, 300, 684, 64, 64, True),
    ("one-block", 1, 1, 2, 90, 90, 32, 128, False),
]
KINDS = {"tma": dict(tma=True), "pointers": dict(tma=False)}
SPLITS = {"tma": 1, "pointers": 3}  # key splits of the attention checks (merged by log-sum-exp)


def _check_attend(case, kind: dict) -> list[str]:
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import block_sparse
    from rtpurbo.ops.triton.window import WindowLaunch

    name, batch, n_kv, group, q_len, k_len, dim, block_n, layout = case
    g = torch.Generator().manual_seed(len(name) + 3)
    q_idx, k_idx, q_pos, k_pos = _inputs(batch, n_kv, q_len, k_len, len(name))
    blocks = reference.select_blocks(q_idx, k_idx, q_pos, k_pos, block=128, top_p=0.5, sinks=4)
    width = blocks.shape[-1]
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True)  # kept blocks first, ascending
    lists, counts = order.to(torch.int32), blocks.sum(-1, dtype=torch.int32)
    shape = lambda n, length: (batch, length, n, dim) if layout else (batch, n, length, dim)  # noqa: E731
    q = torch.randn(*shape(n_kv * group, q_len), generator=g).half()
    k, v = (torch.randn(*shape(n_kv, k_len), generator=g).half() for _ in range(2))
    if layout:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    key_mask = reference.blocks_to_keys(blocks, 128, q_len, k_len)
    want = reference.attention(q.float(), k.float(), v.float(), q_pos, k_pos, key_mask=key_mask)
    eager = reference.attention(q, k, v, q_pos, k_pos, key_mask=key_mask).float()
    launch = WindowLaunch(block_m=128, block_n=block_n, num_warps=4, num_stages=2, **kind)
    splits = SPLITS["tma" if kind["tma"] else "pointers"]
    got = block_sparse.block_sparse_attention(q, k, v, lists[..., :width], counts, scale=dim**-0.5, launch=launch,
                                              splits=splits)
    err = ((got.float() - want).norm() / want.norm()).item()
    budget = 2 * ((eager - want).norm() / want.norm()).item()
    return [] if err <= budget else [f"relative error {err:.2e} > twice eager fp16 ({budget:.2e})"]


# (name, batch, KV heads, group, Lq, Lk, head dim, splits)
DENSE_CASES = [
    ("plain-one-split", 1, 1, 2, 300, 300, 32, 1),
    ("tail-of-a-chunk", 2, 2, 2, 200, 968, 32, 4),
    ("more-splits-than-blocks", 1, 1, 3, 100, 356, 64, 5),
]


def _check_dense(case, kind: dict) -> list[str]:
    """dense_causal_attention (a sparse prefill's dense tail) against causal attention by positions."""
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import block_sparse
    from rtpurbo.ops.triton.window import WindowLaunch

    name, batch, n_kv, group, q_len, k_len, dim, splits = case
    g = torch.Generator().manual_seed(len(name) + 5)
    q = torch.randn(batch, n_kv * group, q_len, dim, generator=g).half()
    k, v = (torch.randn(batch, n_kv, k_len, dim, generator=g).half() for _ in range(2))
    k_pos = torch.arange(k_len).repeat(batch, 1)
    q_pos = k_pos[:, k_len - q_len:]
    want = reference.attention(q.float(), k.float(), v.float(), q_pos, k_pos)
    eager = reference.attention(q, k, v, q_pos, k_pos).float()
    got = block_sparse.dense_causal_attention(q, k, v, scale=dim**-0.5, splits=splits,
                                              launch=WindowLaunch(num_warps=4, num_stages=2, **kind))
    err = ((got.float() - want).norm() / want.norm()).item()
    budget = 2 * ((eager - want).norm() / want.norm()).item()
    return [] if err <= budget else [f"relative error {err:.2e} > twice eager fp16 ({budget:.2e})"]


def _check_composed(scoring: str, tail: int = 0) -> list[str]:
    import torch

    from rtpurbo.ops import api
    from rtpurbo.ops.triton import block_sparse
    from rtpurbo.ops.triton.window import WindowLaunch

    g = torch.Generator().manual_seed(5)
    batch, n_kv, group, q_len, k_len, dim = 1, 2, 2, 300, 940, 32
    q_idx, k_idx, q_pos, k_pos = _inputs(batch, n_kv, q_len, k_len, 17)
    q = torch.randn(batch, n_kv * group, q_len, dim, generator=g).half()
    k, v = (torch.randn(batch, n_kv, k_len, dim, generator=g).half() for _ in range(2))
    budget = dict(top_p=0.5, min_blocks=0, max_blocks=None, sinks=4, band=1, scoring=scoring, tail=tail)
    want, kept, seen = api.sparse_prefill(q.float(), k.float(), v.float(), q_pos, k_pos, q_idx, k_idx,
                                          impl="reference", aligned=True, **budget)
    eager = api.sparse_prefill(q, k, v, q_pos, k_pos, q_idx, k_idx, impl="reference", aligned=True, **budget)[0]
    got, got_kept, got_seen = block_sparse.sparse_prefill(q, k, v, q_pos, k_pos, q_idx, k_idx, scale=dim**-0.5,
                                                          launch=WindowLaunch(num_warps=4, num_stages=2, tma=False),
                                                          **budget)
    problems = []
    if (int(got_kept), int(got_seen)) != (int(kept), int(seen)):
        problems.append(f"kept / seen blocks {int(got_kept)} / {int(got_seen)}, reference {int(kept)} / {int(seen)}")
    err = ((got.float() - want).norm() / want.norm()).item()
    budget_err = 2 * ((eager.float() - want).norm() / want.norm()).item()
    if not err <= budget_err:
        problems.append(f"relative error {err:.2e} > twice eager fp16 ({budget_err:.2e})")
    return problems


def _check_errors() -> list[str]:
    """Layouts and budgets the kernels do not take raise before any launch."""
    import torch

    from rtpurbo.ops.triton import block_sparse

    problems = []
    scores = torch.zeros(1, 1, 2, 3)
    for what, call in {
        "Lk - Lq not a block multiple": lambda: block_sparse.select_block_lists(scores, 200, 300, top_p=0.5),
        "scores of other lengths": lambda: block_sparse.select_block_lists(scores, 200, 200, top_p=0.5),
        "top_p 1": lambda: block_sparse.select_block_lists(torch.zeros(1, 1, 2, 2), 200, 200, top_p=1.0),
        "unaligned attention": lambda: block_sparse.block_sparse_attention(
            torch.zeros(1, 2, 100, 32).half(), torch.zeros(1, 1, 150, 32).half(), torch.zeros(1, 1, 150, 32).half(),
            torch.zeros(1, 1, 1, 2, dtype=torch.int32), torch.ones(1, 1, 1, dtype=torch.int32), scale=0.1),
        "lists of other blocks": lambda: block_sparse.block_sparse_attention(
            torch.zeros(1, 2, 300, 32).half(), torch.zeros(1, 1, 300, 32).half(), torch.zeros(1, 1, 300, 32).half(),
            torch.zeros(1, 1, 2, 3, dtype=torch.int32), torch.ones(1, 1, 2, dtype=torch.int32), scale=0.1),
    }.items():
        try:
            call()
            problems.append(f"no error for {what}")
        except ValueError:
            pass
    return problems


def _names() -> list[str]:
    return ([f"select-{c[0]}" for c in SELECT_CASES] + [f"attend-{c[0]}-{k}" for c in ATTEND_CASES for k in KINDS]
            + [f"dense-{c[0]}-{k}" for c in DENSE_CASES for k in KINDS]
            + ["composed-pooled", "composed-mass", "composed-tail", "errors"])


def _run_all() -> dict[str, list[str]]:
    checks = [(f"select-{case[0]}", lambda case=case: _check_select(case)) for case in SELECT_CASES]
    checks += [(f"attend-{case[0]}-{name}", lambda case=case, kind=kind: _check_attend(case, kind))
               for case in ATTEND_CASES for name, kind in KINDS.items()]
    checks += [(f"dense-{case[0]}-{name}", lambda case=case, kind=kind: _check_dense(case, kind))
               for case in DENSE_CASES for name, kind in KINDS.items()]
    checks += [(f"composed-{s}", lambda s=s: _check_composed(s)) for s in ("pooled", "mass")]
    checks += [("composed-tail", lambda: _check_composed("mass", tail=200))]
    return report_checks(checks + [("errors", _check_errors)])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch of the checks, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", _names())
def test_block_sparse_prefill_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(_run_all()))
