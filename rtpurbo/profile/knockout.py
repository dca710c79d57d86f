"""Knockout scores: what windowing one KV head costs the dense model.

For every KV head (layer ``l``, head ``h``) the model runs with that head alone local
(window ``W`` + ``S`` sinks: the conversion's own semantics) and every other head full, and
its next-token distributions are compared with the dense model's:

* ``text_kl``: mean KL(dense || knocked out) per position over long text, at positions
  ``>= W + S`` (a local head sees everything before that, so earlier positions cannot change);
* ``answer_kl``: the same at the answer tokens of task prompts (needles, aggregation,
  documents), each prompt weighted equally;
* ``answer_nll``: the mean increase of the gold answers' negative log-likelihood (reported).

The ranking (``knockout``) adds each head's share of the total damage on text and on prompts::

    knockout = text_weight * text_kl / sum(text_kl) + (1 - text_weight) * answer_kl / sum(answer_kl)

so a head that is cheap to window on both scores low. Cost: one forward per text batch and
per prompt for every KV head (90 for SmolLM2), plus one dense pass; the dense final hidden
states are kept (not logits) and logits are made in chunks of positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import HeadPlan, SparseConfig
from ..convert import apply_plan, convert, is_converted, unconvert
from ..data.task_data import TaskData
from ..families import geometry
from .run import HeadScores

LOGITS_CHUNK = 1024


@dataclass
class KnockoutInputs:
    """texts: long token windows (equal lengths are batched); prompts: (prompt ids, answer ids) pairs."""

    texts: list[list[int]]
    prompts: list[tuple[list[int], list[int]]]


@dataclass
class _Target:
    """One forward's input ids (B, L), the positions it is scored at (P,), and gold next tokens (B, P) or None."""

    ids: torch.Tensor
    positions: torch.Tensor
    gold: torch.Tensor | None


def _targets(inputs: KnockoutInputs, window: int, sinks: int, device: torch.device) -> tuple[list, list]:
    """(text targets batched by length, one prompt target per prompt)."""
    by_length: dict[int, list[list[int]]] = {}
    for text in inputs.texts:
        if len(text) <= window + sinks:
            raise ValueError(f"a knockout text of {len(text)} tokens is no longer than W + S = {window + sinks}: "
                             "windowing cannot change it; use longer texts or a smaller window")
        by_length.setdefault(len(text), []).append(text)
    texts = [_Target(torch.tensor(group, device=device), torch.arange(window + sinks, length, device=device), None)
             for length, group in sorted(by_length.items())]
    prompts = []
    for prompt, answer in inputs.prompts:
        ids = torch.tensor([prompt + answer], device=device)
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1, device=device)
        prompts.append(_Target(ids, positions, torch.tensor([answer], device=device)))
    return texts, prompts


def _hidden(model: nn.Module, target: _Target) -> torch.Tensor:
    """Final hidden states (B, P, hidden) at the target's positions."""
    out = model.model(input_ids=target.ids, use_cache=False).last_hidden_state
    return out[:, target.positions]


def _compare(head: nn.Module, dense: torch.Tensor, knocked: torch.Tensor, gold: torch.Tensor | None
             ) -> tuple[float, float]:
    """(mean KL(dense || knocked) per position, mean NLL increase of ``gold``) over hidden (B, P, hidden)."""
    kl_sum, nll_sum, count = 0.0, 0.0, 0
    for start in range(0, dense.shape[1], LOGITS_CHUNK):
        p = F.log_softmax(head(dense[:, start : start + LOGITS_CHUNK]).float(), -1)
        q = F.log_softmax(head(knocked[:, start : start + LOGITS_CHUNK]).float(), -1)
        kl_sum += float((p.exp() * (p - q)).sum())
        count += p.shape[0] * p.shape[1]
        if gold is not None:
            g = gold[:, start : start + LOGITS_CHUNK, None]
            nll_sum += float((p.gather(-1, g) - q.gather(-1, g)).sum())
    return kl_sum / count, nll_sum / count


@torch.no_grad()
def knockout_scores(model: nn.Module, inputs: KnockoutInputs, window: int, sinks: int, text_weight: float = 0.5,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Scores (num_layers, num_kv_heads) ``knockout``, ``text_kl``, ``answer_kl``, ``answer_nll``.

    The model is returned in the state it came in (base model, or converted with its plan).
    """
    if not 0 <= text_weight <= 1:
        raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
    if not inputs.texts and text_weight > 0 or not inputs.prompts and text_weight < 1:
        raise ValueError("knockout needs texts (text_weight > 0) and prompts (text_weight < 1)")
    num_layers, num_kv, num_q, _ = geometry(model.config)
    device = next(model.parameters()).device
    previous = model.rtpurbo_plan if is_converted(model) else None
    full = HeadPlan.uniform(num_layers, num_kv, num_q, retrieval=True)
    if previous is None:
        convert(model, full, SparseConfig(window=window, sinks=sinks))
    else:
        previous_window, previous_sinks = model.rtpurbo_sparse.window, model.rtpurbo_sparse.sinks
        model.rtpurbo_sparse.window, model.rtpurbo_sparse.sinks = window, sinks
        apply_plan(model, full)
    texts, prompts = _targets(inputs, window, sinks, device)
    head = model.get_output_embeddings()
    try:
        dense = [_hidden(model, t) for t in texts + prompts]
        sums = {name: torch.zeros(num_layers, num_kv, dtype=torch.float64) for name in ("text_kl", "answer_kl",
                                                                                          "answer_nll")}
        heads = [(layer, h) for layer in range(num_layers) for h in range(num_kv)]
        for layer, h in tqdm(heads, desc="knockout (one KV head local at a time)", disable=not progress):
            retrieval = [list(range(num_kv)) for _ in range(num_layers)]
            retrieval[layer].remove(h)
            apply_plan(model, HeadPlan(num_layers, num_kv, num_q, retrieval))
            for i, target in enumerate(texts + prompts):
                kl, nll = _compare(head, dense[i], _hidden(model, target), target.gold)
                if i < len(texts):
                    sums["text_kl"][layer, h] += kl * target.ids.shape[0]
                else:
                    sums["answer_kl"][layer, h] += kl
                    sums["answer_nll"][layer, h] += nll
    finally:
        if previous is None:
            unconvert(model)
        else:
            model.rtpurbo_sparse.window, model.rtpurbo_sparse.sinks = previous_window, previous_sinks
            apply_plan(model, previous)
    text_kl = sums["text_kl"] / max(1, len(inputs.texts))
    answer_kl = sums["answer_kl"] / max(1, len(inputs.prompts))
    answer_nll = sums["answer_nll"] / max(1, len(inputs.prompts))
    score = text_weight * _share(text_kl) + (1 - text_weight) * _share(answer_kl)
    return {"knockout": score, "text_kl": text_kl, "answer_kl": answer_kl, "answer_nll": answer_nll}


def _share(values: torch.Tensor) -> torch.Tensor:
    """Each head's share of the total (zeros when nothing moved)."""
    total = values.clamp(min=0).sum()
    return values.clamp(min=0) / total if total > 0 else torch.zeros_like(values)


def inputs_from_task_data(data: TaskData, samples_per_unit: int | None = None, windows: int | None = None
                          ) -> KnockoutInputs:
    """Knockout inputs from task data: its perplexity windows as texts and the first
    ``samples_per_unit`` samples of every (task, length) as prompts."""
    taken: dict[tuple[str, int], int] = {}
    prompts = []
    for sample in data.samples:
        key = (sample.task, sample.length)
        if samples_per_unit is None or taken.get(key, 0) < samples_per_unit:
            taken[key] = taken.get(key, 0) + 1
            prompts.append((sample.prompt_ids, sample.answer_ids))
    return KnockoutInputs(list(data.windows[:windows]), prompts)


def knockout_profile(model: nn.Module, inputs: KnockoutInputs, window: int, sinks: int, text_weight: float = 0.5,
                     progress: bool = True) -> HeadScores:
    """:func:`knockout_scores` as profiling scores (ranked on ``knockout``)."""
    kv = knockout_scores(model, inputs, window, sinks, text_weight, progress)
    return HeadScores(kv, {}, geometry(model.config)[2], window, sinks, len(inputs.texts) + len(inputs.prompts),
                      criterion="knockout")
