"""Compare two stage-2 runs (1 GPU vs N GPUs, same global batch and data order): loss curves and throughput.

    python3 scripts/compare_scaling.py ONE_GPU/distill_report.json N_GPU/distill_report.json

Prints one JSON object. ``kl_gap`` is the mean |KL_1 - KL_N| over the steps both ran;
``kl_noise`` the step-to-step noise of the 1-GPU curve (std of successive differences / sqrt 2),
so ``gap_over_noise`` well below 1 means the curves agree within noise.
"""
from __future__ import annotations

import json
import math
import sys


def curve(report: dict, key: str) -> list[float]:
    return [step[key] for step in report["history"]]


def main(one_path: str, many_path: str) -> dict:
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
    return result


if __name__ == "__main__":
    main(*sys.argv[1:3])
