"""Paired differences against a reference row (dense), with bootstrap 95% intervals.

Every row scores the same samples (same task, length and seed), so the difference to the
reference is taken sample by sample, in points (0-100 scale):

* per task: mean of ``100 * (row - reference)`` over the samples both rows scored; 95% CI by
  resampling those samples (percentile bootstrap, 2000 resamples, fixed seed);
* task average: the unweighted mean of the per-task differences, with a stratified bootstrap
  interval and the samples per task that would reach a target half-width
  (:func:`rtpurbo.stats.task_average`);
* perplexity: the ratio of pooled perplexities minus one, in percent, with windows
  resampled for both rows together.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..stats import DEFAULT_TARGET, N_BOOTSTRAP, interval, task_average

PAIRED_SCORES = ("exact", "partial", "tf_accuracy")


def _samples_by_seed(unit: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {s["seed"]: s for s in unit["samples"]}


def _units(stored: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(task, length) -> that stored unit of one row."""
    return {(key[5:].rsplit("@", 1)[0], int(key.rsplit("@", 1)[1])): unit
            for key, unit in stored["units"].items() if key.startswith("task:")}


def paired_seeds(mine: dict[str, Any], ref: dict[str, Any]) -> tuple[list[int], int]:
    """The seeds two units both scored on the same token ids, and how many seeds they share but scored on other ids
    (other data or chat template). Samples that carry their ids digest (``ids``) are compared one by one; units
    stored without them are told apart by their own digests, where they hold the same seeds (units of more or
    fewer samples have other digests on the same data)."""
    a, b = _samples_by_seed(mine), _samples_by_seed(ref)
    shared = [seed for seed in a if seed in b]
    if all(a[s].get("ids") is None or b[s].get("ids") is None for s in shared):
        digests = mine.get("digest"), ref.get("digest")
        other_data = set(a) == set(b) and None not in digests and digests[0] != digests[1]
        return ([] if other_data else shared), (len(shared) if other_data else 0)
    same = [s for s in shared if a[s].get("ids") is None or b[s].get("ids") is None or a[s]["ids"] == b[s]["ids"]]
    return same, len(shared) - len(same)


def perplexity_ratio(row: dict[str, Any], reference: dict[str, Any], seed: int = 0,
                     n_boot: int = N_BOOTSTRAP) -> dict[str, Any] | None:
    """Pooled perplexity of ``row`` over ``reference`` minus one (percent), windows resampled together."""
    a, b = row["units"].get("perplexity"), reference["units"].get("perplexity")
    if a is None or b is None or a["digest"] != b["digest"]:
        return None
    nll_a = np.array([w["all"][0] for w in a["windows"]])
    nll_b = np.array([w["all"][0] for w in b["windows"]])
    tokens = np.array([w["all"][1] for w in b["windows"]], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(tokens), size=(n_boot, len(tokens)))
    stats = 100 * np.expm1((nll_a[picks].sum(1) - nll_b[picks].sum(1)) / tokens[picks].sum(1))
    lo, hi = interval(stats) if len(tokens) > 1 else (math.nan, math.nan)  # one window: no spread to resample
    mean = 100 * math.expm1((nll_a.sum() - nll_b.sum()) / tokens.sum())
    return {"percent": mean, "lo": lo, "hi": hi, "windows": len(tokens)}


def paired_differences(stored_rows: list[dict[str, Any]], reference: str = "dense",
                       target: float = DEFAULT_TARGET) -> dict[str, Any]:
    """Per row other than ``reference``: per length and score the task average (and per task) of
    the paired differences in points, and the perplexity ratio. Empty without the reference row."""
    rows = {r["row"]: r for r in stored_rows}
    if reference not in rows:
        return {}
    ref_units = _units(rows[reference])
    out: dict[str, Any] = {}
    for name, stored in rows.items():
        if name == reference:
            continue
        units, by_length, unpaired = _units(stored), {}, 0
        for length in sorted({length for _, length in units}):
            common = {task: (_samples_by_seed(units[task, length]), _samples_by_seed(ref_units[task, length]),
                             *paired_seeds(units[task, length], ref_units[task, length]))
                      for task, n in sorted(units) if n == length and (task, length) in ref_units}
            unpaired += sum(n for *_, n in common.values())
            scores = {}
            for score in PAIRED_SCORES:
                diffs = {task: np.array([100 * (mine[s][score] - ref[s][score]) for s in seeds])
                         for task, (mine, ref, seeds, _) in common.items()}
                diffs = {task: d for task, d in diffs.items() if len(d)}
                if diffs:
                    scores[score] = task_average(diffs, target)
            if scores:
                by_length[str(length)] = scores
        out[name] = {"lengths": by_length, "perplexity": perplexity_ratio(stored, rows[reference]),
                     "unpaired_samples": unpaired}
    return {"reference": reference, "unit": "points (0-100)", "target_half_width": target, "rows": out}


def markdown(paired: dict[str, Any]) -> list[str]:
    """Markdown lines: the task-average table, then per-task differences of each row."""
    if not paired:
        return []
    rows = paired["rows"]
    lines = ["", f"## Paired differences vs {paired['reference']} (points, 95% CI)", "",
             f"Sample by sample, row minus {paired['reference']}, averaged over tasks; ± is the CI's half-width; "
             f"'n for ±{paired['target_half_width']:g}' projects the samples per task that reach that half-width.", "",
             "| row | length | tasks | n/task | exact | partial | TF acc | n for ±" +
             f"{paired['target_half_width']:g} (partial) |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        for length, scores in row["lengths"].items():
            first = next(iter(scores.values()))
            cells = [_average(scores.get(s)) for s in PAIRED_SCORES]
            need = scores.get("partial", first)["samples_for_target"]
            lines.append(f"| {name} | {length} | {first['tasks_averaged']} | {first['samples_per_task']} | "
                         + " | ".join(cells) + f" | {'–' if need is None else need} |")
    unpaired = {name: row.get("unpaired_samples", 0) for name, row in rows.items() if row.get("unpaired_samples")}
    if unpaired:
        lines += ["", "Not paired (the same seed, scored on other token ids: other data or chat template): "
                  + ", ".join(f"{name} {n} samples" for name, n in unpaired.items()) + "."]
    ppl = [(name, row["perplexity"]) for name, row in rows.items() if row["perplexity"]]
    if ppl:
        lines += ["", "| row | perplexity vs reference (95% CI) | windows |", "|---|---|---|"]
        lines += [f"| {name} | {p['percent']:+.2f}%" + ("" if math.isnan(p["lo"]) else
                                                           f" ({p['lo']:+.2f}% – {p['hi']:+.2f}%)")
                  + f" | {p['windows']} |" for name, p in ppl]
    for name, row in rows.items():
        for length, scores in row["lengths"].items():
            tasks = list(next(iter(scores.values()))["tasks"])
            lines += ["", f"### {name} − {paired['reference']} at {length} tokens, per task", "",
                      "| task | exact | partial | TF acc |", "|---|---|---|---|"]
            lines += [f"| {task} | " + " | ".join(_diff(scores[s]["tasks"].get(task)) if s in scores else "–"
                                                  for s in PAIRED_SCORES) + " |" for task in tasks]
    return lines


def _average(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    if math.isnan(d["half_width"]):  # one sample per task: no interval
        return f"{d['mean']:+.2f}"
    if d["half_width"] == 0:  # every task's pairs differ alike: the bootstrap has no spread, no interval to claim
        return f"{d['mean']:+.2f} (no spread)"
    return f"{d['mean']:+.2f} ±{d['half_width']:.2f}"


def _diff(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    if math.isnan(d["lo"]):  # one sample: no interval
        return f"{d['mean']:+.2f}"
    if d["lo"] == d["hi"]:
        return f"{d['mean']:+.2f} (no spread)"
    return f"{d['mean']:+.2f} ({d['lo']:+.2f} – {d['hi']:+.2f})"
