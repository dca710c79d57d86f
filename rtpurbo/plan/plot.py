"""PNGs of plan search (the Pareto plot) and of the copy-vs-knockout comparison."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .search import pareto_front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_plot(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Fidelity vs KV bytes per token of every candidate: TF points (with 95% CI) and perplexity,
    one colour per window, the Pareto front, the tolerance and the chosen plan."""
    plt = _pyplot()
    rows, chosen = result["rows"], result["chosen"]
    tolerance = result["settings"]["tolerance"]
    windows = sorted({r["window"] for r in rows})
    colours = dict(zip(windows, plt.cm.viridis([i / max(1, len(windows) - 1) for i in range(len(windows))])))
    panels = [("tf_points", "Δ TF accuracy vs dense (points)")]
    if any(r["ppl_percent"] is not None for r in rows):
        panels.append(("ppl_percent", "Δ perplexity vs dense (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), dpi=120, squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for window in windows:
            mine = [r for r in rows if r["window"] == window]
            x = [r["kv_bytes_per_token"] for r in mine]
            y = [r[key] for r in mine]
            if key == "tf_points":
                errors = [[r["tf_points"] - r["tf_lo"] for r in mine], [r["tf_hi"] - r["tf_points"] for r in mine]]
                errors = [[0.0 if math.isnan(e) else e for e in side] for side in errors]  # one sample: no CI
                ax.errorbar(x, y, yerr=errors, fmt="o", color=colours[window], capsize=2, label=f"W {window}")
            else:
                ax.plot(x, y, "o", color=colours[window], label=f"W {window}")
            for r in mine:
                ax.annotate(f"{100 * r['ratio']:g}%", (r["kv_bytes_per_token"], r[key]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        if key == "tf_points":
            front = pareto_front(rows)
            ax.plot([rows[i]["kv_bytes_per_token"] for i in front], [rows[i]["tf_points"] for i in front], "-",
                    color="grey", linewidth=1, label="Pareto front")
            ax.axhline(-tolerance, color="red", linestyle="--", linewidth=1, label=f"tolerance −{tolerance:g}")
        ax.axhline(0, color="black", linewidth=0.6)
        best = rows[chosen]
        ax.plot([best["kv_bytes_per_token"]], [best[key]], "*", color="red", markersize=14, label="chosen")
        ax.set_xlabel(f"KV-cache bytes per token at {result['cost_context']} tokens (dense "
                      f"{rows[0]['dense_kv_bytes_per_token']:,.0f})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"plan search: {result['samples']} tune samples, {result['windows']} windows", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def scores_scatter(names: tuple[str, str], a: list[float], b: list[float], kept: list[tuple[bool, bool]],
                   path: str | Path, title: str) -> Path:
    """One point per KV head: score under criterion ``a`` vs ``b`` (log axes), coloured by which plan keeps it."""
    plt = _pyplot()
    colour = {(True, True): "purple", (True, False): "tab:blue", (False, True): "tab:orange", (False, False): "lightgrey"}
    label = {(True, True): "kept by both", (True, False): f"{names[0]} only", (False, True): f"{names[1]} only",
             (False, False): "local in both"}
    floor = min([v for v in a + b if v > 0], default=1e-6) / 2
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    for key in colour:
        points = [(max(x, floor), max(y, floor)) for x, y, k in zip(a, b, kept) if k == key]
        if points:
            ax.scatter(*zip(*points), s=14, color=colour[key], label=f"{label[key]} ({len(points)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{names[0]} score")
    ax.set_ylabel(f"{names[1]} score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
