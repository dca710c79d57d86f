"""Turn stored row results into ``results.json``, ``results.md`` and PNGs.

* ``results.json``: per row its plan summary, sparse config, KV bytes per token, speed,
  perplexity by position bucket and every task at every length, each score with its 95% CI;
  ``paired``: every row's sample-by-sample differences to the dense row (:mod:`.paired`);
* ``results.md``: the same as Markdown tables (rows, perplexity, one task table per length,
  paired differences);
* ``needle_heatmap.png``: single-needle exact match and teacher-forced accuracy by depth x length;
* ``head_plan_<row>.png``: the head plan of every row that has retrieval and local heads.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..config import HeadPlan, dumps
from ..profile.plot import plot_plan
from .paired import DEFAULT_TARGET, paired_differences
from .paired import markdown as paired_markdown
from .paired_plot import paired_forest
from .scoring import bootstrap, summarize
from ..data.tasks import SINGLE_NEEDLE, TASKS

SCORES = ("exact", "partial", "tf_accuracy", "tf_logprob")
NOTES = [
    "exact: the first line of the greedy answer equals the gold answer (as text, item list or item set); "
    "95% CI: Wilson.",
    "partial: fraction of gold items found in the greedy answer (RULER string match); 95% CI: bootstrap.",
    "tf_accuracy / tf_logprob: teacher-forced answer-token accuracy and mean log-probability per answer token; "
    "95% CI: bootstrap. Answers are decoded token by token through the head-wise cache, so retrieval heads "
    "with an indexer and top_p < 1 attend over their top-p selection, as at generation.",
    "perplexity: prompt-style forward (retrieval heads full attention); 95% CI: bootstrap over windows.",
    "KV bytes per token: analytic, bf16, at the given context (retrieval heads also keep 16-d indexer keys; "
    "dense keeps no indexer). Speed: medians on the current device through the head-wise cache, each model as "
    "it runs (its retrieval heads select from its seqlen_threshold on; the task scores select at every length).",
]


# --- aggregation --------------------------------------------------------------------------------------
def _perplexity(unit: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per bucket (and ``all``): perplexity over all windows with a bootstrap interval over windows."""
    windows = unit["windows"]
    names = ["all"] + list(windows[0]["buckets"])
    out = {}
    for name in names:
        pairs = [w["all"] if name == "all" else w["buckets"][name] for w in windows]
        nll, tokens = [p[0] for p in pairs], [p[1] for p in pairs]
        if sum(tokens):
            lo, hi = bootstrap([nll, tokens], _pooled_perplexity)
            out[name] = {"ppl": math.exp(sum(nll) / sum(tokens)), "lo": lo, "hi": hi, "windows": len(windows)}
    return out


def _pooled_perplexity(nll_sums: np.ndarray, token_counts: np.ndarray) -> float:
    return math.exp(nll_sums.sum() / max(token_counts.sum(), 1))


def _task_scores(unit: dict[str, Any]) -> dict[str, Any]:
    samples = unit["samples"]
    scores = {k: summarize([s[k] for s in samples], binary=(k == "exact")) for k in SCORES}
    scores["selection_mean_fraction"] = unit.get("selection_mean_fraction")
    scores["prefill_block_fraction"] = unit.get("prefill_block_fraction")
    return scores


def summarize_row(stored: dict[str, Any]) -> dict[str, Any]:
    """The aggregated, JSON-ready view of one row's stored units."""
    units, plan = stored["units"], HeadPlan.from_dict(stored["plan"])
    tasks: dict[str, dict[str, Any]] = {}
    for key, unit in units.items():
        if key.startswith("task:"):
            task, length = key[5:].rsplit("@", 1)
            tasks.setdefault(task, {})[length] = _task_scores(unit)
    return {
        "row": stored["row"], "kind": stored["kind"],
        "retrieval_kv_heads": plan.num_retrieval(), "total_kv_heads": plan.num_layers * plan.num_kv_heads,
        "sparse": stored["sparse"], "kv_bytes_per_token": stored["kv_bytes_per_token"],
        "speed": {k: v for k, v in units.get("speed", {}).items() if k != "digest"},
        "perplexity": _perplexity(units["perplexity"]) if "perplexity" in units else {},
        "perplexity_prefill_block_fraction": units.get("perplexity", {}).get("prefill_block_fraction"),
        "tasks": {t: dict(sorted(tasks[t].items(), key=lambda kv: int(kv[0]))) for t in TASKS if t in tasks},
    }


# --- Markdown -----------------------------------------------------------------------------------------
def _ci(score: dict[str, Any], digits: int = 2) -> str:
    if score is None or score["n"] == 0:
        return "–"
    if math.isnan(score["lo"]):  # one sample: no interval
        return f"{score['mean']:.{digits}f}"
    return f"{score['mean']:.{digits}f} ({score['lo']:.{digits}f}–{score['hi']:.{digits}f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _rows_table(rows: list[dict[str, Any]]) -> list[str]:
    contexts = sorted({int(c) for r in rows for c in r["kv_bytes_per_token"]})
    header = ["row", "retrieval KV heads", "W", "S", "top-p"] + [f"KV B/token @{c}" for c in contexts]
    header += ["prefill ms (tokens)", "decode ms/token", "top-p keeps", "retrieval prefill"]
    lines = []
    for r in rows:
        sp, speed = r["sparse"], r["speed"]
        kept = [s.get("selection_mean_fraction") for lengths in r["tasks"].values() for s in lengths.values()]
        kept = [k for k in kept if k is not None]
        by_length: dict[int, list[float]] = {}
        for lengths in r["tasks"].values():
            for length, scores in lengths.items():
                if scores.get("prefill_block_fraction") is not None:
                    by_length.setdefault(int(length), []).append(scores["prefill_block_fraction"])
        prefill = sp.get("retrieval_prefill", "dense")
        if prefill == "sparse":
            kept_blocks = "".join(f"; {100 * np.mean(v):.0f}% of key blocks @{n}" for n, v in sorted(by_length.items()))
            if r.get("perplexity_prefill_block_fraction") is not None:
                kept_blocks += f"; {100 * r['perplexity_prefill_block_fraction']:.0f}% in the perplexity windows"
            scoring = "" if sp.get("prefill_scoring", "pooled") == "pooled" else f", {sp['prefill_scoring']} scores"
            prefill += f" (top-p {sp.get('prefill_top_p', 1.0):g}{scoring}{kept_blocks})"
        windowed = r["kind"] != "dense"  # the dense row has no local heads and no selection: W and S mean nothing
        lines.append([
            r["row"], f"{r['retrieval_kv_heads']}/{r['total_kv_heads']}", str(sp["window"]) if windowed else "–",
            str(sp["sinks"]) if windowed else "–",
            f"{sp['top_p']:g}" if r["retrieval_kv_heads"] and r["kind"] != "dense" else "–",
            *[_bytes_cell(r["kv_bytes_per_token"].get(str(c))) for c in contexts],
            f"{speed['prefill_ms']:.1f} ({speed['prefill_tokens']})" if speed else "–",
            f"{speed['decode_ms_per_token']:.2f}" if speed else "–",
            f"{100 * np.mean(kept):.1f}% of keys" if kept else "–",
            prefill if r["retrieval_kv_heads"] and r["kind"] != "dense" else "–",
        ])
    return _table(header, lines)


def _perplexity_table(rows: list[dict[str, Any]]) -> list[str]:
    buckets = [b for b in rows[0]["perplexity"] if b != "all"] + ["all"] if rows[0]["perplexity"] else []
    body = [[r["row"]] + [_ppl_cell(r["perplexity"].get(b)) for b in buckets] for r in rows]
    return _table(["row"] + buckets, body)


def _ppl_cell(p: dict[str, float] | None) -> str:
    if p is None:
        return "–"
    return f"{p['ppl']:.2f}" + ("" if math.isnan(p["lo"]) else f" ({p['lo']:.2f}–{p['hi']:.2f})")


def _task_table(rows: list[dict[str, Any]], length: str) -> list[str]:
    """One line per task (mean and CI of each score per row), then the unweighted mean over tasks."""
    keys = ("exact", "partial", "tf_accuracy")
    header = ["task"] + [f"{r['row']} {s}" for r in rows for s in ("exact", "partial", "TF acc")]
    body, means = [], [[] for _ in range(len(rows) * len(keys))]
    for task in TASKS:
        cells = [r["tasks"].get(task, {}).get(length) for r in rows]
        if any(c is not None for c in cells):
            body.append([task] + [_ci(c[k]) if c else "–" for c in cells for k in keys])
            for i, value in enumerate(c[k]["mean"] if c else math.nan for c in cells for k in keys):
                means[i].append(value)
    # a row without some task of the table has no mean: one over fewer tasks would not compare with the others
    body.append(["**mean of tasks**"] + [f"**{np.mean(m):.2f}**" if m and not np.isnan(m).any() else "–"
                                         for m in means])
    return _table(header, body)


def _bytes_cell(value: float | None) -> str:
    """KV bytes per token at one context, or a dash where the row was not run at that context (merged runs)."""
    return "–" if value is None else f"{value:,.0f}"


def markdown(rows: list[dict[str, Any]], config: dict[str, Any], paired: dict[str, Any] | None = None) -> str:
    lengths = sorted({length for r in rows for t in r["tasks"].values() for length in t}, key=int)
    n = max((c["exact"]["n"] for r in rows for t in r["tasks"].values() for c in t.values()), default=0)
    lines = [f"# rtpurbo eval: {config['model']}", "",
             f"Device {config['device']} ({config['dtype']}); up to {n} samples per task and length; "
             f"chat template: {'yes' if config.get('chat_template') else 'no'}; "
             f"data split: {config.get('data', {}).get('split', 'eval')}; "
             f"wall time {config.get('wall_seconds', '?')} s.",
             "", "## Rows", ""] + _rows_table(rows)
    if rows[0]["perplexity"]:
        windows = rows[0]["perplexity"]["all"]["windows"]
        lines += ["", f"## Perplexity by position ({windows} windows, 95% CI)", ""] + _perplexity_table(rows)
    lines += paired_markdown(paired or {})
    for length in lengths:
        lines += ["", f"## Tasks at {length} tokens (mean, 95% CI)", ""] + _task_table(rows, length)
    lines += ["", "## Notes", ""] + [f"- {note}" for note in NOTES]
    return "\n".join(lines) + "\n"


# --- PNGs ---------------------------------------------------------------------------------------------
def needle_heatmap(stored_rows: list[dict[str, Any]], path: Path, bins: int = 10) -> Path | None:
    """Mean exact match and teacher-forced accuracy of the single-needle tasks, depth bin x length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [_depth_grid(r, bins) for r in stored_rows]
    if not any(g is not None for g in grids):
        return None
    fig, axes = plt.subplots(2, len(stored_rows), figsize=(2.2 + 2.6 * len(stored_rows), 7), dpi=110, squeeze=False)
    for col, (stored, grid) in enumerate(zip(stored_rows, grids)):
        for row, score in enumerate(("exact", "tf_accuracy")):
            ax = axes[row][col]
            if grid is None:
                ax.axis("off")
                continue
            lengths, values = grid[0], grid[1][score]
            ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
            for (i, j), v in np.ndenumerate(values):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
            ax.set_xticks(range(len(lengths)), [str(x) for x in lengths], fontsize=7)
            ax.set_yticks(range(bins), [f"{(i + 0.5) / bins:.2f}" for i in range(bins)], fontsize=6)
            ax.set_title(f"{stored['row']}: {'exact' if score == 'exact' else 'TF acc'}", fontsize=8)
            ax.set_xlabel("length (tokens)", fontsize=7)
            ax.set_ylabel("needle depth", fontsize=7)
    fig.suptitle(f"single needle ({', '.join(SINGLE_NEEDLE)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _depth_grid(stored: dict[str, Any], bins: int) -> tuple[list[int], dict[str, np.ndarray]] | None:
    cells: dict[tuple[int, int], dict[str, list[float]]] = {}
    for key, unit in stored["units"].items():
        task, _, length = key[5:].rpartition("@") if key.startswith("task:") else ("", "", "")
        if task in SINGLE_NEEDLE:
            for s in unit["samples"]:
                where = (int(length), min(bins - 1, int(s["depth"] * bins)))
                cell = cells.setdefault(where, {"exact": [], "tf_accuracy": []})
                cell["exact"].append(s["exact"])
                cell["tf_accuracy"].append(s["tf_accuracy"])
    if not cells:
        return None
    lengths = sorted({length for length, _ in cells})
    grid = {k: np.full((bins, len(lengths)), np.nan) for k in ("exact", "tf_accuracy")}
    for (length, b), values in cells.items():
        for k in grid:
            grid[k][b, lengths.index(length)] = float(np.mean(values[k]))
    return lengths, grid


def write_report(out: Path, stored_rows: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Write results.json, results.md and the PNGs into ``out``; returns the JSON object."""
    rows = [summarize_row(r) for r in stored_rows]
    reference = config.get("reference", "dense")
    if reference != "dense" and reference not in {r["row"] for r in stored_rows}:
        raise ValueError(f"--reference {reference!r} is not a row of this report: "
                         f"{', '.join(r['row'] for r in stored_rows)}")
    paired = paired_differences(stored_rows, reference=reference, target=config.get("ci_target", DEFAULT_TARGET))
    result = {"config": config, "rows": rows, "paired": paired, "notes": NOTES}
    (out / "results.json").write_text(dumps(result))
    (out / "results.md").write_text(markdown(rows, config, paired))
    needle_heatmap(stored_rows, out / "needle_heatmap.png")
    paired_forest(paired, out / "paired_differences.png")
    for stored in stored_rows:
        plan = HeadPlan.from_dict(stored["plan"])
        if 0 < plan.num_retrieval() < plan.num_layers * plan.num_kv_heads:
            total = plan.num_layers * plan.num_kv_heads
            title = f"{stored['row']}: retrieval KV heads (red) {plan.num_retrieval()}/{total}"
            plot_plan(plan, out / f"head_plan_{stored['row']}.png", title=title)
    return result


def stored_rows(directory: Path) -> dict[str, dict[str, Any]]:
    """``directory/rows``: row name -> stored row, from ``NAME.json`` or ``NAME.json.gz`` (as results are
    committed); a row stored both ways is an error."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted((directory / "rows").glob("*.json")) + sorted((directory / "rows").glob("*.json.gz")):
        name = path.name.removesuffix(".gz").removesuffix(".json")
        if name in rows:
            raise ValueError(f"{directory / 'rows'} holds row {name!r} twice (.json and .json.gz)")
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        rows[name] = json.loads(text)
    return rows


def stored_row(directory: Path, name: str) -> tuple[str, dict[str, Any]]:
    """Row ``name`` of ``directory`` (:func:`stored_rows`) as the ``(where, row)`` part :func:`merge_rows` takes."""
    rows = stored_rows(Path(directory))
    if name not in rows:
        raise KeyError(f"{Path(directory) / 'rows'} holds no row {name!r} (it holds {sorted(rows)})")
    return str(directory), rows[name]


def rebuild_report(out: Path, row_order: tuple[str, ...] = (), reference: str | None = None) -> dict[str, Any]:
    """Write the report again from ``out/rows/*.json`` and ``out/config.json`` (no model needed).

    Merges rows stored by several runs into one directory (e.g. one GPU call per row); rows
    named in ``row_order`` come first, the others follow by name. ``reference``: the row the others
    are paired against (default: the run's own, else dense).
    """
    stored = stored_rows(out)
    if not stored:
        raise FileNotFoundError(f"{out / 'rows'} holds no row results")
    names = [n for n in row_order if n in stored] + sorted(n for n in stored if n not in row_order)
    config = json.loads((out / "config.json").read_text())
    config.pop("wall_seconds", None)
    if reference is not None:
        config["reference"] = reference
    return write_report(out, [stored[n] for n in names], config)


def _merged_unit(held: dict[str, Any] | None, unit: dict[str, Any], where: str) -> dict[str, Any]:
    """One task unit from two runs over different samples (``--first-sample``): their samples joined by seed.
    A seed scored in both runs must score the same; other units (perplexity, speed): the later run's."""
    if held is None or "samples" not in held or "samples" not in unit:
        return unit
    seeds = {s["seed"]: s for s in held["samples"]}
    for sample in unit["samples"]:
        if sample["seed"] in seeds and seeds[sample["seed"]] != sample:
            raise ValueError(f"{where}: sample seed {sample['seed']} scored differently in two runs")
        seeds[sample["seed"]] = sample
    merged = {**unit, "samples": [seeds[k] for k in sorted(seeds)], "digest": None}
    for field in ("selection_mean_fraction", "prefill_block_fraction"):  # sample-weighted means
        pairs = [(u.get(field), len(u["samples"])) for u in (held, unit) if u.get(field) is not None]
        merged[field] = sum(f * n for f, n in pairs) / sum(n for _, n in pairs) if pairs else None
    return merged


def merge_rows(name: str, parts: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One stored row from several runs' ``(where, row)`` parts (e.g. rows of the same artifact run under
    other names, or over other blocks of samples): identities must agree; units join (samples by seed)."""
    merged: dict[str, Any] | None = None
    for where, row in parts:
        if merged is None:
            merged = {**row, "row": name, "units": {}, "kv_bytes_per_token": {}}
        elif merged["identity"] != row["identity"]:
            raise ValueError(f"{where}: row {name!r} was computed differently in another run")
        for key, unit in row["units"].items():
            merged["units"][key] = _merged_unit(merged["units"].get(key), unit, f"{where}: row {name!r}, {key}")
        merged["kv_bytes_per_token"].update(row.get("kv_bytes_per_token", {}))
    if merged is None:
        raise ValueError(f"no parts to merge into row {name!r}")
    return merged


def merge_runs(out: Path, runs: list[Path]) -> None:
    """Gather the rows of several results directories into ``out`` (e.g. one run per row and
    length, or per block of samples): units of one row merge when its identity agrees, and the samples
    of a unit held by several runs are joined by seed (:func:`merge_rows`); the config of the run with the
    most perplexity windows and lengths is kept, its lengths widened to all merged lengths."""
    parts: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    configs, lengths = [], set()
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        configs.append(config)
        lengths.update(config["settings"]["lengths"])
        for name, row in stored_rows(run).items():
            parts.setdefault(name, []).append((str(run), row))
    rows = {name: merge_rows(name, held) for name, held in parts.items()}
    if not rows:
        raise FileNotFoundError(f"no row results in {[str(r) for r in runs]}")
    config = max(configs, key=lambda c: (c["settings"]["ppl_windows"], len(c["settings"]["lengths"])))
    config = {**config, "settings": {**config["settings"], "lengths": sorted(lengths)},
              "merged_from": [str(r) for r in runs]}
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for name, row in rows.items():
        (out / "rows" / f"{name}.json").write_text(dumps(row))
    (out / "config.json").write_text(dumps(config))
