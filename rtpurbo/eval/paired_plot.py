"""Forest plot of the paired differences (:mod:`.paired`): one panel per score, one line per row and
length, the task-average difference to the reference with its 95% interval, zero marked."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .paired import PAIRED_SCORES, markdown

LABELS = {"exact": "exact match", "partial": "partial match", "tf_accuracy": "teacher-forced accuracy"}


def paired_forest(paired: dict[str, Any], path: Path) -> Path | None:
    """Write the plot of ``paired`` (``paired_differences`` output) to ``path``; None when there is nothing
    to draw (no reference row, or no other row)."""
    lines = [(f"{name} @{length} ({scores[PAIRED_SCORES[0]]['tasks_averaged']} tasks)", scores)
             for name, row in (paired or {}).get("rows", {}).items() for length, scores in row["lengths"].items()]
    if not lines:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PAIRED_SCORES), figsize=(3.6 * len(PAIRED_SCORES) + 2.4, 0.9 + 0.32 * len(lines)),
                             dpi=110, sharey=True, squeeze=False)
    ys = list(range(len(lines)))[::-1]
    for ax, score in zip(axes[0], PAIRED_SCORES):
        for y, (_, scores) in zip(ys, lines):
            d = scores.get(score)
            if d is None:
                continue
            ax.errorbar(d["mean"], y, xerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]], fmt="o", markersize=4,
                        color="C3" if d["hi"] < 0 else "C2" if d["lo"] > 0 else "C0", capsize=2, linewidth=1.2)
        ax.axvline(0, color="0.3", linewidth=0.8)
        ax.set_title(LABELS[score], fontsize=9)
        ax.set_xlabel(f"points vs {paired['reference']}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(ys, [label for label, _ in lines], fontsize=7)
    fig.suptitle(f"paired differences vs {paired['reference']}: task average, 95% CI "
                 "(red: below zero, green: above)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_comparisons(comparisons: dict[str, dict[str, Any]], folder: Path) -> list[str]:
    """Write named ``paired_differences`` outputs to ``folder``: ``paired.json`` (all of them),
    ``paired.md`` (their tables, each after an HTML comment with its name) and ``paired_NAME.png``
    (forest plots). Returns the lines of ``paired.md``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "paired.json").write_text(json.dumps(comparisons, indent=1))
    lines: list[str] = []
    for name, paired in comparisons.items():
        lines += [f"<!-- {name} -->"] + markdown(paired) + [""]
        paired_forest(paired, folder / f"paired_{name}.png")
    (folder / "paired.md").write_text("\n".join(lines))
    return lines
