"""The stage-2 teacher: the original model, frozen, computed without touching the student.

:func:`rtpurbo.convert.convert` keeps every layer's original attention module (sharing the
projection weights with the swapped-in ``SparseAttention``). :func:`original_attention`
puts those modules back for the duration of a forward, which computes exactly the base
model (a head reorder permutes q/k/v rows and o_proj columns together, so it changes
nothing either).

Which model object the teacher runs on:

* ``--trainable lora``: the student itself. Adapters live on the ``SparseAttention``'s
  projections, which the original modules do not use, and every base weight is frozen,
  so no copy is needed (this is what makes stage 2 affordable on large models).
* ``--trainable attention`` / ``all``: base weights change, so the teacher is a frozen deep
  copy taken before training (one extra model in memory; 0.5 GB for SmolLM2-135M).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from .._compat import set_attn_implementation
from ..convert import is_converted


@contextmanager
def original_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs with its original attention modules (the dense base model)."""
    if not is_converted(model):
        raise ValueError("original_attention needs a model converted by rtpurbo.convert")
    implementation, originals = model._rtpurbo_previous_attn
    layers = model.model.layers
    converted = [layer.self_attn for layer in layers]
    sparse_implementation = model.config._attn_implementation
    for layer, attn in zip(layers, originals):
        layer.self_attn = attn
    set_attn_implementation(model, implementation)
    try:
        yield model
    finally:
        for layer, attn in zip(layers, converted):
            layer.self_attn = attn
        set_attn_implementation(model, sparse_implementation)


class Teacher:
    """Frozen dense model: final hidden states and logits, never any gradient.

    Args:
        model: the converted student.
        copy_weights: run on a frozen deep copy (needed when base weights are trained).
    """

    def __init__(self, model: nn.Module, copy_weights: bool) -> None:
        self.model = model
        if copy_weights:
            self.model = copy.deepcopy(model).eval()
            self.model.requires_grad_(False)

    @torch.no_grad()
    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) -> final hidden states (B, L, hidden)."""
        with original_attention(self.model):
            return self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, c, hidden) -> (B, c, V)."""
        return self.model.get_output_embeddings()(hidden)
