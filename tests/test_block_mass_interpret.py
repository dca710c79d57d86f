"""The fused ``mass`` block-score kernel on CPU, through the Triton interpreter, against the PyTorch reference.

:func:`rtpurbo.ops.triton.block_mass.block_mass` must return what :func:`rtpurbo.ops.block_scores.block_mass`
returns (fp32, up to summation order): a plain prefill, a padded batch, a later chunk over cached keys, per-head
and shared candidate masks, index dims 16 and 12, blocks of 32 and 128, query blocks that do not fill a
program, bf16 indexer vectors, more key blocks than one program takes, and several chunks of query blocks.
Runs under ``TRITON_INTERPRET=1`` in a child process (this file run as a script). The GPU runs the same kernel in
``tests/test_ops_gpu.py``.
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, batch, heads, queries, keys (cached + queries), index dim, block, padded, candidates: "rank" = the
# blocks a sparse prefill ranks (seen, not always kept), "per-head" = those with some dropped per head, "seen" =
# every seen block, the diagonal included, where causal visibility inside a block matters), indexer dtype
# (bf16 goes to the kernel's half-precision dot)
CASES = [
    ("plain", 1, 2, 300, 300, 16, 32, False, "rank", "float32"),
    ("padded-batch", 2, 1, 257, 257, 16, 32, True, "rank", "float32"),
    ("later-chunk", 1, 2, 100, 420, 12, 32, False, "per-head", "float32"),
    ("block-128", 1, 1, 700, 700, 16, 128, False, "per-head", "float32"),
    ("diagonal", 2, 2, 200, 260, 16, 32, True, "seen", "float32"),
    ("bf16", 2, 2, 300, 360, 16, 32, True, "per-head", "bfloat16"),
    ("chunks", 1, 2, 640, 700, 16, 32, False, "rank", "float32"),  # 22 key blocks, several chunks
]
CHUNK_ELEMENTS = {"chunks": 4096}  # block log-sum-exps per chunk of query blocks (default: one chunk here)


def _check(case) -> list[str]:
    import torch

    from rtpurbo.ops import block_scores
    from rtpurbo.ops.triton import block_mass

    name, batch, heads, n_q, n_k, dim, block, padded, kind, dtype = case
    g = torch.Generator().manual_seed(len(name))
    q_idx = (torch.randn(batch, heads, n_q, dim, generator=g) * 2).to(getattr(torch, dtype))
    k_idx = (torch.randn(batch, heads, n_k, dim, generator=g) * 2).to(getattr(torch, dtype))
    k_pos = torch.arange(n_k).repeat(batch, 1)
    if padded:
        k_pos[-1, :40] = -1
        k_pos[-1, 40:] -= 40
    q_pos = k_pos[:, n_k - n_q:]
    seen, always = block_scores.block_roles(q_pos, k_pos, block, sinks=4, band=block)
    candidates = seen if kind == "seen" else seen & ~always
    if kind == "per-head":
        drop = torch.rand(batch, heads, *candidates.shape[2:], generator=g) < 0.3
        candidates = candidates & ~drop
    want = block_scores.block_mass(q_idx, k_idx, q_pos, k_pos, candidates, block)
    chunked = {"chunk_elements": CHUNK_ELEMENTS[name]} if name in CHUNK_ELEMENTS else {}
    got = block_mass.block_mass(q_idx, k_idx, q_pos, k_pos, candidates, block, **chunked)
    problems = []
    if got.shape != want.shape:
        return [f"shape {tuple(got.shape)} != {tuple(want.shape)}"]
    if not torch.equal(torch.isinf(got), torch.isinf(want)):
        problems.append(f"-inf at {int((torch.isinf(got) != torch.isinf(want)).sum())} other entries")
    finite = torch.isfinite(want)
    err = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    if not err < 1e-4:
        problems.append(f"max abs error of the log masses {err:.2e}")
    sums = want.exp().sum(-1)
    if not torch.allclose(got.exp().sum(-1), sums, atol=1e-5):
        problems.append("the masses do not sum as the reference's")
    if int(finite.sum()) == 0:
        problems.append("the case has no candidate blocks")
    return problems


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_block_mass_kernel_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(report_checks((case[0], lambda case=case: _check(case)) for case in CASES)))
