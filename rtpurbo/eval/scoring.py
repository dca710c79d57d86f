"""Scores of task samples: generated-answer match (the task's rule, :mod:`rtpurbo.data.tasks.matching`),
teacher-forced answer accuracy, 95% CIs.

``score_batch`` runs a batch of samples through the head-wise cache exactly as generation
would: one prefill of each prompt, then decode steps. The cache's rows are duplicated
after prefill so one decode loop serves two branches at once:

* rows ``[0, B)`` are teacher-forced: they are fed the gold answer, and record whether the
  model's argmax hits each answer token and its log-probability (a small model that
  fumbles the answer format still shows whether it found the needle);
* rows ``[B, 2B)`` decode greedily until a stop token, a line break after some text, or
  ``max_new_tokens``; the text is compared with the gold answer.

Both branches decode one token at a time, so retrieval heads with an indexer and
``top_p < 1`` attend over their top-p selection for every answer token, as at deployment.

Decode modes (``decode``): ``eager`` runs each step through ``model(...)`` with a growing
attention mask; ``graph`` switches the cache to static decode after prefill and replays each
step from a CUDA graph (:class:`rtpurbo.decode_graph.GraphedDecoder`, one capture per batch; on
the CPU its eager stand-in), which removes the per-step Python and launch cost that dominates
an eval of a small model on a GPU. Both compute the same attention; they differ by float
rounding only (the static cache attends over a fixed number of slots, the empty ones masked).

Confidence intervals: Wilson score interval for 0/1 scores (exact match), percentile
bootstrap (2000 resamples, fixed seed) for means of graded scores and for perplexity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .._compat import cache_kwarg
from ..cache import HeadwiseCache
from ..data.tasks import TaskSample
from ..data.tasks.matching import exact_match, partial_match
from ..decode_graph import GraphedDecoder
from ..prefill import prefill
from ..stats import N_BOOTSTRAP

DECODE_MODES = ("eager", "graph")

Z95 = 1.959963984540054


# --- confidence intervals ---------------------------------------------------------------------------
def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def bootstrap(columns: Sequence[Sequence[float]], statistic: Callable[..., float], seed: int = 0,
              n_boot: int = N_BOOTSTRAP) -> tuple[float, float]:
    """Percentile 95% interval of ``statistic(*columns)`` over resampled rows (columns share rows)."""
    data = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(data[0])
    if n < 2:  # one row has no spread to resample: no interval rather than a false zero width
        return (math.nan, math.nan)
    picks = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    stats = np.array([statistic(*(c[p] for c in data)) for p in picks])
    return (float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5)))


def summarize(values: Sequence[float], binary: bool) -> dict[str, Any]:
    """Mean with its 95% interval: Wilson for 0/1 values, bootstrap otherwise."""
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    lo, hi = wilson(sum(values), n) if binary else bootstrap([values], np.mean)
    return {"mean": mean, "lo": lo, "hi": hi, "n": n, "ci": "wilson" if binary else "bootstrap"}


# --- running the model ------------------------------------------------------------------------------
@dataclass
class SampleScore:
    """Scores of one sample; ``tf_logprob`` is the mean log-probability per answer token."""

    exact: float
    partial: float
    tf_accuracy: float
    tf_logprob: float
    prediction: str


def _left_pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def decode_step(model: nn.Module, cache: HeadwiseCache, tokens: torch.Tensor, mask: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
    """One token per row (R,) at ``positions`` (R,) -> fp32 logits (R, V)."""
    out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
                use_cache=True, logits_to_keep=1, **{cache_kwarg(): cache})
    return out.logits[:, -1].float()


class _Branches:
    """Per-row bookkeeping of the teacher-forced rows and the greedy rows."""

    def __init__(self, samples: list[TaskSample], tokenizer: Any, stop_ids: set[int], device: torch.device):
        self.samples, self.tokenizer, self.stop_ids = samples, tokenizer, stop_ids
        width = max(len(s.answer_ids) for s in samples)
        self.gold = torch.tensor([s.answer_ids + [s.answer_ids[-1]] * (width - len(s.answer_ids)) for s in samples],
                                 device=device)
        self.lengths = torch.tensor([len(s.answer_ids) for s in samples], device=device)
        self.logprob = torch.zeros(len(samples), dtype=torch.float64, device=device)
        self.correct = torch.zeros(len(samples), dtype=torch.long, device=device)
        self.generated: list[list[int]] = [[] for _ in samples]
        self.done = [False] * len(samples)

    @property
    def steps(self) -> int:
        return max(max(s.max_new_tokens for s in self.samples), int(self.gold.shape[1]))

    def advance(self, t: int, logits: torch.Tensor) -> torch.Tensor:
        """Score step ``t`` from logits (2B, V); return the next tokens (2B,)."""
        batch = len(self.samples)
        forced, free = logits[:batch], logits[batch:]
        step = min(t, self.gold.shape[1] - 1)
        gold = self.gold[:, step]
        live = t < self.lengths
        self.logprob += torch.where(live, torch.log_softmax(forced, -1).gather(1, gold[:, None])[:, 0], 0.0).double()
        self.correct += (live & (forced.argmax(-1) == gold)).long()
        greedy = free.argmax(-1)
        for b, token in enumerate(greedy.tolist()):
            self._append(b, token)
        return torch.cat([gold, greedy])

    def _append(self, b: int, token: int) -> None:
        if self.done[b]:
            return
        if token in self.stop_ids:
            self.done[b] = True
            return
        self.generated[b].append(token)
        text = self.tokenizer.decode(self.generated[b], skip_special_tokens=True).lstrip()
        self.done[b] = "\n" in text or len(self.generated[b]) >= self.samples[b].max_new_tokens

    def finished(self, t: int) -> bool:
        return all(self.done) and t + 1 >= int(self.lengths.max())

    def scores(self) -> list[SampleScore]:
        out = []
        for b, sample in enumerate(self.samples):
            text = self.tokenizer.decode(self.generated[b], skip_special_tokens=True)
            n = len(sample.answer_ids)
            out.append(SampleScore(float(exact_match(text, sample)), partial_match(text, sample),
                                   float(self.correct[b]) / n, float(self.logprob[b]) / n, text))
        return out


@torch.no_grad()
def score_batch(model: nn.Module, tokenizer: Any, samples: list[TaskSample], stop_ids: Sequence[int],
                prefill_chunk: int | None = None, decode: str = "eager") -> tuple[list[SampleScore], dict[str, float]]:
    """Score samples (one batch, left-padded) with a converted model.

    ``decode``: ``eager`` or ``graph`` (module docstring). Returns the scores and the cache's
    top-p selection summary (empty selection for rows without an indexer or with ``top_p = 1``).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = _left_pad([s.prompt_ids for s in samples], pad, device)
    cache = HeadwiseCache(model)
    prefill(model, cache, ids[:, :-1], mask[:, :-1], prefill_chunk or ids.shape[1])
    cache.repeat_batch(2)
    mask = torch.cat([mask, mask])
    positions = mask.sum(-1) - 1  # position of each row's last prompt token
    tokens = torch.cat([ids[:, -1], ids[:, -1]])
    branches = _Branches(samples, tokenizer, set(stop_ids), device)
    decoder = None
    if decode == "graph":
        cache.static_decode(ids.shape[1] - 1 + branches.steps)  # one retrieval slot per fed token
        decoder = GraphedDecoder(model, cache)
    for t in range(branches.steps):
        if decoder is not None:
            logits = decoder.step(tokens[:, None], (positions + t)[:, None])[:, -1].float()
        else:
            logits = decode_step(model, cache, tokens, mask, positions + t)
        tokens = branches.advance(t, logits)
        if branches.finished(t):
            break
        if decoder is None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return branches.scores(), cache.stats.summary()
