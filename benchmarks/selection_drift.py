"""How a trained indexer's scores move from one decode step to the next (CPU, the shipped adapter).

    python benchmarks/selection_drift.py --out benchmarks/results/NAME      # NAME.json (summary) + NAME.md

The top-p threshold search (:mod:`rtpurbo.ops.triton.threshold`) bins its level 0 by the logit gap to the row's
maximum ``m``, ``(m - min s) / 32`` logits wide, so it needs ``m`` and the spread before it can bin: that is why
level 0 is a launch of its own after the index scores. If the bins could be placed from the previous decode step's
``m`` and width instead, the index-score kernel could bin the scores while it computes them. This measures, on the
shipped adapter's trained indexers, whether that placement would keep level 1's work small:

* ``rise``: ``m_t - m_{t-1}`` in the previous step's bin widths (bins above the old maximum a fused level 0 would
  need so that the top bin stays closed);
* ``bin keys``: keys in the level-0 bin holding the threshold ``tau_t`` (the keys level 1 histograms), binned from
  this step's ``m`` and width (as now) and from the previous step's with ``--offsets`` bins above its maximum;
* ``key levels``: 11-bit key levels the search needs after level 0 (from the key span of tau's bin), and the keys
  in tau's level-1 bin (what a level 1 that also collected its chosen bin's keys would have to rank);
* ``overlap``: the share of step ``t - 1``'s selection that step ``t`` selects again.

Every retrieval head of every layer, teacher-forced, decoding the last ``--steps`` tokens of each text after a prefill
of the rest: ``--source prose``, ``--windows`` windows of ``--length`` tokens of the dev text; ``--source needles``,
``--windows`` needle prompts of each kind (passkey, key-value, multi-hop; the quickstart's probes), whose last tokens
are the question and its answer, where the retrieval heads must find the needle. Retrieval heads select at every
step (seqlen threshold 0), with the artifact's top-p and ``min_tokens``. 4K-token contexts, not the 128K-1M where the search runs by
default: the spread grows with the number of keys, the step-to-step movement of ``m`` comes from the query.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from rtpurbo import io
from rtpurbo.cache import HeadwiseCache
from rtpurbo.data.task_data import perplexity_windows
from rtpurbo.eval.scoring import decode_step
from rtpurbo.ops import api, reference
from rtpurbo.ops.triton.threshold_phases import MAX_INV_WIDTH, MIN_INV_WIDTH, N_BINS, N_LOGIT
from rtpurbo.prefill import prefill
from rtpurbo.quickstart import probe_samples

BIN_BITS = N_BINS.bit_length() - 1  # the key levels' bits per level


def order_key(s: torch.Tensor) -> torch.Tensor:
    """fp32 -> int64 increasing with s (the search's key)."""
    bits = torch.where(s == 0, torch.zeros_like(s), s).view(torch.int32).long()
    return torch.where(bits < 0, -1 - bits, bits + 2**31)


def inv_width(scores: torch.Tensor) -> float:
    spread = float(scores.max() - scores.min())
    return min(max(N_LOGIT / spread if spread > 0 else MIN_INV_WIDTH, MIN_INV_WIDTH), MAX_INV_WIDTH)


def row_stats(scores: torch.Tensor, top_p: float, min_tokens: int, previous: dict | None, offsets) -> dict:
    """What one row (the visible fp32 scores of one retrieval head at one step) tells about the search."""
    m = float(scores.max())
    iw = inv_width(scores)
    ranked, order = scores.sort(descending=True, stable=True)
    mass = torch.softmax(ranked.double(), 0).cumsum(0)
    n_star = int((mass < top_p).sum()) + 1
    n_keep = min(max(n_star, min_tokens), scores.numel())
    tau = float(ranked[n_keep - 1])
    gap_bins = torch.clamp(torch.floor((m - scores) * iw), max=N_LOGIT - 1)
    tau_bin = min(math.floor((m - tau) * iw), N_LOGIT - 1)
    members = scores[gap_bins == tau_bin]
    keys = order_key(members)
    key_hi = int(keys.max()) if members.numel() else 0
    span = key_hi - int(keys.min()) if members.numel() else 0
    levels, shift = 1, max(span.bit_length() - BIN_BITS, 0)
    while shift > 0:
        levels, shift = levels + 1, max(shift - BIN_BITS, 0)
    first_shift = max(span.bit_length() - BIN_BITS, 0)  # level 1's bins: (key_hi - key) >> first_shift
    level1 = (key_hi - keys) >> first_shift
    level1_keys = int((level1 == (key_hi - int(order_key(torch.tensor([tau]))[0])) >> first_shift).sum())
    out = dict(m=m, iw=iw, n=scores.numel(), keep=n_keep, bin_keys=members.numel(), levels=levels,
               level1_keys=level1_keys, selected=set(order[:n_keep].tolist()))
    if previous is not None:
        r, piw = previous["m"], previous["iw"]
        out["rise_bins"] = (m - r) * piw
        for offset in offsets:
            bins = torch.clamp(torch.floor((r - scores) * piw) + offset, 0, N_LOGIT - 1)
            tau_prev = min(max(math.floor((r - tau) * piw) + offset, 0), N_LOGIT - 1)
            out[f"bin_keys_prev{offset}"] = int((bins == tau_prev).sum())
            out[f"top_open{offset}"] = bool(m >= r + offset / piw)  # bin 0 also holds keys above its top edge
        kept = previous["selected"]
        out["overlap"] = len(kept & out["selected"]) / max(1, len(kept))
    return out


def run(args) -> dict:
    model, tokenizer = io.load(args.adapter, merge_adapters=True)
    model.eval()
    sparse = model.rtpurbo_sparse
    sparse.seqlen_threshold = 0
    if args.source == "needles":
        windows = [sample.input_ids for sample in probe_samples(tokenizer, args.windows, args.length)]
    else:
        windows = perplexity_windows(tokenizer, args.windows, args.length, sources=("shakespeare",))
    rows: list[dict] = []
    previous: dict[tuple[int, int], dict] = {}
    state = {"layer": 0}
    topp_attention = api.topp_attention

    def recording(q, k, v, q_pos, k_pos, q_idx, k_idx, **kw):
        scores = reference.indexer_scores(q_idx, k_idx)[0, :, 0]  # (Hr, Lk)
        seen = (k_pos[0] >= 0) & (k_pos[0] <= q_pos[0, 0])
        layer = state["layer"]
        for head in range(scores.shape[0]):
            key = (layer, head)
            row = row_stats(scores[head][seen], sparse.top_p, sparse.min_tokens, previous.get(key), args.offsets)
            previous[key] = row
            rows.append({k: v for k, v in row.items() if k != "selected"} | dict(layer=layer, head=head))
        state["layer"] += 1
        return topp_attention(q, k, v, q_pos, k_pos, q_idx, k_idx, **kw)

    api.topp_attention = recording
    started = time.time()
    try:
        with torch.no_grad():
            for w, ids in enumerate(windows):
                ids = torch.tensor([list(ids)])
                length = ids.shape[1]
                start = length - args.steps
                cache = HeadwiseCache(model)
                prefill(model, cache, ids[:, :start], torch.ones(1, start, dtype=torch.long), start)
                previous.clear()
                for position in range(start, length):
                    state["layer"] = 0
                    decode_step(model, cache, ids[:, position], torch.ones(1, position + 1, dtype=torch.long),
                                torch.tensor([position]))
                    if (position - start) % 64 == 0:
                        print(f"window {w + 1}/{len(windows)}: step {position - start + 1}/{args.steps}",
                              file=sys.stderr, flush=True)
    finally:
        api.topp_attention = topp_attention
    return dict(rows=rows, seconds=round(time.time() - started, 1), top_p=sparse.top_p, min_tokens=sparse.min_tokens)


def quantiles(values: list[float], qs=(0.05, 0.25, 0.5, 0.75, 0.95, 0.99)) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    return [round(float(x), 3) for x in torch.quantile(t, torch.tensor(qs, dtype=torch.float64))]


def summarise(result: dict, offsets) -> dict:
    rows = [r for r in result["rows"] if "rise_bins" in r]
    out = {
        "rows": len(result["rows"]), "paired_rows": len(rows),
        "kept_fraction": quantiles([r["keep"] / r["n"] for r in result["rows"]]),
        "rise_bins": quantiles([r["rise_bins"] for r in rows]),
        "bin_keys_now": quantiles([r["bin_keys"] for r in rows]),
        "key_levels": {str(k): sum(r["levels"] == k for r in result["rows"]) for k in (1, 2, 3)},
        "level1_keys": quantiles([r["level1_keys"] for r in result["rows"]]),
        "overlap": quantiles([r["overlap"] for r in rows]),
    }
    for offset in offsets:
        ratio = [r[f"bin_keys_prev{offset}"] / max(1, r["bin_keys"]) for r in rows]
        out[f"prev{offset}"] = {"bin_keys": quantiles([r[f"bin_keys_prev{offset}"] for r in rows]),
                                "ratio_to_now": quantiles(ratio),
                                "top_open_share": round(sum(r[f"top_open{offset}"] for r in rows) / len(rows), 4)}
    return out


def markdown(meta: dict, summary: dict, offsets) -> str:
    q = "| quantile | 5 % | 25 % | 50 % | 75 % | 95 % | 99 % |\n|---|---:|---:|---:|---:|---:|---:|\n"

    def line(name, values):
        return f"| {name} | " + " | ".join(f"{v:g}" for v in values) + " |\n"

    text = (f"# Step-to-step movement of trained indexer scores ({meta['date']})\n\n"
            f"- **Machine:** CPU ({meta['cpu']}, {meta['threads']} threads); torch {meta['torch']}, "
            f"Python {meta['python']}; commit {meta['commit']}.\n"
            f"- **Command:** `{meta['command']}` ({meta['seconds']} s).\n"
            f"- **Model:** the shipped adapter `{meta['adapter']}` on SmolLM2-135M-Instruct, top-p {meta['top_p']}, "
            f"min_tokens {meta['min_tokens']}; source: {meta['source']}; {summary['rows']} rows (retrieval head x "
            "decode step), "
            f"{summary['paired_rows']} with a previous step.\n\n")
    text += "Per row, quantiles over rows:\n\n" + q
    text += line("share of the visible keys selected", summary["kept_fraction"])
    text += line("rise of the max, in the previous step's bin widths", summary["rise_bins"])
    text += line("keys in tau's level-0 bin (this step's bins)", summary["bin_keys_now"])
    for offset in offsets:
        s = summary[f"prev{offset}"]
        text += line(f"... previous step's bins, {offset} above its max", s["bin_keys"])
        text += line(f"... ratio to this step's bins ({offset} above)", s["ratio_to_now"])
    text += line("keys in tau's level-1 bin", summary["level1_keys"])
    text += line("share of step t-1's selection selected again", summary["overlap"])
    text += "\n" + "\n".join(f"- {offset} bins above the previous max: the max rose past them in "
                             f"{100 * summary[f'prev{offset}']['top_open_share']:.2f} % of the rows."
                             for offset in offsets)
    text += f"\n- Key levels after level 0 (rows): {summary['key_levels']}.\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default="smollm2-135m-rtpurbo")
    parser.add_argument("--source", choices=("prose", "needles"), default="prose")
    parser.add_argument("--windows", type=int, default=2, help="prose windows, or needle prompts per kind")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--offsets", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--out", type=Path, required=True, help="NAME: writes NAME.json and NAME.md")
    args = parser.parse_args()
    if not 0 < args.steps < args.length:
        parser.error(f"--steps must be in (0, --length); got {args.steps}, {args.length}")
    result = run(args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = dict(date=datetime.date.today().isoformat(), cpu=platform.processor() or platform.machine(),
                threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                commit=commit, command=" ".join(["python"] + sys.argv), seconds=result["seconds"],
                adapter=args.adapter, top_p=result["top_p"], min_tokens=result["min_tokens"], source=args.source)
    summary = summarise(result, args.offsets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, summary=summary), indent=1))
    args.out.with_suffix(".md").write_text(markdown(meta, summary, args.offsets))
    print(markdown(meta, summary, args.offsets))


if __name__ == "__main__":
    main()
