"""Means of eval rows over one subset of units (tasks x first N samples at one length), so rows from
runs with different sample counts compare on the same prompts.

    python3 scripts/summarize_eval_subset.py --length 8192 --samples 50 --tasks niah_number ... -- ROW_JSON...

``--ppl-windows N`` also restricts perplexity to each row's first N windows (every run takes its
windows in the same order from the same data), so rows run with 6 and with 12 windows compare.
"""
import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtpurbo.eval.report import summarize_row  # noqa: E402

SCORES = ("exact", "partial", "tf_accuracy")


def first_windows_perplexity(row: dict, windows: int) -> dict | None:
    """Perplexity over the row's first ``windows`` windows ({"ppl", "windows"}); None if it has fewer."""
    unit = row["units"].get("perplexity")
    if unit is None or len(unit["windows"]) < windows:
        return None
    nll, tokens = (sum(w["all"][i] for w in unit["windows"][:windows]) for i in (0, 1))
    return {"ppl": math.exp(nll / tokens), "windows": windows}


def subset_means(row: dict, tasks: list[str], length: int, samples: int, ppl_windows: int | None = None) -> dict | None:
    """Mean of each score over the first ``samples`` samples of ``tasks`` at ``length``; None if
    the row holds fewer. Heads and config come from the report's own row summary, and so does
    perplexity unless ``ppl_windows`` asks for the first N windows only."""
    values: dict[str, list[float]] = {s: [] for s in SCORES}
    for task in tasks:
        unit = row["units"].get(f"task:{task}@{length}")
        if unit is None or len(unit["samples"]) < samples:
            return None
        for sample in unit["samples"][:samples]:
            for s in SCORES:
                values[s].append(float(sample[s]))
    summary = summarize_row(row)
    means = {s: sum(v) / len(v) for s, v in values.items()}
    ppl = summary["perplexity"].get("all") if ppl_windows is None else first_windows_perplexity(row, ppl_windows)
    means.update(perplexity=ppl, top_p=summary["sparse"]["top_p"],
                 window=summary["sparse"]["window"], retrieval_kv_heads=summary["retrieval_kv_heads"])
    return means


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--ppl-windows", type=int, help="perplexity over each row's first N windows only")
    p.add_argument("rows", nargs="+", type=Path)
    args = p.parse_args()
    print(f"| row | source | KV heads | W | top-p | exact | partial | TF acc | ppl (windows) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.rows:
        row = json.loads(path.read_text())
        m = subset_means(row, args.tasks, args.length, args.samples, args.ppl_windows)
        if m is None:
            print(f"| {path.stem} | {path.parent.parent.name} | incomplete | | | | | | |")
            continue
        ppl = f"{m['perplexity']['ppl']:.3f} ({m['perplexity']['windows']})" if m["perplexity"] else "–"
        print(f"| {path.stem} | {path.parent.parent.name} | {m['retrieval_kv_heads']} | {m['window']} | {m['top_p']} | "
              f"{m['exact']:.3f} | {m['partial']:.3f} | {m['tf_accuracy']:.3f} | {ppl} |")


if __name__ == "__main__":
    main()
