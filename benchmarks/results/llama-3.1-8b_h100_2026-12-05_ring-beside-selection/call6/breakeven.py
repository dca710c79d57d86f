"""Break-even of selection on this card: the selecting layer step (base / new trees) against one launch over every key."""
import sys

import torch

sys.path.insert(0, "benchmarks")
from decode_step_ab import GEOM, SINKS, WINDOW, load_tree, measure, step_case  # noqa: E402

from rtpurbo.bench.attention_common import _randn  # noqa: E402
from rtpurbo.bench.attention_decode import _ring_positions  # noqa: E402
from rtpurbo.ops.triton import decode_roles  # noqa: E402

trees = {"base": load_tree("base", ".device/v5"), "new": load_tree("new", ".")}
group, n_local, dim = GEOM.group, GEOM.n_kv - GEOM.n_retrieval(), GEOM.head_dim
for length in (262144, 393216, 524288, 786432):
    calls = step_case(trees, length)
    torch.manual_seed(1)
    q = _randn(1, GEOM.n_q, 1, dim)
    k, v = _randn(1, 1, length, dim), _randn(1, 1, length, dim)
    ring_k, ring_v = _randn(1, n_local, SINKS + WINDOW, dim), _randn(1, n_local, SINKS + WINDOW, dim)
    ring_pos = _ring_positions(length, WINDOW, SINKS)
    q_pos, k_pos = torch.full((1, 1), length - 1, device="cuda"), torch.arange(length, device="cuda")[None]

    def every_key():
        out, used = decode_roles.two_role_decode(q[:, :group], k, v, k_pos, q[:, group:], ring_k, ring_v, ring_pos,
                                                 q_pos, scale=dim**-0.5, window=WINDOW, sinks=SINKS)
        return out, None, used
    calls["every-key"] = every_key
    row = measure("step", calls, rounds=6, rep=40)
    med = row["median_us"]
    print(f"breakeven L={length}: selecting base {med['base']:.1f} new {med['new']:.1f} | every key (one launch) "
          f"{med['every-key']:.1f} us | keys selected {row['selected']['new'][0]}", flush=True)
