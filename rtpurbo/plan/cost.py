"""What a head plan costs: KV-cache bytes per token and modelled prefill / decode speed vs dense.

* KV bytes (:class:`rtpurbo.memory.KVGeometry`, bf16): a retrieval head keeps K, V and its
  ``d_idx`` indexer key for every token, a local head ``S + W`` slots.
* Prefill FLOPs over ``context`` tokens: ``2 x`` the decoder layers' parameters per token
  (projections and MLPs), plus ``4 x head_dim`` per visible (query, key) pair and query head:
  causal pairs for retrieval heads, window + sinks pairs for local heads (the pair counts of
  :mod:`rtpurbo.bench.attention`). Modelled time is proportional to FLOPs.
* Decode bytes of one step at ``context``: the weights (bf16) plus what attention reads: a
  retrieval head ``keep`` of its keys and values (and, for ``keep < 1``, every indexer key),
  a local head its ``S + W`` slots. Modelled time is proportional to bytes (decode is
  memory-bound).

Speedups are dense / plan under the same model: a way to rank plans, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..bench.attention import causal_pairs, local_pairs
from ..families import geometry
from ..memory import KVGeometry

BYTES_PER_VALUE = 2  # bf16


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs of a model: geometry and parameter counts."""

    num_layers: int
    num_kv_heads: int
    num_q_heads: int
    head_dim: int
    layer_params: int  # all decoder layers
    head_params: int  # the output projection (read at every decode step)

    @classmethod
    def of(cls, model: nn.Module) -> "ModelShape":
        layers, kv, q, head_dim = geometry(model.config)
        layer_params = sum(p.numel() for p in model.model.layers.parameters())
        return cls(layers, kv, q, head_dim, layer_params, model.get_output_embeddings().weight.numel())


def plan_cost(shape: ModelShape, n_retrieval: int, window: int, sinks: int, context: int, index_dim: int = 16,
              keep: float = 1.0) -> dict[str, Any]:
    """KV bytes per token (plan and dense) and modelled speedups of a plan with ``n_retrieval`` KV heads."""
    kv = KVGeometry(shape.num_layers, shape.num_kv_heads, shape.head_dim, n_retrieval, window, sinks, index_dim,
                    BYTES_PER_VALUE)
    n_local = shape.num_layers * shape.num_kv_heads - n_retrieval
    group = shape.num_q_heads // shape.num_kv_heads
    per_pair = 4 * shape.head_dim * group  # FLOPs per (query, key) pair and KV head's query heads
    linear = 2 * shape.layer_params * context
    dense_attention = per_pair * shape.num_layers * shape.num_kv_heads * causal_pairs(context)
    plan_attention = per_pair * (n_retrieval * causal_pairs(context) + n_local * local_pairs(context, window, sinks))
    row = 2 * shape.head_dim * BYTES_PER_VALUE  # K and V of one token and head
    weights = (shape.layer_params + shape.head_params) * BYTES_PER_VALUE
    dense_read = shape.num_layers * shape.num_kv_heads * context * row
    plan_read = n_retrieval * context * (keep * row + (index_dim * BYTES_PER_VALUE if keep < 1 else 0))
    plan_read += n_local * min(context, window + sinks) * row
    return {
        "context": context,
        "kv_bytes_per_token": kv.sparse_bytes(context) / context,
        "dense_kv_bytes_per_token": kv.dense_bytes(context) / context,
        "kv_ratio": kv.dense_bytes(context) / kv.sparse_bytes(context),
        "prefill_speedup": (linear + dense_attention) / (linear + plan_attention),
        "decode_speedup": (weights + dense_read) / (weights + plan_read),
    }
