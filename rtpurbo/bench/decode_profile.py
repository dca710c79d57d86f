"""Where a decode step's time goes: ``torch.profiler`` over a few greedy steps of each variant.

A batch-1 decode step is either bound by the GPU's work or by the host (Python, dispatch and
kernel launches). The profile answers which, per variant, from one run:

* ``wall_ms_per_step``: CUDA-event (CPU: ``perf_counter``) time of a step under the profiler;
* ``device_ms_per_step``: summed kernel time of a step, and ``busy_fraction`` = device / wall
  (well below 1: the GPU waits for the host, so fewer launches or a CUDA graph is the fix);
* ``kernels_per_step`` and ``ops_per_step`` (top-level aten ops, each one or more launches);
* ``top``: the operators with the most self time per step (host and device).

The cache is filled with random K/V of ``length`` tokens (no prefill), as in the OOM search, and
two untimed steps run first (compilation, autotuning). Profiler overhead inflates the wall time a
little; the benchmark's own decode column is the clean number.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.autograd import DeviceType

TOP = 10  # operators listed per variant


def _device_us(item: Any) -> float:
    """Self device time (us) of a ``key_averages`` entry (named ``cuda`` before torch 2.4)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(item, name, None)
        if value is not None:
            return float(value)
    return 0.0


def summarize(events: list, key_averages: list, wall_ms: float, steps: int, on_gpu: bool) -> dict[str, Any]:
    """Per-step numbers from the profiler's ``events()`` and ``key_averages()`` over ``steps`` steps."""
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")
           and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    device_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1000 / steps if on_gpu else None
    wall = wall_ms / steps
    rank = (lambda a: (_device_us(a), a.self_cpu_time_total)) if on_gpu else (lambda a: a.self_cpu_time_total)
    ranked = sorted(key_averages, key=rank, reverse=True)
    return {
        "steps": steps,
        "wall_ms_per_step": wall,
        "device_ms_per_step": device_ms,
        "busy_fraction": None if device_ms is None else device_ms / wall,
        "kernels_per_step": len(kernels) / steps if on_gpu else None,
        "ops_per_step": len(ops) / steps,
        "top": [{"name": a.key, "calls_per_step": a.count / steps,
                 "self_cpu_us_per_step": a.self_cpu_time_total / steps,
                 "self_device_us_per_step": _device_us(a) / steps if on_gpu else None} for a in ranked[:TOP]],
    }


def profile(run_steps: Callable[[], float], steps: int, on_gpu: bool) -> dict[str, Any]:
    """Profile ``run_steps()`` (runs ``steps`` decode steps, returns their wall ms) and :func:`summarize` it."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        wall_ms = run_steps()
    return summarize(list(prof.events()), list(prof.key_averages()), wall_ms, steps, on_gpu)


def markdown_lines(profiles: list[dict[str, Any]]) -> list[str]:
    """Report section: one summary row per variant, then each variant's top operators."""
    def num(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = ["Decode profile (torch.profiler; random-filled cache; per step):", "",
             "| variant | L | wall ms | device busy ms | busy | kernels | aten ops |", "|---|---:|---:|---:|---:|---:|---:|"]
    for p in profiles:
        if p.get("status", "ok") != "ok":
            lines.append(f"| {p['variant']} | {p['length']} | {p['status']}: {p.get('error', '')} | | | | |")
            continue
        lines.append(f"| {p['variant']} | {p['length']} | {num(p['wall_ms_per_step'], '.2f')} | "
                     f"{num(p['device_ms_per_step'], '.2f')} | {num(p['busy_fraction'], '.0%')} | "
                     f"{num(p['kernels_per_step'], '.0f')} | {num(p['ops_per_step'], '.0f')} |")
    for p in profiles:
        if p.get("status", "ok") != "ok":
            continue
        lines += ["", f"Top operators, {p['variant']} (self time per step):", "",
                  "| operator | calls | host us | device us |", "|---|---:|---:|---:|"]
        lines += [f"| `{t['name'][:60]}` | {t['calls_per_step']:.1f} | {t['self_cpu_us_per_step']:.0f} | "
                  f"{num(t['self_device_us_per_step'], '.0f')} |" for t in p["top"]]
    return lines
