"""One-query (decode) attention kernels on CPU, through the Triton interpreter.

:func:`rtpurbo.ops.triton.decode.decode_attention` splits each row's keys over programs and a
combine kernel merges their partial softmax states. Here both run under ``TRITON_INTERPRET=1`` (in
a child process: this file run as a script), in dense mode (window + sinks, padded rows, GQA,
head dims 64, 96 and 40: padded to 128 and 64 inside the kernels) and list mode, for launch
shapes that make many partial results per row, so the combine merges several chunks of them, and
against :func:`rtpurbo.ops.reference.attention` in fp32. The GPU runs the same kernels in
``tests/test_ops_gpu.py``.
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, batch, kv heads, group, keys, head dim, window, sinks, launch: block_n, waves, combine_chunk, combine_d)
CASES = [
    ("dense-window", 2, 2, 4, 300, 64, 64, 4, (16, 8, 4, 16)),
    ("dense-full-d96", 1, 3, 3, 257, 96, None, 0, (32, 4, 8, 32)),
    ("dense-d40", 2, 2, 3, 130, 40, None, 0, (16, 4, 8, 16)),  # head dim not a multiple of 16: masked lanes
    ("dense-one-part", 2, 1, 2, 40, 64, None, 0, (64, 1, 64, 64)),
    ("dense-default-launch", 2, 2, 4, 200, 64, 50, 2, None),
]


def random_qkv(batch: int, n_kv: int, group: int, n_keys: int, dim: int, seed: int):
    """q (B, Hkv * G, 1, D), k and v (B, Hkv, Lk, D), standard normal from ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_kv * group, 1, dim, generator=g)
    return q, torch.randn(batch, n_kv, n_keys, dim, generator=g), torch.randn(batch, n_kv, n_keys, dim, generator=g)


def compare(out, ref, counts, want_counts) -> list[str]:
    """Problems of a decode output against the fp32 reference (relative error < 1e-5) and of its key counts."""
    import torch

    problems = []
    err = ((out - ref).norm() / ref.norm()).item()
    if not err < 1e-5:
        problems.append(f"relative error {err:.2e}")
    if not torch.equal(counts, want_counts):
        problems.append(f"counts {counts.tolist()} != {want_counts.tolist()}")
    return problems


def _check_dense(case) -> list[str]:
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import decode

    name, batch, n_kv, group, n_keys, dim, window, sinks, shape = case
    q, k, v = random_qkv(batch, n_kv, group, n_keys, dim, seed=len(name))
    k_pos = torch.arange(n_keys).repeat(batch, 1)
    k_pos[-1, :7] = -1  # the last row is left-padded
    k_pos[:, -5:] = -1  # empty tail slots
    v[:, :, -5:] = float("nan")  # what an empty slot holds must not matter
    q_pos = torch.full((batch, 1), n_keys - 6)
    launch = None if shape is None else decode.DecodeLaunch(block_n=shape[0], waves=shape[1], combine_chunk=shape[2],
                                                            combine_d=shape[3])
    sums = torch.arange(batch * n_kv * 2, dtype=torch.int64).view(batch, n_kv, 2)  # sums of earlier steps
    out, counts = decode.decode_attention(q, k, v, q_pos, k_pos, scale=dim**-0.5, window=window, sinks=sinks,
                                          launch=launch, key_sums=sums)
    ref = reference.attention(q, k, v.nan_to_num(0.0), q_pos, k_pos, window=window, sinks=sinks)
    visible = (k_pos >= 0) & (k_pos <= q_pos) & ((q_pos - k_pos < (window or n_keys + 1)) | (k_pos < sinks))
    used = visible.sum(-1, keepdim=True).expand(batch, n_kv)
    want_sums = torch.arange(batch * n_kv * 2, dtype=torch.int64).view(batch, n_kv, 2) + used[..., None]
    problems = [] if torch.equal(sums, want_sums) else [f"key sums {sums.tolist()} != {want_sums.tolist()}"]
    return problems + compare(out, ref, counts, used)  # without block counts: the keys used are the visible ones


# list launches: (block_n, waves): many parts of one step each, and few parts of many steps each (the loop's later
# steps, whose entries and K/V a GPU loads ahead of them)
LIST_SHAPES = {"list": (16, 16), "list-long-parts": (16, 1)}


def _check_list(shape: tuple[int, int]) -> list[str]:
    """List mode: a selection of slots plus the always-kept list, whose entries of absent keys hold garbage (the
    index-score kernel does not clear them): slots of other keys, of empty slots, past the cache, -1."""
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import decode

    batch, n_kv, group, n_keys, dim = 2, 2, 4, 400, 64
    q, k, v = random_qkv(batch, n_kv, group, n_keys, dim, seed=3)
    g = torch.Generator().manual_seed(4)
    k_pos = torch.arange(n_keys).repeat(batch, 1)
    k_pos[1, [n_keys - 4, n_keys - 6, n_keys - 9]] = -1  # the second row lacks three recent keys
    q_pos = torch.full((batch, 1), n_keys - 1)
    chosen = torch.stack([torch.randperm(n_keys - 20, generator=g)[:150] + 4 for _ in range(batch * n_kv)])
    index = chosen.sort(-1).values.view(batch, n_kv, 150)
    n_index = torch.tensor([[150, 90], [37, 150]])
    # entries as index_scores writes them: sink p -> p, recent p -> 4 + q_pos - p (slot = position here)
    always = torch.cat([torch.arange(4), n_keys - 1 - torch.arange(16)]).to(torch.int32).repeat(batch * n_kv, 1)
    always[2:, 4 + 3] = n_keys - 1  # a key that belongs to entry 4
    always[2:, 4 + 5] = n_keys - 6  # the empty slot of position n_keys - 6
    always[2, 4 + 8] = 10**6  # past the cache
    always[3, 4 + 8] = -1
    launch = decode.DecodeLaunch(block_n=shape[0], waves=shape[1], combine_chunk=4, combine_d=16)
    longest = -(-150 // launch.splits(150, batch * n_kv, q.device, extra=1))  # entries of the longest part
    steps = -(-longest // shape[0])
    problems = [] if shape[1] > 1 or steps >= 3 else [f"long parts of {steps} steps of {shape[0]} keys, want >= 3"]
    out, counts = decode.decode_attention(q, k, v, q_pos, k_pos, scale=dim**-0.5, index=index, n_index=n_index,
                                          always=always, skip_sinks=4, skip_recent=16, launch=launch)
    mask = torch.zeros(batch, n_kv, 1, n_keys, dtype=torch.bool)
    for b in range(batch):
        for h in range(n_kv):
            mask[b, h, 0, index[b, h, : n_index[b, h]]] = True
    mask[..., :4] = True
    mask[..., n_keys - 16 :] = True
    mask &= (k_pos >= 0)[:, None, None]
    named = decode.named_always(always, q_pos, k_pos, n_kv=n_kv, sinks=4, recent=16)
    if int((named >= 0).sum()) != 4 * (4 + 16) - 2 * 3:
        problems.append(f"named_always kept {int((named >= 0).sum())} entries, want {4 * 20 - 6}")
    ref = reference.attention(q, k, v, q_pos, k_pos, key_mask=mask)
    return problems + compare(out, ref, counts, mask.sum(-1)[..., 0])


def _run_all() -> dict[str, list[str]]:
    return report_checks([(case[0], lambda case=case: _check_dense(case)) for case in CASES]
                         + [(name, lambda shape=shape: _check_list(shape)) for name, shape in LIST_SHAPES.items()])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


@pytest.mark.parametrize("name", [c[0] for c in CASES] + list(LIST_SHAPES))
def test_decode_attention_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


@pytest.mark.parametrize("rows, want, every_key", [(1, 7, 8), (2, 3, 4), (3, 2, 3), (8, 1, 1), (20, 1, 1)])
def test_a_list_counts_its_always_part_among_its_programs(rows, want, every_key):
    """A selected list's launch is its splits plus one part for the always-kept keys per row; with one program aimed
    at per SM (:data:`LIST_LAUNCH`, 8 SMs on a CPU), the splits leave room for that part instead of sending one program
    of a single row to a second wave. Over every key nothing is added."""
    import torch

    from rtpurbo.ops.triton import decode

    cpu = torch.device("cpu")
    assert decode._num_sms(cpu) == 8
    assert decode.LIST_LAUNCH.splits(1 << 20, rows, cpu, extra=1) == want
    assert decode.LIST_LAUNCH.splits(1 << 20, rows, cpu) == every_key
    assert decode.LIST_LAUNCH.splits(100, rows, cpu, extra=1) == 1  # one 128-key step's worth: one split


if __name__ == "__main__":
    print(json.dumps(_run_all()))
