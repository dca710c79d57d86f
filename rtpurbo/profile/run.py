"""Profile every KV head of a model on needle prompts and pick the retrieval heads.

    scores = profile_heads(model, samples, window=1024, sinks=4)
    plan = plan_from_scores(scores, ratio=0.15)

The model runs exactly as the base model (all heads full attention) while an
observer on each attention module accumulates :mod:`.scores`. The other criterion,
knockout (:mod:`.knockout`), measures what windowing each KV head costs instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..config import HeadPlan, SparseConfig
from ..convert import apply_plan, convert, is_converted, unconvert
from ..families import attention_modules, geometry
from .scores import SCORE_NAMES, HeadScoreAccumulator, ProbeRows, kv_head_scores, retrieval_score


@dataclass
class HeadScores:
    """Profiling result. Each tensor is (num_layers, num_kv_heads) unless named per_query_head."""

    kv: dict[str, torch.Tensor]
    per_query_head: dict[str, torch.Tensor]
    num_q_heads: int
    window: int
    sinks: int
    num_prompts: int
    criterion: str = "copy"

    @property
    def ranking(self) -> torch.Tensor:
        return self.kv["knockout"] if self.criterion == "knockout" else retrieval_score(self.kv)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "window": self.window,
            "sinks": self.sinks,
            "num_prompts": self.num_prompts,
            "num_q_heads": self.num_q_heads,
            "ranking": self.ranking.tolist(),
            "kv_head_scores": {k: v.tolist() for k, v in self.kv.items()},
            "query_head_scores": {k: v.tolist() for k, v in self.per_query_head.items()},
        }


def probe_rows(sample: Any, window: int, sinks: int, mass_rows: int, generator: torch.Generator) -> ProbeRows:
    """Rows to probe in one needle sample (see :class:`rtpurbo.data.needles.NeedleSample`)."""
    ids = torch.tensor(sample.input_ids, dtype=torch.long)
    length = ids.numel()
    answer_rows = torch.arange(sample.answer_start - 1, length - 1)
    needle = torch.zeros(length, dtype=torch.bool)
    for start, stop in sample.needle_spans:
        needle[start:stop] = True
    first = min(length, window + sinks)
    candidates = torch.arange(first, length)
    if candidates.numel() > mass_rows:
        candidates = candidates[torch.randperm(candidates.numel(), generator=generator)[:mass_rows]].sort().values
    return ProbeRows(answer_rows, ids[answer_rows + 1], needle, ids, candidates)


@torch.no_grad()
def profile_heads(
    model: nn.Module,
    samples: Iterable[Any],
    window: int,
    sinks: int,
    mass_rows: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> HeadScores:
    """Run the model over needle samples and score every head.

    The model runs with an all-retrieval plan (identical to the base model); afterwards it
    is returned to the state it came in (base model, or converted with its plan).
    """
    num_layers, num_kv, num_q, _ = geometry(model.config)
    previous_plan = model.rtpurbo_plan if is_converted(model) else None
    full = HeadPlan.uniform(num_layers, num_kv, num_q, retrieval=True)
    if previous_plan is None:
        convert(model, full, SparseConfig(window=window, sinks=sinks))
    else:
        apply_plan(model, full)
    acc = HeadScoreAccumulator(num_layers, num_q, window, sinks)
    modules = attention_modules(model)
    for module in modules:
        module.observer = acc.observe
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    samples = list(samples)
    try:
        for sample in tqdm(samples, desc="profiling heads", disable=not progress):
            acc.rows = probe_rows(sample, window, sinks, mass_rows, generator)
            model(torch.tensor([sample.input_ids], device=device), use_cache=False, logits_to_keep=1)
            acc.end_prompt()
    finally:
        for module in modules:
            module.observer = None
        if previous_plan is None:
            unconvert(model)
        else:
            apply_plan(model, previous_plan)
    per_q = acc.query_head_scores()
    group = num_q // num_kv
    kv = {name: kv_head_scores(per_q[name], group) for name in SCORE_NAMES}
    return HeadScores(kv, per_q, num_q, window, sinks, len(samples))


CRITERIA = {
    "copy": "copy score on needle prompts (+0.1 x needle mass), max over each KV group",
    "knockout": "knockout: share of the dense model's KL on text and task answers when the head alone is local",
}


def plan_from_scores(scores: HeadScores, ratio: float, num_q_heads: int | None = None) -> HeadPlan:
    """Top ``ratio`` of KV heads model-wide by the criterion's ranking."""
    return HeadPlan.from_scores(scores.ranking.tolist(), num_q_heads or scores.num_q_heads, ratio,
                                criterion=CRITERIA[scores.criterion])
