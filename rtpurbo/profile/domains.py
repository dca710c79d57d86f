"""Head plans across text domains: pooled scores and how stable the chosen KV heads are.

Profiling the same model on needle prompts built from two domains' haystacks (the built-in
training-pool text and the user's documents) gives two score grids. The plan is chosen from
their pooled scores; the stability record says how many of each domain's own choice of
retrieval KV heads the other domain's choice shares, which heads move, and the rank
correlation of the two rankings.
"""
from __future__ import annotations

from typing import Any

import torch

from ..config import HeadPlan
from .run import HeadScores, plan_from_scores
from .scores import kv_head_scores


def merge_scores(parts: list[HeadScores]) -> HeadScores:
    """Scores over all the parts' prompts: per-query-head means weighted by each part's prompt
    count, KV-head scores recomputed from them (max over each GQA group)."""
    if not parts:
        raise ValueError("no scores to merge")
    total = sum(part.num_prompts for part in parts)
    per_q = {name: sum(part.per_query_head[name] * part.num_prompts for part in parts) / max(1, total)
             for name in parts[0].per_query_head}
    layers, num_kv = next(iter(parts[0].kv.values())).shape
    group = parts[0].num_q_heads // num_kv
    kv = {name: kv_head_scores(values, group) for name, values in per_q.items()}
    first = parts[0]
    return HeadScores(kv, per_q, first.num_q_heads, first.window, first.sinks, total)


def head_name(layer: int, head: int) -> str:
    return f"L{layer}.H{head}"


def _heads(plan: HeadPlan) -> set[tuple[int, int]]:
    return {(layer, head) for layer, heads in enumerate(plan.retrieval) for head in heads}


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every KV head (0 = highest score), shape of ``scores`` (layers, kv_heads)."""
    flat = scores.flatten()
    ranks = torch.empty_like(flat, dtype=torch.long)
    ranks[flat.argsort(descending=True, stable=True)] = torch.arange(flat.numel())
    return ranks.view_as(scores)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of two score grids over all KV heads (ties broken by position)."""
    ra, rb = _ranks(a).flatten().double(), _ranks(b).flatten().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def compare_plans(a: HeadPlan, b: HeadPlan, rank_a: torch.Tensor, rank_b: torch.Tensor) -> dict[str, Any]:
    """Shared retrieval KV heads of two plans (``overlap``: shared / plan size) and the heads only one
    chose, with their rank (0 = best) under each plan's scores."""
    heads_a, heads_b = _heads(a), _heads(b)
    shared = heads_a & heads_b

    def moved(heads: set[tuple[int, int]]) -> list[dict[str, Any]]:
        return [{"head": head_name(*h), "rank_a": int(rank_a[h]), "rank_b": int(rank_b[h])} for h in sorted(heads)]

    return {"shared": len(shared), "overlap": len(shared) / max(1, len(heads_a), len(heads_b)),
            "jaccard": len(shared) / max(1, len(heads_a | heads_b)),
            "only_a": moved(heads_a - heads_b), "only_b": moved(heads_b - heads_a)}


def domain_stability(domains: dict[str, HeadScores], pooled: HeadScores, ratio: float) -> dict[str, Any]:
    """How the plan chosen on each domain alone compares with the other and with the pooled plan.

    ``domains`` holds exactly two named score sets (e.g. ``builtin`` and ``data``).
    """
    if len(domains) != 2:
        raise ValueError(f"domain_stability compares two domains, got {sorted(domains)}")
    (name_a, a), (name_b, b) = domains.items()
    plan_a, plan_b, plan = plan_from_scores(a, ratio), plan_from_scores(b, ratio), plan_from_scores(pooled, ratio)
    rank_a, rank_b = _ranks(a.ranking), _ranks(b.ranking)
    pair = compare_plans(plan_a, plan_b, rank_a, rank_b)
    return {
        "domains": {name: {"prompts": s.num_prompts,
                           "retrieval": [head_name(*h) for h in sorted(_heads(p))]}
                    for (name, s), p in zip(domains.items(), (plan_a, plan_b))},
        "retrieval_kv_heads": plan.num_retrieval(),
        "pair": {"a": name_a, "b": name_b, **pair, "rank_correlation": rank_correlation(a.ranking, b.ranking)},
        "pooled_plan_shares": {name_a: len(_heads(plan) & _heads(plan_a)), name_b: len(_heads(plan) & _heads(plan_b))},
        "pooled_retrieval": [head_name(*h) for h in sorted(_heads(plan))],
    }


def stability_summary(stability: dict[str, Any]) -> str:
    """One paragraph for the terminal."""
    pair, k = stability["pair"], stability["retrieval_kv_heads"]
    lines = [f"head plan across domains: {pair['a']} and {pair['b']} choose {pair['shared']}/{k} of the same "
             f"retrieval KV heads ({pair['overlap']:.0%}); rank correlation {pair['rank_correlation']:.3f}"]
    if pair["only_a"] or pair["only_b"]:
        def fmt(items: list[dict[str, Any]]) -> str:
            return ", ".join(f"{m['head']} (rank {m['rank_a']} vs {m['rank_b']})" for m in items) or "-"

        lines.append(f"  only {pair['a']}: {fmt(pair['only_a'])}")
        lines.append(f"  only {pair['b']}: {fmt(pair['only_b'])}")
    shares = stability["pooled_plan_shares"]
    lines.append(f"  pooled plan (used) shares {shares[pair['a']]}/{k} with {pair['a']}, "
                 f"{shares[pair['b']]}/{k} with {pair['b']}")
    return "\n".join(lines)
