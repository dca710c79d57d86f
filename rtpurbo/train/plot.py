"""PNG of the two stages' training curves from their reports (``history``: one dict per step)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

# (report key, metric, axis label) per panel; a panel is skipped when its report or metric is absent
PANELS = (
    ("indexer", "loss", "stage 1: KL(attention || indexer)"),
    ("indexer", "recall", "stage 1: top-p recall of attention mass"),
    ("distill", "kl", "stage 2: KL(teacher || student) per token"),
    ("distill", "tokens_per_s", "stage 2: tokens/s"),
)


def smooth(values: list[float], span: int) -> list[float]:
    """Trailing mean over ``span`` steps (the first points average what exists)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= span:
            total -= values[i - span]
        out.append(total / min(i + 1, span))
    return out


def plot_training(reports: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write the curves of ``reports`` ({"indexer": stage-1 report, "distill": stage-2 report})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, m, label) for k, m, label in PANELS
              if k in reports and any(m in step for step in reports[k].get("history", []))]
    if not panels:
        raise ValueError("no report holds a training history to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=110, squeeze=False)
    for ax, (key, metric, label) in zip(axes[0], panels):
        history = [step for step in reports[key]["history"] if metric in step]
        steps = [step["step"] for step in history]
        values = [float(step[metric]) for step in history]
        ax.plot(steps, values, color="0.75", linewidth=0.8, label="per step")
        ax.plot(steps, smooth(values, 20), color="C0", linewidth=1.6, label="mean of 20")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
