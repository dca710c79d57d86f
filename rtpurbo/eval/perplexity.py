"""Perplexity of a causal LM over long token windows, without materialising full logits.

An 8K x 49K-vocabulary logit matrix is 1.6 GB in fp32; the loss is computed from the
final hidden states in chunks of positions instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class PerplexityResult:
    """Token-level negative log-likelihood sums, overall and per position bucket."""

    nll_sum: float = 0.0
    tokens: int = 0
    buckets: dict[str, list[float]] = field(default_factory=dict)  # name -> [nll_sum, tokens]

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / max(1, self.tokens))

    def bucket_perplexity(self) -> dict[str, float]:
        return {name: math.exp(s / max(1, n)) for name, (s, n) in self.buckets.items() if n}


def token_nll(model: nn.Module, input_ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-token NLL (B, L-1) of ``input_ids`` (B, L) under ``model`` (fp32 log-softmax)."""
    body = getattr(model, "model", None)
    head = model.get_output_embeddings()
    if body is None or head is None:
        raise ValueError(f"{type(model).__name__} does not expose .model and an output embedding")
    hidden = body(input_ids=input_ids, use_cache=False).last_hidden_state
    losses = []
    for start in range(0, input_ids.shape[1] - 1, chunk):
        stop = min(start + chunk, input_ids.shape[1] - 1)
        logits = head(hidden[:, start:stop]).float()
        target = input_ids[:, start + 1 : stop + 1]
        losses.append(F.cross_entropy(logits.transpose(1, 2), target, reduction="none"))
    return torch.cat(losses, dim=1)


def bucket_name(lo: int, hi: int) -> str:
    def short(n: int) -> str:
        return f"{n // 1024}K" if n % 1024 == 0 and n else str(n)

    return f"{short(lo)}-{short(hi)}"


DEFAULT_EDGES = (0, 1024, 2048, 4096, 8192)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: list[list[int]],
    edges: tuple[int, ...] = DEFAULT_EDGES,
    progress: bool = True,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity over token windows, also bucketed by the predicted token's position.

    Args:
        windows: token-id lists (one forward each, batch 1).
        edges: bucket edges over predicted positions; bucket ``[a, b)``.
    """
    device = next(model.parameters()).device
    result = PerplexityResult(buckets={bucket_name(a, b): [0.0, 0] for a, b in zip(edges, edges[1:])})
    for window in tqdm(windows, desc=desc, disable=not progress):
        nll = token_nll(model, torch.tensor([window], device=device))[0].double().cpu()
        result.nll_sum += float(nll.sum())
        result.tokens += nll.numel()
        positions = torch.arange(1, len(window))
        for a, b in zip(edges, edges[1:]):
            sel = (positions >= a) & (positions < b)
            bucket = result.buckets[bucket_name(a, b)]
            bucket[0] += float(nll[sel].sum())
            bucket[1] += int(sel.sum())
    return result
