"""The aligned ``mass`` block-score kernels on CPU, through the Triton interpreter, against the PyTorch reference.

:func:`rtpurbo.ops.triton.block_mass.aligned_block_mass` must return what :func:`rtpurbo.ops.block_scores.block_mass`
returns for the aligned layout (key slot ``j`` at position ``j``, queries the last Lq of them) and the blocks a
sparse prefill ranks (``block_roles``: seen, not always kept; ``candidate_blocks`` for blocks of 128), up to fp32
summation order: a plain prompt whose last query block is partial (absent representative queries) and whose first
query blocks have no candidate, later chunks, blocks of 32 and 128, index dims 16 and 12, bf16 and fp32, sinks 0 and
4, bands of 0, one block and more, two rows x two heads, more key blocks than one program takes (and than one step
of the log-mass loops), the model's transposed layout read through strides, several chunks of query blocks, and a
candidate that no query's mass reaches (the log of the smallest normal float). ``torch.empty`` fills with NaN during
the call, so an entry read before it is written shows. Runs under ``TRITON_INTERPRET=1`` in a child process (this
file run as a script). The GPU runs the same kernels in ``tests/test_ops_gpu.py``.
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, batch, heads, Lq, Lk, index dim, block, sinks, band, indexer dtype)
CASES = [
    ("plain-partial", 2, 2, 300, 300, 16, 32, 4, 32, "float32"),  # query blocks 0-2 have no candidate
    ("later-chunk", 2, 2, 100, 420, 12, 32, 0, 0, "bfloat16"),  # last query block holds 4 queries
    ("block-128", 2, 2, 700, 700, 12, 128, 4, 300, "float32"),
    ("block-128-later-chunk", 1, 2, 200, 456, 16, 128, 4, 128, "bfloat16"),
    ("many-key-blocks", 2, 2, 130, 738, 16, 32, 4, 64, "bfloat16"),  # 24 key blocks
    ("chunks", 2, 2, 640, 640, 16, 32, 4, 32, "float32"),
    ("dead-block", 1, 2, 256, 256, 16, 32, 4, 32, "float32"),
]
CHUNK_ELEMENTS = {"chunks": 4096}  # block log-sum-exps per chunk of query blocks (default: one chunk here)
LOG_MASS_STEPS = {"many-key-blocks": 16}  # key blocks per step of the log-mass loops (default: one step here)
TRANSPOSED = {"many-key-blocks"}  # indexer vectors in the model's (B, L, H, d) layout, viewed as (B, H, L, d)
DEAD_BLOCK = 5  # in "dead-block", the keys of this block score -200 against every query


def _indexer(case, g):
    import torch

    name, batch, heads, q_len, k_len, dim, *_, dtype = case
    q_idx, k_idx = ((torch.randn(batch, n, heads, dim, generator=g) * 2).transpose(1, 2) for n in (q_len, k_len))
    if name not in TRANSPOSED:
        q_idx, k_idx = q_idx.contiguous(), k_idx.contiguous()
    if name == "dead-block":  # every query has a large first component; this block's keys point against it
        q_idx[..., 0] = 10.0
        k_idx[:, :, DEAD_BLOCK * 32:(DEAD_BLOCK + 1) * 32] = 0.0
        k_idx[:, :, DEAD_BLOCK * 32:(DEAD_BLOCK + 1) * 32, 0] = -20.0
    return q_idx.to(getattr(torch, dtype)), k_idx.to(getattr(torch, dtype))


def _nan_empty(empty):
    """torch.empty whose float tensors start as NaN (an entry read before the kernels write it shows)."""
    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out
    return nan_empty


def _check(case) -> list[str]:
    import torch

    from rtpurbo.ops import block_scores
    from rtpurbo.ops.triton import block_mass, block_sparse

    name, batch, heads, q_len, k_len, dim, block, sinks, band, dtype = case
    q_idx, k_idx = _indexer(case, torch.Generator().manual_seed(len(name)))
    k_pos = torch.arange(k_len).repeat(batch, 1)
    q_pos = k_pos[:, k_len - q_len:]
    seen, always = block_scores.block_roles(q_pos, k_pos, block, sinks, band)
    candidates = seen & ~always
    problems = []
    if block == block_sparse.BLOCK and not torch.equal(
            block_sparse.candidate_blocks(q_len, k_len, sinks, band, q_pos.device).expand_as(candidates), candidates):
        problems.append("candidate_blocks differs from block_roles")
    want = block_scores.block_mass(q_idx, k_idx, q_pos, k_pos, candidates, block)
    chunked = {"chunk_elements": CHUNK_ELEMENTS[name]} if name in CHUNK_ELEMENTS else {}
    steps, empty = block_mass.LOG_MASS_KEY_BLOCKS, torch.empty
    block_mass.LOG_MASS_KEY_BLOCKS, torch.empty = LOG_MASS_STEPS.get(name, steps), _nan_empty(empty)
    try:
        got = block_mass.aligned_block_mass(q_idx, k_idx, sinks, band, block, **chunked)
    finally:
        block_mass.LOG_MASS_KEY_BLOCKS, torch.empty = steps, empty
    if got.shape != want.shape:
        return problems + [f"shape {tuple(got.shape)} != {tuple(want.shape)}"]
    if got.isnan().any():
        problems.append(f"{int(got.isnan().sum())} NaN entries (read or left unwritten)")
    if not torch.equal(torch.isinf(got), torch.isinf(want)):
        problems.append(f"-inf at {int((torch.isinf(got) != torch.isinf(want)).sum())} other entries")
    finite = torch.isfinite(want)
    err = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    if not err < 1e-4:
        problems.append(f"max abs error of the log masses {err:.2e}")
    if not torch.allclose(got.exp().sum(-1), want.exp().sum(-1), atol=1e-5):
        problems.append("the masses do not sum as the reference's")
    if int(finite.sum()) == 0:
        problems.append("the case has no candidate blocks")
    if name == "plain-partial" and not torch.isinf(want).all(-1).any():
        problems.append("no query block without candidates")
    tiny = torch.tensor(torch.finfo(torch.float32).tiny).log()
    if name == "dead-block" and not (want == tiny).any():
        problems.append("no candidate without mass in the reference")
    return problems


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_aligned_block_mass_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(report_checks((case[0], lambda case=case: _check(case)) for case in CASES)))
