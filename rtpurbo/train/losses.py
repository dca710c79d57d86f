"""Losses and metrics of the two training stages, all in fp32.

* :func:`indexer_kl` — stage 1: ``KL(target || softmax(indexer scores))`` over the causal keys
  of each sampled query, target = the KV group's true attention (mean over its query heads).
* :func:`topp_recall` — share of the target mass that a top-p selection keeps.
* :func:`distill_kl` — stage 2: forward ``KL(teacher || student)`` of next-token distributions,
  in chunks of positions, each chunk checkpointed so that only ``chunk x vocab`` logits
  exist at a time (8K x 49K fp32 logits would be 1.6 GB per sequence, and their graph more).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..ops import reference


def sample_query_positions(length: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct sorted positions in ``[1, length)``, drawn with probability proportional to
    the position (later queries see more keys, and long-range retrieval lives there). (count,) int64."""
    count = min(count, length - 1)
    weights = torch.arange(length, dtype=torch.float64)
    return torch.multinomial(weights, count, replacement=False, generator=generator).sort().values


def group_attention(
    q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, scale: float
) -> torch.Tensor:
    """True causal attention averaged over each KV head's query heads.

    Args:
        q: (B, Hkv*G, n, D) post-RoPE queries at the sampled positions; k: (B, Hkv, L, D) post-RoPE keys.
        q_pos: (B, n); k_pos: (B, L).
    Returns: (B, Hkv, n, L) fp32, rows sum to 1 over the visible keys.
    """
    probs = reference.attention_probs(q, k, q_pos, k_pos, scale=scale)
    batch, heads, n, length = probs.shape
    return probs.view(batch, k.shape[1], heads // k.shape[1], n, length).mean(2)


def indexer_kl(target: torch.Tensor, scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Per-query ``KL(target || softmax(scores))`` over visible keys.

    Args:
        target: (B, H, n, L) probabilities, zero outside ``visible``.
        scores: (B, H, n, L) indexer logits.
        visible: (B, 1 or H, n, L) bool, the keys each query may select.
    Returns: (B, H, n) fp32.
    """
    log_q = torch.log_softmax(scores.float().masked_fill(~visible, float("-inf")), dim=-1)
    cross = -(target * log_q.masked_fill(~visible, 0.0)).sum(-1)
    entropy = -torch.special.xlogy(target, target).sum(-1)
    return cross - entropy


def topp_recall(target: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target mass inside the selected keys, and the selection size.

    Args:
        target: (B, H, n, L) true attention; selected: (B, H, n, L) bool (``ops.select_topp``).
    Returns: recall (B, H, n) and budget (B, H, n), fp32.
    """
    return (target * selected).sum(-1), selected.sum(-1).float()


def distill_kl(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    chunk: int = 1024,
) -> torch.Tensor:
    """Mean forward ``KL(teacher || student)`` over positions ``0 .. L-2`` (those with a next-token label).

    Args:
        student_hidden, teacher_hidden: (B, L, hidden) final hidden states (teacher: no grad).
        student_head, teacher_head: hidden -> logits (B, c, V), e.g. the LM heads.
        chunk: positions per logits chunk.
    Returns: () fp32.
    """
    positions = student_hidden.shape[1] - 1
    total = student_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, positions, chunk):
        stop = min(start + chunk, positions)
        total = total + checkpoint(
            _chunk_kl, student_hidden[:, start:stop], teacher_hidden[:, start:stop], student_head, teacher_head,
            use_reentrant=False,
        )
    return total / (positions * student_hidden.shape[0])


def _chunk_kl(
    student: torch.Tensor, teacher: torch.Tensor, student_head: Callable, teacher_head: Callable
) -> torch.Tensor:
    """Summed KL of one chunk of positions: (B, c, hidden) x 2 -> ()."""
    log_s = torch.log_softmax(student_head(student).float(), dim=-1)
    with torch.no_grad():
        log_t = torch.log_softmax(teacher_head(teacher).float(), dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum")
