"""Compare two stage-2 runs (1 GPU vs N GPUs, same global batch and data order): loss curves and throughput.

    python3 scripts/compare_scaling.py ONE_GPU/distill_report.json N_GPU/distill_report.json [--plot PNG]

Prints one JSON object. ``kl_gap`` is the mean |KL_1 - KL_N| over the steps both ran;
``kl_noise`` the step-to-step noise of the 1-GPU curve (std of successive differences / sqrt 2),
so ``gap_over_noise`` well below 1 means the curves agree within noise. ``--plot`` also draws both
KL curves over the shared steps (raw and 20-step mean).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtpurbo.train.plot import smooth  # noqa: E402


def curve(report: dict, key: str) -> list[float]:
    return [step[key] for step in report["history"]]


def plot(one: dict, many: dict, n: int, path: str) -> None:
    """Both runs' KL per step over their first ``n`` steps, raw and smoothed, into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for report, color, style in ((one, "C0", "-"), (many, "C1", "--")):  # dashed: the curves overlap
        kl = curve(report, "kl")[:n]
        label = f"{report['world_size']} GPU(s), {report['tokens_per_s']:,.0f} tok/s"
        ax.plot(range(1, n + 1), kl, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(range(1, n + 1), smooth(kl, 20), color=color, linestyle=style, linewidth=1.6, label=label)
    ax.set_xlabel("step (same global batch and data order)")
    ax.set_ylabel("KL(teacher || student) per token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(one_path: str, many_path: str, plot_path: str | None = None) -> dict:
    one, many = (json.load(open(path)) for path in (one_path, many_path))
    a, b = curve(one, "kl"), curve(many, "kl")
    n = min(len(a), len(b))
    gap = sum(abs(x - y) for x, y in zip(a[:n], b[:n])) / max(1, n)
    steps = [y - x for x, y in zip(a[: n - 1], a[1:n])]
    mean = sum(steps) / max(1, len(steps))
    noise = math.sqrt(sum((s - mean) ** 2 for s in steps) / max(1, len(steps) - 1) / 2)
    result = {
        "steps_compared": n,
        "world_sizes": [one["world_size"], many["world_size"]],
        "kl_first_last": [[a[0], a[n - 1]], [b[0], b[n - 1]]],
        "kl_gap": gap,
        "kl_noise": noise,
        "gap_over_noise": gap / noise if noise else None,
        "tokens_per_s": [one["tokens_per_s"], many["tokens_per_s"]],
        "speedup": many["tokens_per_s"] / one["tokens_per_s"],
        "scaling_efficiency": many["tokens_per_s"] / one["tokens_per_s"] / (many["world_size"] / one["world_size"]),
    }
    print(json.dumps(result))
    if plot_path:
        plot(one, many, n, plot_path)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("one", help="distill_report.json of the 1-GPU run")
    parser.add_argument("many", help="distill_report.json of the N-GPU run")
    parser.add_argument("--plot", help="PNG of both KL curves")
    args = parser.parse_args()
    main(args.one, args.many, args.plot)
