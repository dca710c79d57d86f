"""Perplexity of an artifact with its retrieval heads on the sparse prefill, by block scoring and top-p, paired
against the same artifact's dense prefill on the same windows.

Each variant is ``dense`` or ``SCORING@TOP_P`` (``pooled@0.9``, ``mass@0.8``; :mod:`rtpurbo.ops.block_scores`).
Per variant: the NLL of every window, pooled perplexity, its ratio to ``dense`` with a 95 % bootstrap CI over
windows (:func:`rtpurbo.eval.paired.perplexity_ratio`), and the fraction of visible key blocks kept.

    python benchmarks/sparse_prefill_perplexity.py --data runs/eval/eval_data.npz \\
        --variants dense pooled@0.9 mass@0.9 mass@0.7 --out runs/prefill_ppl.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from rtpurbo import io
from rtpurbo.data.task_data import load_task_data
from rtpurbo.eval.paired import perplexity_ratio
from rtpurbo.eval.perplexity import perplexity
from rtpurbo.selection_stats import recording_prefill
from rtpurbo.ops.block_scores import SCORINGS


def parse_variant(text: str) -> tuple[str, float | None]:
    if text == "dense":
        return "dense", None
    scoring, _, top_p = text.partition("@")
    if scoring not in SCORINGS or not top_p or not 0 < float(top_p) <= 1:
        raise argparse.ArgumentTypeError(f"a variant is dense or SCORING@TOP_P (SCORING in {SCORINGS}), got {text!r}")
    return scoring, float(top_p)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-rtpurbo", help="artifact directory or shipped adapter")
    p.add_argument("--data", required=True, type=Path, help="eval data with perplexity windows")
    p.add_argument("--windows", type=int, help="first N windows (default: all)")
    p.add_argument("--variants", nargs="+", default=["dense", "pooled@0.9", "mass@0.9"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        variants = [(text, *parse_variant(text)) for text in args.variants]
    except (argparse.ArgumentTypeError, ValueError) as err:
        raise SystemExit(f"--variants: {err}") from err
    if variants[0][1] != "dense":
        raise SystemExit("the first variant must be dense (the reference)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = io.load(io.artifact_path(args.model) or args.model)
    windows = load_task_data(args.data, tokenizer).windows[: args.windows]
    if not windows:
        raise SystemExit(f"{args.data} holds no perplexity windows")
    sparse, rows = model.rtpurbo_sparse, {}
    for name, scoring, top_p in variants:
        if scoring == "dense":
            sparse.retrieval_prefill = "dense"
        else:
            sparse.retrieval_prefill, sparse.prefill_scoring, sparse.prefill_top_p = "sparse", scoring, top_p
        started, per_window = time.time(), []
        with recording_prefill(model) as stats:
            for window in windows:
                result = perplexity(model, [window], (0, len(window)), progress=False)
                per_window.append({"all": [result.nll_sum, result.tokens]})
        kept = stats.summary().get("prefill_block_fraction")
        nll, tokens = sum(w["all"][0] for w in per_window), sum(w["all"][1] for w in per_window)
        rows[name] = {"row": name, "units": {"perplexity": {"digest": "windows", "windows": per_window}},
                      "perplexity": math.exp(nll / tokens), "prefill_block_fraction": kept,
                      "seconds": round(time.time() - started, 1)}
        print(f"{name}: perplexity {rows[name]['perplexity']:.4f}, blocks kept {kept}, {rows[name]['seconds']} s",
              file=sys.stderr, flush=True)
    reference = rows[variants[0][0]]
    for name, row in rows.items():
        if name != variants[0][0]:
            row["vs_dense"] = perplexity_ratio(row, reference)
    result = {"model": str(args.model), "data": str(args.data), "windows": len(windows),
              "device": "cpu", "dtype": str(next(model.parameters()).dtype),
              "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, row in rows.items():
        ratio = row.get("vs_dense")
        print(name, f"ppl {row['perplexity']:.4f}", f"kept {row['prefill_block_fraction']}",
              "" if ratio is None else f"{ratio['percent']:+.2f}% ({ratio['lo']:+.2f} to {ratio['hi']:+.2f})")
    return result


if __name__ == "__main__":
    main()
