"""What marks a model that rtpurbo converted, read without the conversion or generation code (so that the export
writer, which a converted model's ``save_pretrained`` calls, needs neither :mod:`rtpurbo.convert` nor
:mod:`rtpurbo.causal_lm`)."""
from __future__ import annotations

import torch.nn as nn

from .modules.sparse_attention import SparseAttention

HEADWISE_MARKER = "rtpurbo_headwise"  # class attribute of rtpurbo.causal_lm.HeadwiseCausalLM and its subclasses


def is_converted(model: nn.Module) -> bool:
    return getattr(model, "rtpurbo_plan", None) is not None


def runs_sparse(model: nn.Module) -> bool:
    """True unless the model is running its original attention (the stage-2 teacher) or is not converted."""
    if not is_converted(model):
        return False
    return isinstance(getattr(model, "model", model).layers[0].self_attn, SparseAttention)


def base_class(model: nn.Module) -> type:
    """The transformers class a converted (or exported) model was built on: the first class of its MRO without
    the head-wise mixin (:data:`HEADWISE_MARKER`)."""
    return next(cls for cls in type(model).__mro__ if not getattr(cls, HEADWISE_MARKER, False))


def kv_order(retrieval_heads: list[int], num_kv: int) -> list[int]:
    """New KV-head order: retrieval heads first, then local heads, each ascending."""
    chosen = sorted(retrieval_heads)
    return chosen + [h for h in range(num_kv) if h not in set(chosen)]


def kv_geometry(model: nn.Module, bytes_per_value: int = 2):
    """The :class:`rtpurbo.memory.KVGeometry` of a converted model's head-wise cache: its plan and sparse settings,
    and the base window of every retrieval KV head on a windowed base layer (the cache keeps at most that many of
    its tokens)."""
    from .families import attention_modules, geometry
    from .memory import KVGeometry

    layers, kv, _, head_dim = geometry(model.config)
    plan, sparse = model.rtpurbo_plan, model.rtpurbo_sparse
    windows = tuple(attn.base_window for attn in attention_modules(model)
                    if isinstance(attn, SparseAttention) and attn.base_window is not None
                    for _ in attn.retrieval_heads)
    return KVGeometry(layers, kv, head_dim, plan.num_retrieval(), sparse.window, sparse.sinks, sparse.index_dim,
                      bytes_per_value, windows)
