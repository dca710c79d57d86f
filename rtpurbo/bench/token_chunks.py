"""Token-chunked MLPs for the end-to-end bench: a one-shot prefill of 1M tokens without the MLP's 1M-token
intermediate activations.

A decoder layer's MLP (dense, or a mixture of experts routed token by token with no capacity limit, as in
Llama and Qwen3-MoE) treats every token on its own, so running it on slices of the sequence and concatenating
gives the same output. The attention of a dense one-shot prefill still sees the whole sequence (SDPA causal:
cuDNN or flash, no mask tensor); only the MLP's peak memory drops from ``L`` to ``chunk`` tokens. Without it, a
dense Qwen3-30B-A3B layer runs out of memory on an H200 at 1M tokens (the experts' grouped intermediate).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class TokenChunks(nn.Module):
    """``module`` applied to at most ``chunk`` tokens at a time: hidden_states (B, L, H) -> (B, L, H).

    A tuple output (e.g. hidden states and router logits) is concatenated element by element: along the token
    dimension 1 for (B, L, ...) tensors, along dimension 0 for per-token rows flattened over the batch
    (B * L, ...).
    """

    def __init__(self, module: nn.Module, chunk: int) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.module, self.chunk = module, chunk

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        batch, length = hidden_states.shape[:2]
        if length <= self.chunk:
            return self.module(hidden_states, *args, **kwargs)
        parts = [self.module(hidden_states[:, start : start + self.chunk], *args, **kwargs)
                 for start in range(0, length, self.chunk)]
        if isinstance(parts[0], torch.Tensor):
            return torch.cat(parts, dim=1)
        return tuple(_cat([p[i] for p in parts], batch) for i in range(len(parts[0])))

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}"


def _cat(pieces: list[Any], batch: int) -> Any:
    first = pieces[0]
    if not isinstance(first, torch.Tensor):
        raise TypeError(f"cannot join chunked MLP outputs of type {type(first).__name__}")
    if first.dim() >= 3 and first.shape[0] == batch:
        return torch.cat(pieces, dim=1)
    if batch == 1:
        return torch.cat(pieces, dim=0)
    raise ValueError(f"cannot tell the token dimension of a chunked MLP output of shape {tuple(first.shape)} "
                     f"at batch {batch}")


def chunk_mlps(model: nn.Module, chunk: int) -> int:
    """Wrap every decoder layer's ``mlp`` of ``model`` in :class:`TokenChunks`; returns how many were wrapped."""
    layers = model.model.layers
    for layer in layers:
        if not isinstance(layer.mlp, TokenChunks):
            layer.mlp = TokenChunks(layer.mlp, chunk)
    return len(layers)
