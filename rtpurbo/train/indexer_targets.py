"""Capture indexer training signal during an ordinary forward of the converted model.

For every attention layer with retrieval heads, while a capture is active:

1. a forward pre-hook keeps the layer's input hidden states and ``(cos, sin)``;
2. the module's ``observer`` (post-RoPE q, k and positions) computes, at the sampled query
   positions, the target = the KV group's true attention over all earlier keys, and the
   indexer's scores from the pre-RoPE q/k (``module.project`` on the kept hidden states);
3. :meth:`IndexerCapture.finish` (after the forward, outside any gradient-checkpointed layer)
   turns them into the per-query KL, with gradient into the indexer's ``wq``/``wk`` only
   (every input is detached), and the top-p recall / budget (no gradient).

Everything is computed in fp32 with autocast off. Captures fire only between ``begin`` and
``finish``, so recomputing a checkpointed layer during backward adds nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..families import attention_modules
from ..modules.sparse_attention import SparseAttention
from ..ops import api as ops
from ..ops.semantics import visible
from .losses import group_attention, indexer_kl, topp_recall


@dataclass
class LayerSignal:
    """What one layer contributed: tensors (B, Hr, n) for the layer's retrieval KV heads."""

    layer: int
    heads: list[int]
    kl: torch.Tensor  # with grad into the indexer
    recall: torch.Tensor
    budget: torch.Tensor


class IndexerCapture:
    """Hooks on the retrieval layers of a converted ``model`` (see module docstring).

    Use as a context manager (hooks removed on exit); per forward::

        capture.begin(query_index)       # (n,) int64 indices into the sequence
        model(...)
        signals = capture.finish()       # list[LayerSignal]
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in attention_modules(model) if isinstance(m, SparseAttention) and m.retrieval_heads]
        if not self.modules:
            raise ValueError("the model has no retrieval heads: nothing to train the indexer on")
        self.query_index: torch.Tensor | None = None
        self.with_grad = True
        self.inputs: dict[int, tuple[torch.Tensor, tuple]] = {}
        self.signals: list[tuple] = []  # per layer: what _signal needs
        self.handles: list[Any] = []

    def __enter__(self) -> "IndexerCapture":
        for module in self.modules:
            self.handles.append(module.register_forward_pre_hook(self._keep_inputs, with_kwargs=True))
            module.observer = self._observe
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        for module in self.modules:
            module.observer = None
        self.handles, self.inputs, self.query_index = [], {}, None

    def begin(self, query_index: torch.Tensor, with_grad: bool = True) -> None:
        """Capture the next forward at ``query_index`` (n,); ``with_grad``: KL differentiable in the indexer."""
        self.query_index, self.with_grad, self.signals, self.inputs = query_index, with_grad, [], {}

    def finish(self) -> list[LayerSignal]:
        """Indexer KL, recall and budget of every layer seen since :meth:`begin`; stops capturing."""
        pending, self.signals, self.query_index, self.inputs = self.signals, [], None, {}
        return [self._signal(*entry) for entry in pending]

    # --- hooks ---------------------------------------------------------------------------
    def _keep_inputs(self, module: SparseAttention, args: tuple, kwargs: dict) -> None:
        if self.query_index is not None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[id(module)] = (hidden.detach(), kwargs["position_embeddings"])

    @torch.no_grad()
    def _observe(self, module: SparseAttention, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> None:
        """Keep the layer's target and detached indexer inputs (no graph inside a checkpointed layer)."""
        if self.query_index is None:
            return
        hidden, (cos, sin) = self.inputs.pop(id(module))
        idx = self.query_index.to(q.device)
        q_pos = positions[:, idx]
        with torch.autocast(q.device.type, enabled=False):
            q_post, k_post = (t.float() for t in module.retrieval_raw(q, k))  # selects the retrieval heads
            target = group_attention(q_post[:, :, idx], k_post, q_pos, positions, module.scaling)
            q_raw, k_raw, _ = module.project(hidden)
            q_pre, k_pre = (t.float() for t in module.retrieval_raw(q_raw, k_raw))
        rope = (cos.float(), sin.float())
        self.signals.append((module, target, q_pre[:, :, idx], k_pre, q_pos, positions, idx, rope))

    def _signal(self, module, target, q_pre, k_pre, q_pos, k_pos, idx, rope) -> LayerSignal:
        cos, sin = rope
        with torch.autocast(q_pre.device.type, enabled=False), torch.set_grad_enabled(self.with_grad):
            q_idx = module.indexer.queries(q_pre, cos[:, idx], sin[:, idx])
            k_idx = module.indexer.keys(k_pre, cos, sin)
            scores = ops.indexer_scores(q_idx, k_idx)
            kl = indexer_kl(target, scores, visible(q_pos, k_pos, None, 0)[:, None])
        with torch.no_grad():
            selected = module.select(q_idx.detach(), k_idx.detach(), q_pos, k_pos)
        return LayerSignal(module.layer_idx, list(module.retrieval_heads), kl, *topp_recall(target, selected))
