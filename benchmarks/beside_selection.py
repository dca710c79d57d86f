"""The local heads beside a selecting decode step, and where selection starts to pay on this card (GPU).

    python benchmarks/beside_selection.py --trees base=/tmp/old new=. --json beside.json

One attention layer of the Llama-3.1-8B geometry (1 retrieval KV head x 4 query heads, top-p 0.9 on trained-like
indexer scores; 7 local KV heads over their 8,196 ring slots), random bf16 inputs, every variant captured in a CUDA
graph and timed in rotating rounds (:func:`decode_step_ab.measure`: L2 flushed before each replay, paired differences
against the first variant with a 95 % bootstrap interval):

* ``shapes``: the selecting step with the local heads on a side stream, their decode launched in several shapes of
  :class:`rtpurbo.ops.triton.decode.DecodeLaunch` (``DENSE_LAUNCH``, ``BESIDE_LAUNCH`` and neighbours) at 32K, 128K
  and 1M keys, on peaked and trained-like scores. Shapes whose programs take fewer registers and SMs leave the
  selection's kernels room to run beside them.
* ``breakeven``: per ``--trees`` version, the selecting step as that version's ``HeadwiseCache`` runs it
  (:func:`decode_step_ab.step_case`) against one launch over every key
  (:func:`rtpurbo.ops.triton.decode_roles.two_role_decode`, the step below the seqlen threshold) from 128K to 768K
  keys: the length from which selection pays on this card.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_step_ab import GEOM, SINKS, WINDOW, load_trees, measure, step_case  # noqa: E402

from rtpurbo.bench.attention_common import INDEX_DIM, MIN_TOKENS, RECENT, TOP_P, _randn  # noqa: E402
from rtpurbo.bench.attention_decode import _ring_positions  # noqa: E402

SHAPE_LENGTHS = (32768, 131072, 1048576)
BREAKEVEN_LENGTHS = (131072, 262144, 393216, 524288, 786432)
REGIMES = {"trained-like": 0.64, "peaked": 1.0}  # indexer key scale: score std 2.56, 4 logits


def _layer(length: int, scale: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    group, n_local, dim = GEOM.group, GEOM.n_kv - GEOM.n_retrieval(), GEOM.head_dim
    return dict(
        q=_randn(1, GEOM.n_q, 1, dim), k=_randn(1, 1, length, dim), v=_randn(1, 1, length, dim),
        ring_k=_randn(1, n_local, SINKS + WINDOW, dim), ring_v=_randn(1, n_local, SINKS + WINDOW, dim),
        ring_pos=_ring_positions(length, WINDOW, SINKS), q_idx=_randn(1, 1, 1, INDEX_DIM),
        k_idx=_randn(1, 1, length, INDEX_DIM) * scale, q_pos=torch.full((1, 1), length - 1, device="cuda"),
        k_pos=torch.arange(length, device="cuda")[None], group=group, dim=dim)


def shape_rows(record, rounds: int, rep: int) -> None:
    from rtpurbo.ops import api
    from rtpurbo.ops.triton import decode as kernels

    launches = {
        "DENSE_LAUNCH": kernels.DENSE_LAUNCH, "BESIDE_LAUNCH": kernels.BESIDE_LAUNCH,
        "block32-waves1-stages2": kernels.DecodeLaunch(block_n=32, waves=1, num_stages=2, combine_chunk=256),
        "block16-waves1": kernels.DecodeLaunch(block_n=16, waves=1, combine_chunk=256),
        "block64-waves1": kernels.DecodeLaunch(block_n=64, waves=1, combine_chunk=256),
    }
    side = torch.cuda.Stream()
    for length in SHAPE_LENGTHS:
        for regime, scale in REGIMES.items():
            x = _layer(length, scale)
            g, dim = x["group"], x["dim"]

            def step(launch, x=x, g=g, dim=dim):
                main = torch.cuda.current_stream()
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    local = kernels.decode_attention(x["q"][:, g:], x["ring_k"], x["ring_v"], x["q_pos"], x["ring_pos"],
                                                     scale=dim**-0.5, window=WINDOW, sinks=SINKS, launch=launch)[0]
                out, counts = api.topp_attention(x["q"][:, :g], x["k"], x["v"], x["q_pos"], x["k_pos"], x["q_idx"],
                                                 x["k_idx"], top_p=TOP_P, min_tokens=MIN_TOKENS, sinks=SINKS,
                                                 recent=RECENT)
                main.wait_stream(side)
                return out, local, counts

            def alone(launch, x=x, g=g, dim=dim):  # (out, -, no keys selected), as measure() reads a step
                return kernels.decode_attention(x["q"][:, g:], x["ring_k"], x["ring_v"], x["q_pos"], x["ring_pos"],
                                                scale=dim**-0.5, window=WINDOW, sinks=SINKS, launch=launch)[0], None, \
                    torch.zeros(1)

            row = measure("step", {name: (lambda l=launch: step(l)) for name, launch in launches.items()}, rounds, rep)
            record(dict(case="shapes", L=length, regime=regime, **row))
            if regime == "trained-like" and length == SHAPE_LENGTHS[0]:  # the ring alone (the same at every length)
                row = measure("step", {name: (lambda l=launch: alone(l)) for name, launch in launches.items()},
                              rounds, rep)
                record(dict(case="ring_alone", **row))


def breakeven_rows(record, trees: dict, rounds: int, rep: int) -> None:
    for length in BREAKEVEN_LENGTHS:
        calls = step_case(trees, length)
        x = _layer(length, 0.64, seed=1)
        g, dim = x["group"], x["dim"]
        roles = next(iter(trees.values()))["roles"]

        def every_key(x=x, g=g, dim=dim):
            out, used = roles.two_role_decode(x["q"][:, :g], x["k"], x["v"], x["k_pos"], x["q"][:, g:], x["ring_k"],
                                              x["ring_v"], x["ring_pos"], x["q_pos"], scale=dim**-0.5, window=WINDOW,
                                              sinks=SINKS)
            return out, None, used

        calls["every-key"] = every_key
        record(dict(case="breakeven", L=length, regime="trained-like", **measure("step", calls, rounds, rep)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="shapes,breakeven", help="comma-separated, of: shapes, breakeven")
    parser.add_argument("--trees", nargs="+", default=["this=."],
                        help="NAME=DIR for breakeven (as in decode_step_ab.py), the first is the baseline")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rep", type=int, default=40, help="ms of replays per timing")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("beside_selection.py needs a CUDA GPU")
    parts = args.parts.split(",")
    if unknown := set(parts) - {"shapes", "breakeven"}:
        sys.exit(f"unknown --parts {sorted(unknown)}; choose from shapes, breakeven")
    trees = load_trees(args.trees)
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        diffs = next((v for k, v in row.items() if k.startswith("vs_")), {})
        print(f"{row['case']} L={row.get('L', '-')} {row.get('regime', '')}: median us "
              + " ".join(f"{n} {us:.1f}" for n, us in row["median_us"].items()) + " | paired diff "
              + " ".join(f"{n} {d['mean_diff_us']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
                         for n, d in diffs.items()), flush=True)

    if "shapes" in parts:
        shape_rows(record, args.rounds, args.rep)
    if "breakeven" in parts:
        breakeven_rows(record, trees, args.rounds, args.rep)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            device=torch.cuda.get_device_name(), torch=torch.__version__, trees=args.trees, rows=rows), indent=1))


if __name__ == "__main__":
    main()
