"""Per-head scores measured from the frozen model's own attention.

For every (layer, query head) we accumulate, over probe prompts:

* ``copy``: on answer tokens of needle prompts, how often the head's strongest key is
  a needle token equal to the token being predicted (the head copies the answer from
  far away: a retrieval head in the sense of Wu et al.);
* ``needle_mass``: attention mass on the needle span at those answer tokens;
* ``long_range_mass``: on sampled queries, attention mass outside the local window,
  sinks excluded (what a window + sinks head would lose).

KV-head scores take the maximum over the query heads of a GQA group: a KV head must
stay full if any of its query heads needs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ops.reference import attention_probs

SCORE_NAMES = ("copy", "needle_mass", "long_range_mass")


@dataclass
class ProbeRows:
    """Which query rows of one prompt to probe, and what to compare them with.

    Args:
        answer_rows: (R,) token indices whose next token is an answer token.
        answer_targets: (R,) the answer token ids those rows predict.
        needle_mask: (L,) bool, tokens inside the needle spans.
        input_ids: (L,) the prompt's token ids.
        mass_rows: (M,) token indices sampled for long-range mass.
    """

    answer_rows: torch.Tensor
    answer_targets: torch.Tensor
    needle_mask: torch.Tensor
    input_ids: torch.Tensor
    mass_rows: torch.Tensor


@dataclass
class HeadScoreAccumulator:
    """Running sums of the three scores for a (num_layers, num_q_heads) grid."""

    num_layers: int
    num_q_heads: int
    window: int
    sinks: int
    rows: ProbeRows | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SCORE_NAMES:
            self.sums[name] = torch.zeros(self.num_layers, self.num_q_heads, dtype=torch.float64)
            self.counts[name] = 0

    def observe(self, module, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> None:
        """Observer hook for SparseAttention: q (1, Hq, L, D), k (1, Hkv, L, D), positions (1, L)."""
        rows, layer = self.rows, module.layer_idx
        if rows is None:
            return
        with torch.no_grad():
            if rows.answer_rows.numel():
                probs = self._probs(module, q, k, positions, rows.answer_rows)  # (Hq, R, L)
                top = probs.argmax(-1)
                ids, needle = rows.input_ids.to(top.device), rows.needle_mask.to(top.device)
                hit = (ids[top] == rows.answer_targets.to(top.device)) & needle[top]
                self.sums["copy"][layer] += hit.double().mean(-1).cpu()
                self.sums["needle_mass"][layer] += (probs * needle).sum(-1).double().mean(-1).cpu()
            if rows.mass_rows.numel():
                probs = self._probs(module, q, k, positions, rows.mass_rows)
                key_pos = positions[0][None, :]
                q_pos = positions[0, rows.mass_rows.to(positions.device)][:, None]
                far = (q_pos - key_pos >= self.window) & (key_pos >= self.sinks)
                self.sums["long_range_mass"][layer] += (probs * far).sum(-1).double().mean(-1).cpu()

    @staticmethod
    def _probs(module, q, k, positions, query_rows: torch.Tensor) -> torch.Tensor:
        query_rows = query_rows.to(q.device)
        probs = attention_probs(
            q[:, :, query_rows], k, positions[:, query_rows], positions, window=None, sinks=0, scale=module.scaling
        )
        return probs[0]

    def end_prompt(self) -> None:
        """Close one prompt: it counts once for each score it contributed to."""
        if self.rows is not None:
            self.counts["copy"] += int(self.rows.answer_rows.numel() > 0)
            self.counts["needle_mass"] += int(self.rows.answer_rows.numel() > 0)
            self.counts["long_range_mass"] += int(self.rows.mass_rows.numel() > 0)
        self.rows = None

    def query_head_scores(self) -> dict[str, torch.Tensor]:
        """Mean of each score per (layer, query head)."""
        return {name: self.sums[name] / max(1, self.counts[name]) for name in SCORE_NAMES}


def kv_head_scores(per_query_head: torch.Tensor, group: int) -> torch.Tensor:
    """(layers, Hq) -> (layers, Hkv): maximum over the query heads of each KV group."""
    layers, num_q = per_query_head.shape
    return per_query_head.view(layers, num_q // group, group).amax(-1)


def retrieval_score(kv_scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ranking used to pick retrieval heads: copy score, ties broken by needle mass.

    Long-range mass is reported but not ranked on: in trained models the heads with the
    most far-away mass are often diffuse early-layer heads that retrieve nothing.
    """
    return kv_scores["copy"] + 0.1 * kv_scores["needle_mass"]
