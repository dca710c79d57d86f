"""What a head plan costs: KV-cache bytes per token and modelled prefill / decode speed vs dense.

* KV bytes (:class:`rtpurbo.memory.KVGeometry`, bf16): a retrieval head keeps K, V and its
  ``d_idx`` indexer key for every token, a local head ``S + W`` slots.
* Prefill FLOPs over ``context`` tokens: ``2 x`` the decoder layers' parameters per token
  (projections and MLPs), plus ``4 x head_dim`` per visible (query, key) pair and query head:
  causal pairs for retrieval heads, window + sinks pairs for local heads (the pair counts of
  :mod:`rtpurbo.ops.semantics`). Modelled time is proportional to FLOPs.
* Decode bytes of one step at ``context``: the weights (bf16) plus what attention reads: a
  retrieval head ``keep`` of its keys and values (and, for ``keep < 1``, every indexer key),
  a local head its ``S + W`` slots. Modelled time is proportional to bytes (decode is
  memory-bound).
* Base windows: on a layer where the base model has its own sliding window ``W_b``
  (:attr:`ModelShape.base_windows`), the dense model and the plan's retrieval heads attend
  within it (key ``j`` visible to query ``i`` iff ``i - j < W_b``: no sinks, as transformers'
  sliding-window masks and :func:`rtpurbo.ops.semantics.visible` with ``S = 0``), so they count
  its pairs, not causal ones, and cache and read at most ``W_b`` tokens; such retrieval heads
  decode over every cached key (no indexer selection: ``keep`` does not apply to them).

Speedups are dense / plan under the same model: a way to rank plans, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch.nn as nn

from ..families import attention_modules, base_window, family_of, geometry
from ..memory import KVGeometry, windowed_retrieval
from ..ops.semantics import causal_pairs, local_pairs

BYTES_PER_VALUE = 2  # bf16


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs of a model: geometry, parameter counts and the base model's own windows."""

    num_layers: int
    num_kv_heads: int
    num_q_heads: int
    head_dim: int
    layer_params: int  # all decoder layers, the base model's own (a converted model's indexers not counted)
    head_params: int  # the output projection (read at every decode step)
    base_windows: tuple[int | None, ...] = ()  # per layer, None = full causal; empty = no window anywhere

    def __post_init__(self) -> None:
        if self.base_windows and len(self.base_windows) != self.num_layers:
            raise ValueError(f"{len(self.base_windows)} base_windows for {self.num_layers} layers")

    @classmethod
    def of(cls, model: nn.Module) -> "ModelShape":
        """The shape of a base model or a converted one (whose attention modules record their base window; their
        indexers are left out of ``layer_params``, so a model costs the same before and after conversion)."""
        layers, kv, q, head_dim = geometry(model.config)
        layer_params = sum(p.numel() for name, p in model.model.layers.named_parameters()
                           if ".indexer." not in f".{name}")
        family = family_of(model.config)
        windows = tuple(base_window(family, attn, model.config) for attn in attention_modules(model))
        return cls(layers, kv, q, head_dim, layer_params, model.get_output_embeddings().weight.numel(), windows)


def base_pairs(context: int, window: int | None) -> int:
    """Visible (query, key) pairs of one base-model head over a prefill of ``context`` tokens: causal, or within
    the base window (``i - j < window``, no sinks)."""
    return causal_pairs(context) if window is None else local_pairs(context, window, 0)


def plan_cost(shape: ModelShape, n_retrieval: int, window: int, sinks: int, context: int, index_dim: int = 16,
              keep: float = 1.0, retrieval_per_layer: Sequence[int] | None = None) -> dict[str, Any]:
    """KV bytes per token (plan and dense) and modelled speedups of a plan with ``n_retrieval`` KV heads.

    ``retrieval_per_layer``: the plan's retrieval KV heads of each layer (summing to ``n_retrieval``); needed when
    ``shape`` has base windows, where a retrieval head's cost depends on its layer's window.
    """
    windows = shape.base_windows or (None,) * shape.num_layers
    if retrieval_per_layer is None:
        if any(w is not None for w in windows):
            raise ValueError("the base model has its own sliding windows: plan_cost needs retrieval_per_layer")
    elif len(retrieval_per_layer) != shape.num_layers or sum(retrieval_per_layer) != n_retrieval:
        raise ValueError(f"retrieval_per_layer {list(retrieval_per_layer)} does not give {n_retrieval} retrieval KV "
                         f"heads over {shape.num_layers} layers")
    windowed = windowed_retrieval(windows, retrieval_per_layer or ())
    kv = KVGeometry(shape.num_layers, shape.num_kv_heads, shape.head_dim, n_retrieval, window, sinks, index_dim,
                    BYTES_PER_VALUE, windowed, windows)
    unwindowed = n_retrieval - len(windowed)  # retrieval heads on full-causal layers
    n_local = kv.num_local_kv_heads
    group = shape.num_q_heads // shape.num_kv_heads
    per_pair = 4 * shape.head_dim * group  # FLOPs per (query, key) pair and KV head's query heads
    linear = 2 * shape.layer_params * context
    dense_attention = per_pair * shape.num_kv_heads * sum(base_pairs(context, w) for w in windows)
    plan_attention = per_pair * (unwindowed * causal_pairs(context) + sum(base_pairs(context, w) for w in windowed)
                                 + n_local * local_pairs(context, window, sinks))
    row = 2 * shape.head_dim * BYTES_PER_VALUE  # K and V of one token and head
    weights = (shape.layer_params + shape.head_params) * BYTES_PER_VALUE
    dense_read = kv.dense_bytes(context)  # every cached K and V
    plan_read = unwindowed * context * (keep * row + (index_dim * BYTES_PER_VALUE if keep < 1 else 0))
    plan_read += sum(min(context, w) for w in windowed) * row
    plan_read += n_local * min(context, window + sinks) * row
    return {
        "context": context,
        "kv_bytes_per_token": kv.sparse_bytes(context) / context,
        "dense_kv_bytes_per_token": kv.dense_bytes(context) / context,
        "kv_ratio": kv.dense_bytes(context) / kv.sparse_bytes(context),
        "prefill_speedup": (linear + dense_attention) / (linear + plan_attention),
        "decode_speedup": (weights + dense_read) / (weights + plan_read),
    }
