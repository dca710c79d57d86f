"""Stage 1: train each retrieval layer's low-rank indexer to predict its heads' attention.

Recipe (base model frozen; only ``indexer.wq`` / ``indexer.wk`` train):

1. Hold out the last ``eval_sequences`` rows of the shards; measure top-p recall per head.
2. Each step: a no-grad forward of the converted model (retrieval heads dense, exactly the
   base model's attention) over ``batch_size`` sequences; at ``queries`` sampled positions per
   sequence (biased to later positions), every retrieval KV head contributes
   ``KL(group attention || softmax(indexer scores))`` over all earlier keys
   (:mod:`.indexer_targets`); the loss is its mean. AdamW, cosine schedule with warm-up.
3. Measure recall again and report both, per head, with the mean selected budget.

Recall = the share of the true attention mass inside the indexer's top-p selection (with the
model's SparseConfig: top_p, min/max tokens, sinks, recent), i.e. what decode would keep.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from ..convert import prefill_mode
from .data import TokenShards, split_held_out
from .indexer_targets import IndexerCapture, LayerSignal
from .losses import sample_query_positions
from .loop import LoopSettings, Runtime, run_loop, step_generator


@dataclass
class IndexerSettings:
    """Stage-1 settings: the loop's plus query sampling and held-out evaluation."""

    loop: LoopSettings = field(default_factory=lambda: LoopSettings(steps=600, batch_size=2, lr=1e-3))
    queries: int = 256  # sampled query positions per sequence
    eval_sequences: int = 2  # held-out rows (the last of the shards) for recall before/after
    eval_queries: int = 512


class IndexerObjective(nn.Module):
    """Frozen forward + captured indexer KL: input_ids (b, L), query_index (n,) -> dict of scalars."""

    def __init__(self, model: nn.Module, capture: IndexerCapture) -> None:
        super().__init__()
        self.model = model
        self.capture = capture

    def forward(self, input_ids: torch.Tensor, query_index: torch.Tensor) -> dict[str, torch.Tensor]:
        self.capture.begin(query_index)
        with torch.no_grad():
            self.model.model(input_ids=input_ids, use_cache=False)
        signals = self.capture.finish()
        return {
            "loss": torch.cat([s.kl.flatten() for s in signals]).mean(),
            "recall": torch.cat([s.recall.flatten() for s in signals]).mean(),
            "budget": torch.cat([s.budget.flatten() for s in signals]).mean(),
        }


def indexer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything, then make the indexers trainable; returns their parameters."""
    model.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if ".indexer." in name]
    for p in params:
        p.requires_grad_(True)
    return params


def indexer_digest(model: nn.Module) -> str:
    """sha256 (16 hex digits) of the indexers' values: what stage 1 hands over to stage 2."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if ".indexer." in name:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def with_own_prefill(model: nn.Module, on_checkpoint: Callable[[int], None] | None
                     ) -> Callable[[int], None] | None:
    """``on_checkpoint`` run with the model's prefill settings as they are now, so that a snapshot saved while a
    stage runs the model another way (:func:`rtpurbo.convert.prefill_mode`) records the model's own."""
    if on_checkpoint is None:
        return None
    own = model.rtpurbo_sparse.retrieval_prefill, model.rtpurbo_sparse.prefill_scoring

    def snapshot(steps_done: int) -> None:
        with prefill_mode(model, *own):
            on_checkpoint(steps_done)

    return snapshot


def train_indexer(model: nn.Module, shards: TokenShards, settings: IndexerSettings, runtime: Runtime,
                  on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run stage 1 on a converted ``model`` in place. Returns the report (recall before/after, history)."""
    loop = settings.loop
    train_rows, held_out = split_held_out(shards, settings.eval_sequences, loop.seq_len)
    model.to(runtime.device)
    params = indexer_parameters(model)
    model.eval()  # nothing trains but the indexers: no checkpointing, no dropout
    on_checkpoint = with_own_prefill(model, on_checkpoint)
    # the targets are the retrieval heads' own attention: dense, whatever prefill the model is set to run
    with prefill_mode(model, "dense"), IndexerCapture(model) as capture:
        before = evaluate_indexer(model, capture, held_out, settings, runtime)
        objective = IndexerObjective(model, capture)

        def step_fn(wrapped: nn.Module, step: int, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
            generator = step_generator(loop.seed, step)
            query_index = sample_query_positions(input_ids.shape[1], settings.queries, generator)
            return wrapped(input_ids, query_index.to(runtime.device))

        identity = {"stage": "indexer", "queries": settings.queries, "eval_sequences": settings.eval_sequences}
        result = run_loop(runtime, model, objective, [{"params": params}], train_rows, loop, identity, step_fn,
                          on_checkpoint)
        after = evaluate_indexer(model, capture, held_out, settings, runtime)
    return {
        "stage": "indexer",
        "data": str(shards.path),
        "settings": {**asdict(settings), "loop": {**asdict(loop), "checkpoint_dir": str(loop.checkpoint_dir)}},
        "steps_done": result.steps_done,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
        "tokens_per_s": result.tokens_per_second(),
        "before": before,
        "after": after,
        "history": result.history,
    }


@torch.no_grad()
def evaluate_indexer(
    model: nn.Module, capture: IndexerCapture, sequences: torch.Tensor, settings: IndexerSettings, runtime: Runtime
) -> dict[str, Any]:
    """Per retrieval head: mean KL, top-p recall and selected budget over held-out ``sequences`` (N, L)."""
    per_head: dict[str, list[torch.Tensor]] = {}
    for row in range(len(sequences)):
        ids = sequences[row : row + 1].to(runtime.device)
        positions = sample_query_positions(ids.shape[1], settings.eval_queries, torch.Generator().manual_seed(row))
        capture.begin(positions, with_grad=False)
        with runtime.accelerator.autocast():
            model.model(input_ids=ids, use_cache=False)
        for signal in capture.finish():
            _accumulate(per_head, signal)
    heads = {
        name: {key: float(torch.cat(parts).mean()) for key, parts in zip(("kl", "recall", "budget"), zip(*values))}
        for name, values in per_head.items()
    }
    return {
        "heads": heads,
        "mean_kl": _mean(heads, "kl"),
        "mean_recall": _mean(heads, "recall"),
        "mean_budget": _mean(heads, "budget"),
        "context": int(sequences.shape[1]),
    }


def _accumulate(per_head: dict[str, list], signal: LayerSignal) -> None:
    for i, head in enumerate(signal.heads):
        per_head.setdefault(f"L{signal.layer}.H{head}", []).append(
            (signal.kl[:, i].flatten(), signal.recall[:, i].flatten(), signal.budget[:, i].flatten())
        )


def _mean(heads: dict[str, dict[str, float]], key: str) -> float:
    return sum(h[key] for h in heads.values()) / max(1, len(heads))
