"""Both kinds of heads of a layer in one decode launch, on CPU through the Triton interpreter.

:func:`rtpurbo.ops.triton.decode_roles.two_role_decode` runs the retrieval heads (every key, or a
selection list plus the always-kept keys) and the local heads (ring slots, window + sinks) in one
launch, and one combine writes each query head to its place in the layer's head order. Checked here
under ``TRITON_INTERPRET=1`` (in a child process) against :func:`rtpurbo.ops.reference.attention` per
role in fp32, with launch shapes that make several parts per row of both kinds, a padded batch row, a
head order that interleaves the roles, and a retrieval window. The GPU runs the same kernels in
``tests/test_ops_gpu.py``.
"""
from __future__ import annotations

import json

import pytest

from tests.triton_interpreter import COMPILE_CHECK, problem as interpreter_problem, report_checks, run_script

pytestmark = pytest.mark.skipif(interpreter_problem() is not None, reason=str(interpreter_problem()))

# (name, batch, retrieval KV heads, local KV heads, group, retrieval keys, window, sinks, head dim, retrieval window,
#  list mode, interleaved head order, launch: block_n, waves)
CASES = [
    ("dense-balanced", 2, 1, 3, 4, 300, 48, 4, 64, None, False, False, (16, 6)),
    ("dense-interleaved-d40", 1, 2, 2, 3, 130, 32, 2, 40, None, False, True, (16, 4)),
    ("dense-retrieval-window", 2, 1, 2, 2, 200, 40, 4, 64, 90, False, False, (16, 8)),
    ("dense-default-launch", 1, 1, 3, 4, 257, 64, 4, 64, None, False, False, None),
    ("list", 2, 2, 2, 4, 400, 48, 4, 64, None, True, True, (16, 12)),
]
# cases run again (NAME-int32) with the retrieval positions as a static-decode cache holds them
INT32_CASES = ("dense-retrieval-window", "list")


def _check(case, positions: str = "int64") -> list[str]:
    """One case against the reference; the kernels read the retrieval positions as ``positions``, the reference
    as int64."""
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import decode, decode_roles

    name, batch, n_ret, n_loc, group, n_keys, window, sinks, dim, ret_window, listed, interleaved, shape = case
    g = torch.Generator().manual_seed(len(name))
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q_ret, q_loc = randn(batch, n_ret * group, 1, dim), randn(batch, n_loc * group, 1, dim)
    k_ret, v_ret = randn(batch, n_ret, n_keys, dim), randn(batch, n_ret, n_keys, dim)
    ret_pos = torch.arange(n_keys).repeat(batch, 1)
    ret_pos[:, -5:] = -1  # empty tail slots (static decode's capacity)
    v_ret[:, :, -5:] = float("nan")  # what an empty slot holds must not matter
    ring = sinks + window
    q_pos = torch.full((batch, 1), n_keys - 6)
    if batch > 1:
        q_pos[0, 0] = 25  # a short row: its ring is partly empty
    k_loc, v_loc = randn(batch, n_loc, ring, dim), randn(batch, n_loc, ring, dim)
    loc_pos = torch.full((batch, ring), -1)
    for b in range(batch):  # the ring after q_pos[b] + 1 tokens (slot = S + (p - S) % W)
        p = int(q_pos[b, 0])
        loc_pos[b, : min(sinks, p + 1)] = torch.arange(min(sinks, p + 1))
        recent = torch.arange(max(sinks, p + 1 - window), p + 1)
        loc_pos[b, sinks + (recent - sinks) % window] = recent
        ret_pos[b, p + 1 : -5] = -1  # not yet written
    n_q = (n_ret + n_loc) * group
    order = torch.randperm(n_q, generator=g) if interleaved else torch.arange(n_q)
    heads = order.to(torch.int32)
    launch = None if shape is None else decode.DecodeLaunch(block_n=shape[0], waves=shape[1], combine_chunk=4,
                                                            combine_d=16)
    extra, key_mask = {}, None
    if listed:
        chosen = torch.stack([torch.randperm(n_keys - 40, generator=g)[:150] + 4 for _ in range(batch * n_ret)])
        index = chosen.sort(-1).values.view(batch, n_ret, 150)
        n_index = torch.tensor([[150, 90], [37, 150]])
        # entries of absent keys hold garbage, as index_scores leaves them
        always = torch.randint(-3, n_keys + 8, (batch * n_ret, 4 + 16), generator=g, dtype=torch.int32)
        key_mask = torch.zeros(batch, n_ret, 1, n_keys, dtype=torch.bool)
        for b in range(batch):
            p = int(q_pos[b, 0])
            tail = torch.arange(max(0, p - 15), p + 1)
            for h in range(n_ret):
                always[b * n_ret + h, :4] = torch.arange(4)
                always[b * n_ret + h, 4 + p - tail] = tail.to(torch.int32)  # recent p -> 4 + q_pos - p
                key_mask[b, h, 0, index[b, h, : n_index[b, h]]] = True
                key_mask[b, h, 0, :4] = True
                key_mask[b, h, 0, tail] = True
        extra = dict(index=index, n_index=n_index, always=always, skip_sinks=4, skip_recent=16)
    out, counts = decode_roles.two_role_decode(
        q_ret, k_ret, v_ret, ret_pos.to(getattr(torch, positions)), q_loc, k_loc, v_loc, loc_pos, q_pos,
        scale=dim**-0.5, window=window, sinks=sinks,
        heads=heads if interleaved else None, ret_window=ret_window, launch=launch, **extra,
    )
    want_ret = reference.attention(q_ret, k_ret, v_ret.nan_to_num(0.0), q_pos, ret_pos, window=ret_window,
                                   key_mask=key_mask)
    want_loc = reference.attention(q_loc, k_loc, v_loc, q_pos, loc_pos, window=window, sinks=sinks)
    want = torch.empty(batch, n_q, dim)
    want[:, order] = torch.cat([want_ret, want_loc], dim=1)[:, :, 0]
    got = out.view(batch, n_q, dim)
    problems = []
    err = ((got - want).norm() / want.norm()).item()
    if not err < 1e-5:
        problems.append(f"relative error {err:.2e}")
    seen = (ret_pos >= 0) & (ret_pos <= q_pos)
    if ret_window is not None:
        seen &= q_pos - ret_pos < ret_window
    want_counts = key_mask[:, :, 0].logical_and(seen[:, None]).sum(-1) if listed else seen.sum(-1, keepdim=True).expand(
        batch, n_ret)
    if not torch.equal(counts, want_counts):
        problems.append(f"counts {counts.tolist()} != {want_counts.tolist()}")
    return problems


def _check_beside() -> list[str]:
    """The local heads of a selecting step in the launch shape beside the selection (ring_beside_selection): a ring
    rotated past its window, two batch rows, against the fp32 reference."""
    import torch

    from rtpurbo.ops import reference
    from rtpurbo.ops.triton import decode_roles

    g = torch.Generator().manual_seed(5)
    batch, n_loc, group, dim, window, sinks = 2, 3, 4, 64, 200, 4
    q = torch.randn(batch, n_loc * group, 1, dim, generator=g)
    k, v = (torch.randn(batch, n_loc, sinks + window, dim, generator=g) for _ in range(2))
    q_pos = torch.tensor([[517], [90]])
    pos = torch.full((batch, sinks + window), -1)
    for b, p in enumerate(q_pos[:, 0].tolist()):
        pos[b, :sinks] = torch.arange(sinks)
        tail = torch.arange(max(sinks, p + 1 - window), p + 1)
        pos[b, sinks + (tail - sinks) % window] = tail
    out = decode_roles.ring_beside_selection(q, k, v, pos, q_pos, scale=dim**-0.5, window=window, sinks=sinks)
    want = reference.attention(q, k, v, q_pos, pos, window=window, sinks=sinks)
    err = ((out - want).norm() / want.norm()).item()
    problems = [] if err < 1e-5 else [f"relative error {err:.2e}"]
    # into a layer's merged output (B, 1, Hq, D) seen as (B, Hq, 1, D), its query heads interleaved with 5 others
    n_q = n_loc * group
    merged = torch.full((batch, 1, n_q + 5, dim), 7.0)
    heads = torch.randperm(n_q + 5, generator=g)[:n_q]
    got = decode_roles.ring_beside_selection(q, k, v, pos, q_pos, scale=dim**-0.5, window=window, sinks=sinks,
                                             out=merged.transpose(1, 2), out_heads=heads)
    if got.data_ptr() != merged.data_ptr():
        problems.append("with out, the returned tensor is not out")
    if not torch.equal(merged[:, 0, heads], out[:, :, 0]):
        problems.append("the heads written through out_heads differ from the output without out")
    others = torch.ones(n_q + 5, dtype=torch.bool)
    others[heads] = False
    if not bool((merged[:, 0, others] == 7.0).all()):
        problems.append("out_heads wrote heads it does not name")
    return problems


def _check_errors() -> list[str]:
    """Inputs that cannot run raise before any launch."""
    import torch

    from rtpurbo.ops.triton import decode_roles

    q, k, pos = torch.zeros(1, 4, 1, 64), torch.zeros(1, 1, 8, 64), torch.zeros(1, 8, dtype=torch.long)
    problems = []
    for bad_out in (dict(out=torch.zeros(1, 3, 1, 64)), dict(out_heads=torch.arange(4)),
                    dict(out=torch.zeros(1, 6, 1, 64), out_heads=torch.arange(3)),
                    dict(out=torch.zeros(1, 6, 1, 64), out_heads=torch.arange(4.0))):
        try:  # the local heads' ring with an out that does not fit its 4 query heads
            decode_roles.ring_beside_selection(q, k, k, pos, torch.zeros(1, 1, dtype=torch.long), scale=0.1,
                                               window=4, sinks=0, **bad_out)
            problems.append(f"no error for {bad_out}")
        except ValueError:
            pass
    for bad in (dict(heads=torch.arange(8)), dict(q_loc=torch.zeros(1, 3, 1, 64))):
        args = dict(q_loc=torch.zeros(1, 4, 1, 64), heads=None) | bad
        try:
            decode_roles.two_role_decode(q, k, k, pos, args["q_loc"], k, k, pos, torch.zeros(1, 1, dtype=torch.long),
                                         scale=0.1, window=4, sinks=0, heads=args["heads"])
            problems.append(f"no error for {list(bad)}")
        except ValueError:
            pass
    return problems


def _run_all() -> dict[str, list[str]]:
    return report_checks([(case[0], lambda case=case: _check(case)) for case in CASES]
                         + [(case[0] + "-int32", lambda case=case: _check(case, "int32"))
                            for case in CASES if case[0] in INT32_CASES]
                         + [("beside", _check_beside), ("errors", _check_errors)])


@pytest.fixture(scope="module")
def report() -> dict[str, list[str]]:
    return run_script(__file__)


def test_every_launch_compiles_for_hopper(report):
    """Each kernel launch the checks above made, compiled for sm_90 by Triton's compiler (no GPU needed)."""
    assert report[COMPILE_CHECK] == [], "\n".join(report[COMPILE_CHECK])


def test_a_lists_always_part_counts_among_its_programs():
    """A list's parts in the one launch are sized as ``decode_attention``'s list mode sizes them: the always-kept
    keys' part is one of :data:`LIST_LAUNCH`'s programs per SM (8 "SMs" off CUDA), not one program more."""
    import torch

    from rtpurbo.ops.triton import decode, decode_roles

    cpu = torch.device("cpu")
    for keys, rows in ((1 << 20, 1), (1 << 20, 2), (3000, 1)):
        parts, ring_parts = decode_roles.role_parts(keys, rows, 8196, 7, True, decode.DENSE_LAUNCH, cpu)
        assert parts == decode.LIST_LAUNCH.splits(keys, rows, cpu, extra=1) + 1
        assert ring_parts == decode.DENSE_LAUNCH.splits(8196, 7, cpu)
        if (keys, rows) == (1 << 20, 1):  # a long list, one row: every program of the one wave, the always part one
            assert parts == decode.LIST_LAUNCH.waves * decode._num_sms(cpu)


@pytest.mark.parametrize("name", [c[0] for c in CASES] + [n + "-int32" for n in INT32_CASES] + ["beside", "errors"])
def test_two_role_decode_in_interpreter(report, name):
    assert report[name] == [], f"{name}: " + "; ".join(report[name])


if __name__ == "__main__":
    print(json.dumps(_run_all()))
