"""Statistics of paired scores: percentile bootstrap intervals of per-task means and their average.

``task_average(diffs)``: ``diffs`` maps each task to its per-sample paired differences
(row minus reference, any unit). The task average is the unweighted mean of the per-task
means; its 95% interval resamples the samples of every task independently (a stratified
percentile bootstrap, 2000 resamples, fixed seed: the tasks stay fixed).
``samples_for_target`` is the number of samples per task at which the half-width would
reach ``target``: ``n * (half_width / target) ** 2`` (the half-width falls as ``1 / sqrt(n)``),
rounded up to a multiple of 10. A task with a single sample has no spread to resample: the
interval is then undefined (NaN) rather than a false zero width. Pairs that are all equal give a zero-width
interval, which reports say as such ("all pairs equal") and project no sample count from.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

N_BOOTSTRAP = 2000
DEFAULT_TARGET = 0.5  # points


def interval(stats: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def bootstrap_means(diffs: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot,) means of ``diffs`` (n,) resampled with replacement."""
    return diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)


def task_average(diffs: dict[str, np.ndarray], target: float = DEFAULT_TARGET, seed: int = 0,
                 n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Mean over tasks of the per-task mean differences, with its stratified bootstrap interval.

    diffs: task -> (n_task,) paired differences in points.
    """
    rng = np.random.default_rng(seed)
    per_task = {task: bootstrap_means(d, rng, n_boot) for task, d in diffs.items()}
    average = np.mean(list(per_task.values()), axis=0)
    mean = float(np.mean([d.mean() for d in diffs.values()]))
    n = min(len(d) for d in diffs.values())
    lo, hi = interval(average) if n > 1 else (math.nan, math.nan)
    half = (hi - lo) / 2
    needed = 10 * math.ceil(n * (half / target) ** 2 / 10) if half > 0 else None  # identical pairs project nothing
    tasks = {}
    for task, d in diffs.items():
        t_lo, t_hi = interval(per_task[task]) if len(d) > 1 else (math.nan, math.nan)
        tasks[task] = {"mean": float(d.mean()), "lo": t_lo, "hi": t_hi, "n": len(d)}
    return {"mean": mean, "lo": lo, "hi": hi, "half_width": half, "tasks_averaged": len(diffs),
            "samples_per_task": n, "target": target, "samples_for_target": needed, "tasks": tasks}
