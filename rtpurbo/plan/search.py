"""Plan search: sweep retrieval ratio x window, measure each plan's training-free fidelity on
tune-split data, and pick the cheapest plan within a tolerance of dense.

    result = search_plans(model, ranking, data, SearchSettings(tolerance=0.5))

For every candidate (ratio ``r``, window ``W``) the plan keeps the top ``r`` of KV heads by the
ranking (a profile's ``head_scores.json``), every other head local with ``W + S`` slots. On the
tune data (never the eval split) it measures, against the dense model on the same samples:

* ``tf_points``: the task average (over task x length units) of the paired difference in
  teacher-forced answer-token accuracy, in points, with a stratified bootstrap 95% CI;
* ``logprob``: the mean paired difference of the answer's log-probability per token (nats);
* ``ppl_percent``: the perplexity increase on the tune windows, in percent.

Teacher forcing is one forward per sample: for a training-free split at ``top_p = 1`` that is
exactly what decoding through the head-wise cache computes. Cost per candidate comes from
:mod:`.cost` at ``cost_context``. The chosen plan is the one with the fewest KV bytes per
token whose ``tf_points >= -tolerance`` (and ``ppl_percent <= ppl_tolerance`` when given);
ties go to the higher fidelity. When no plan qualifies, the most faithful one is returned
with ``within_tolerance = False``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import HeadPlan, PlanMismatch, SparseConfig
from ..convert import apply_plan, check_local_windows, convert, is_converted
from ..data.task_data import TaskData, check_tune_split
from ..data.tasks import TaskSample
from ..eval.perplexity import token_nll
from ..families import geometry
from ..stats import task_average
from .cost import ModelShape, plan_cost


@dataclass
class SearchSettings:
    """The sweep and the rule (the flags of ``rtpurbo plan search``)."""

    ratios: list[float] = field(default_factory=lambda: [0.10, 0.125, 0.15, 0.20, 0.25])
    windows: list[int] = field(default_factory=lambda: [512, 1024, 2048])
    sinks: int = 4
    tolerance: float = 0.5  # points of task-average TF accuracy below dense
    ppl_tolerance: float | None = None  # percent of perplexity above dense
    cost_context: int | None = None  # default: the longest task length of the data
    samples: int | None = None  # per task and length (default: all the data holds)
    batch_size: int = 1


@dataclass
class Measured:
    """Per-sample teacher-forced scores keyed by (task, length, seed), and per-window [nll, tokens]."""

    samples: dict[tuple[str, int, int], tuple[float, float]]
    windows: list[tuple[float, int]]


def _left_pad(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids), each (B, L), left-padded."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def teacher_forced(model: nn.Module, samples: list[TaskSample], batch_size: int, progress: bool = False
                   ) -> dict[tuple[str, int, int], tuple[float, float]]:
    """(answer-token accuracy, mean answer log-probability) per sample, one forward each."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    out = {}
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids))  # similar lengths batch together
    for start in tqdm(range(0, len(order), batch_size), desc="teacher-forced answers", disable=not progress,
                      leave=False):
        batch = [samples[i] for i in order[start : start + batch_size]]
        ids, mask, positions = _left_pad([s.prompt_ids + s.answer_ids for s in batch], device)
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        hidden = hidden.last_hidden_state
        for b, sample in enumerate(batch):
            n = len(sample.answer_ids)
            logits = head(hidden[b, ids.shape[1] - n - 1 : ids.shape[1] - 1]).float()
            gold = torch.tensor(sample.answer_ids, device=device)
            logprob = F.log_softmax(logits, -1).gather(1, gold[:, None])[:, 0]
            accuracy = (logits.argmax(-1) == gold).float().mean()
            out[sample.task, sample.length, sample.seed] = (float(accuracy), float(logprob.mean()))
    return out


@torch.no_grad()
def measure(model: nn.Module, samples: list[TaskSample], windows: list[list[int]], batch_size: int,
            progress: bool = False) -> Measured:
    device = next(model.parameters()).device
    nll = []
    for window in windows:
        losses = token_nll(model, torch.tensor([window], device=device))[0]
        nll.append((float(losses.double().sum()), losses.numel()))
    return Measured(teacher_forced(model, samples, batch_size, progress), nll)


def compare(candidate: Measured, dense: Measured) -> dict[str, Any]:
    """Paired fidelity of a candidate against dense: TF points (task average, CI), log-prob, perplexity %."""
    units: dict[str, list[float]] = {}
    logprob = []
    for (task, length, seed), (accuracy, lp) in candidate.samples.items():
        ref_accuracy, ref_lp = dense.samples[task, length, seed]
        units.setdefault(f"{task}@{length}", []).append(100 * (accuracy - ref_accuracy))
        logprob.append(lp - ref_lp)
    average = task_average({unit: np.array(d) for unit, d in units.items()})
    out = {"tf_points": average["mean"], "tf_lo": average["lo"], "tf_hi": average["hi"],
           "tf_half_width": average["half_width"], "units": len(units), "logprob": float(np.mean(logprob)),
           "ppl_percent": None}
    if candidate.windows:
        delta = sum(a for a, _ in candidate.windows) - sum(a for a, _ in dense.windows)
        out["ppl_percent"] = 100 * float(np.expm1(delta / sum(n for _, n in dense.windows)))
    return out


def _samples(data: TaskData, per_unit: int | None) -> list[TaskSample]:
    taken: dict[tuple[str, int], int] = {}
    chosen = []
    for sample in data.samples:
        key = (sample.task, sample.length)
        if per_unit is None or taken.get(key, 0) < per_unit:
            taken[key] = taken.get(key, 0) + 1
            chosen.append(sample)
    return chosen


def search_plans(model: nn.Module, ranking: list[list[float]], data: TaskData, settings: SearchSettings,
                 progress: bool = True) -> dict[str, Any]:
    """Measure dense and every (ratio, window) candidate; return all rows and the chosen one.

    ``ranking``: (num_layers, num_kv_heads) scores, higher = keep full. The model is converted
    (all heads full) if it is not yet, and left with the dense plan.
    """
    check_tune_split(data)
    layers, kv, q, _ = geometry(model.config)
    if (len(ranking), *{len(row) for row in ranking}) != (layers, kv):  # before the dense pass, not after it
        raise PlanMismatch(f"the ranking holds {len(ranking)} layers x {sorted({len(r) for r in ranking})} KV heads; "
                           f"the model has {layers} x {kv}")
    plans = {ratio: HeadPlan.from_scores(ranking, q, ratio, criterion=f"plan search, ratio {ratio:g}")
             for ratio in sorted(settings.ratios)}
    for ratio, plan in plans.items():  # a window that convert would refuse fails here, not after the dense pass
        for window in sorted(settings.windows):
            try:
                check_local_windows(model, plan, SparseConfig(window=window, sinks=settings.sinks))
            except PlanMismatch as err:
                raise PlanMismatch(f"plan search candidate ratio {ratio:g}, W {window}: {err}") from err
    dense_plan = HeadPlan.uniform(layers, kv, q, retrieval=True)
    if not is_converted(model):
        convert(model, dense_plan, SparseConfig(window=min(settings.windows), sinks=settings.sinks, top_p=1.0))
    sparse = model.rtpurbo_sparse
    sparse.top_p, sparse.sinks = 1.0, settings.sinks
    samples = _samples(data, settings.samples)
    if not samples:
        raise ValueError("the tune data holds no task samples")
    context = settings.cost_context or max(s.length for s in samples)
    shape = ModelShape.of(model)
    apply_plan(model, dense_plan)
    dense = measure(model, samples, data.windows, settings.batch_size, progress)
    rows = []
    grid = [(r, w) for r in sorted(settings.ratios) for w in sorted(settings.windows)]
    for ratio, window in tqdm(grid, desc="plans (ratio x window)", disable=not progress):
        plan = plans[ratio]
        apply_plan(model, plan)
        sparse.window = window
        fidelity = compare(measure(model, samples, data.windows, settings.batch_size), dense)
        cost = plan_cost(shape, plan.num_retrieval(), window, settings.sinks, context, sparse.index_dim,
                         retrieval_per_layer=[len(heads) for heads in plan.retrieval])
        rows.append({"ratio": ratio, "window": window, "retrieval_kv_heads": plan.num_retrieval(), **fidelity,
                     **cost, "plan": plan.to_dict()})
    apply_plan(model, dense_plan)
    chosen, within = choose(rows, settings.tolerance, settings.ppl_tolerance)
    return {"settings": asdict(settings), "cost_context": context, "samples": len(samples),
            "windows": len(data.windows), "rows": rows, "chosen": chosen, "within_tolerance": within}


def within(row: dict[str, Any], tolerance: float, ppl_tolerance: float | None) -> bool:
    ppl_ok = ppl_tolerance is None or row["ppl_percent"] is None or row["ppl_percent"] <= ppl_tolerance
    return row["tf_points"] >= -tolerance and ppl_ok


def choose(rows: list[dict[str, Any]], tolerance: float, ppl_tolerance: float | None = None) -> tuple[int, bool]:
    """(index of the chosen row, whether it is within tolerance): fewest KV bytes within tolerance, ties
    to the higher fidelity; else the most faithful row."""
    ok = [i for i, row in enumerate(rows) if within(row, tolerance, ppl_tolerance)]
    if ok:
        return min(ok, key=lambda i: (rows[i]["kv_bytes_per_token"], -rows[i]["tf_points"])), True
    return max(range(len(rows)), key=lambda i: (rows[i]["tf_points"], -rows[i]["kv_bytes_per_token"])), False


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Indices of the rows no other row beats on both KV bytes (fewer) and TF points (higher), by KV bytes."""
    front = [i for i, a in enumerate(rows) if not any(
        b["kv_bytes_per_token"] <= a["kv_bytes_per_token"] and b["tf_points"] >= a["tf_points"]
        and (b["kv_bytes_per_token"], b["tf_points"]) != (a["kv_bytes_per_token"], a["tf_points"]) for b in rows)]
    return sorted(front, key=lambda i: rows[i]["kv_bytes_per_token"])
