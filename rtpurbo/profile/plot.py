"""PNG of a head plan: layers x KV heads, score as colour, retrieval heads marked."""
from __future__ import annotations

from pathlib import Path

from ..config import HeadPlan


def plot_plan(plan: HeadPlan, path: str | Path, title: str = "", score_label: str = "retrieval score") -> Path:
    """Write a heatmap of ``plan.scores`` (or roles alone) with retrieval heads boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    roles = np.zeros((plan.num_layers, plan.num_kv_heads))
    for layer, heads in enumerate(plan.retrieval):
        roles[layer, heads] = 1.0
    values = np.array(plan.scores, dtype=float) if plan.scores is not None else roles
    height = max(3.0, 0.22 * plan.num_layers + 1.5)
    width = max(3.5, 0.5 * plan.num_kv_heads + 2.5)
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    image = ax.imshow(values, aspect="auto", cmap="viridis", origin="upper")
    fig.colorbar(image, ax=ax, label=score_label if plan.scores is not None else "role (1 = retrieval)")
    for layer, heads in enumerate(plan.retrieval):
        for head in heads:
            ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.6))
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(plan.num_kv_heads))
    step = 1 if plan.num_layers <= 32 else 2
    ax.set_yticks(range(0, plan.num_layers, step))
    n = plan.num_retrieval()
    ax.set_title(title or f"retrieval KV heads (red): {n}/{plan.num_layers * plan.num_kv_heads}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
