"""Convert a Hugging Face causal LM into a head-wise sparse model, in place.

``convert(model, plan, sparse)`` swaps every layer's attention module for a
:class:`~rtpurbo.modules.sparse_attention.SparseAttention` that reuses the base
projections. With ``sparse.reorder_heads`` the projection weights are first
permuted so that each layer's retrieval KV heads come first (contiguous slices on
the fast paths); the plan itself always keeps the base model's head numbering.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

from ._compat import ATTN_IMPLEMENTATION, set_attn_implementation
from .causal_lm import headwise_class
from .converted import base_class, is_converted, kv_order  # noqa: F401 (is_converted: part of this module's API)
from .config import HeadPlan, PlanMismatch, SparseConfig
from .families import attention_modules, base_window, family_of, geometry
from .modules.sparse_attention import SparseAttention


class AlreadyConverted(RuntimeError):
    """The model's attention modules were already swapped."""


def convert(model: nn.Module, plan: HeadPlan, sparse: SparseConfig, check_windows: bool = True) -> nn.Module:
    """Swap attention modules following ``plan``; returns the same model object, whose class becomes
    :func:`rtpurbo.causal_lm.headwise_class` of its own (``model(ids)`` and ``model.generate()`` then run through
    a head-wise cache). ``check_windows``: :func:`check_local_windows` (a loaded artifact is rebuilt as it was
    saved, without it)."""
    family = family_of(model.config)
    num_layers, num_kv, num_q, _ = geometry(model.config)
    plan.check_model(num_layers, num_kv, num_q)
    layers = getattr(model, "model", model).layers
    if check_windows:
        check_local_windows(model, plan, sparse)
    originals = []
    for layer_idx, attn in enumerate(attention_modules(model)):
        if isinstance(attn, SparseAttention):
            raise AlreadyConverted(f"layer {layer_idx} is already a SparseAttention; convert a fresh base model")
        heads = plan.retrieval[layer_idx]
        originals.append(attn)
        if sparse.reorder_heads:
            permute_heads(attn, kv_order(heads, num_kv), num_q // num_kv)
            heads = list(range(len(heads)))
        layers[layer_idx].self_attn = SparseAttention(
            attn, family, heads, num_q, num_kv, sparse, base_window(family, attn, model.config)
        )
    model._rtpurbo_previous_attn = (model.config._attn_implementation, originals)  # plain attribute: not a submodule
    set_attn_implementation(model, ATTN_IMPLEMENTATION)
    model.__class__ = headwise_class(type(model))  # model(ids) and model.generate() start a head-wise cache
    model.rtpurbo_plan = plan
    model.rtpurbo_sparse = sparse
    return model


def check_local_windows(model: nn.Module, plan: HeadPlan, sparse: SparseConfig) -> None:
    """Raise PlanMismatch where a layer of a base with its own sliding window (Mistral's ``sliding_window``, Qwen's
    windowed layers) would get local heads that see further back than the base model ever did (``W`` above the
    base window; the sinks are the method's own addition). Retrieval heads keep the base window (and the head-wise
    cache keeps at most that many of their tokens, as the base model's cache does)."""
    family = family_of(model.config)
    num_kv = geometry(model.config)[1]
    for layer_idx, attn in enumerate(attention_modules(model)):
        own = base_window(family, attn, model.config)
        if own is not None and len(plan.retrieval[layer_idx]) < num_kv and sparse.window > own:
            raise PlanMismatch(f"layer {layer_idx} of this model attends over a sliding window of {own} tokens: local "
                               f"heads at W={sparse.window} would see further back than the model ever did; convert "
                               f"with a window of at most {own} (--window {own})")


def check_windows_before_profiling(model: nn.Module, sparse: SparseConfig, retrieval_ratio: float) -> None:
    """Before a profile decides the plan: :func:`check_local_windows` as if every head were local (unless every head
    will be retrieval), so a window that :func:`convert` would refuse fails before the profile, not after it."""
    if retrieval_ratio < 1:
        check_local_windows(model, HeadPlan.uniform(*geometry(model.config)[:3], retrieval=False), sparse)


@contextlib.contextmanager
def prefill_mode(model: nn.Module, mode: str, scoring: str | None = None) -> Iterator[None]:
    """Inside the block the retrieval heads of a converted model prefill as ``mode`` says (``dense``, ``sparse``:
    block-sparse, key blocks scored by ``scoring``, None: as configured; ``topp``: every query over the indexer's
    top-p selection, as at decode); the model's own settings come back afterwards."""
    sparse = model.rtpurbo_sparse
    previous = sparse.retrieval_prefill, sparse.prefill_scoring
    sparse.retrieval_prefill = mode
    if scoring is not None:
        sparse.prefill_scoring = scoring
    try:
        yield
    finally:
        sparse.retrieval_prefill, sparse.prefill_scoring = previous


def unconvert(model: nn.Module) -> nn.Module:
    """Put the original attention modules back (the inverse of :func:`convert` without reorder)."""
    if not is_converted(model):
        raise ValueError("model is not converted")
    if model.rtpurbo_sparse.reorder_heads:
        raise ValueError("a head-reordered model cannot be unconverted; load a fresh base model")
    implementation, originals = model._rtpurbo_previous_attn
    for layer, attn in zip(getattr(model, "model", model).layers, originals):
        layer.self_attn = attn
    set_attn_implementation(model, implementation)
    if type(model) is headwise_class(base_class(model)):  # an exported model's own class stays
        model.__class__ = base_class(model)
    del model._rtpurbo_previous_attn
    model.rtpurbo_plan = None
    model.rtpurbo_sparse = None
    return model


def apply_plan(model: nn.Module, plan: HeadPlan) -> nn.Module:
    """Re-assign head roles of an already converted model in place (no weight reorder)."""
    if not is_converted(model):
        raise ValueError("apply_plan needs a converted model; call convert first")
    if model.rtpurbo_sparse.reorder_heads:
        raise ValueError("apply_plan cannot change roles of a head-reordered model; convert a fresh base model")
    plan.check_model(*geometry(model.config)[:3])
    for layer_idx, attn in enumerate(attention_modules(model)):
        attn.set_roles(plan.retrieval[layer_idx])
    model.rtpurbo_plan = plan
    return model


@torch.no_grad()
def permute_heads(attn: nn.Module, order: list[int], group: int) -> None:
    """Permute the heads of one attention module in place so that new KV head i is old ``order[i]``.

    Rows of q/k/v projections (and biases) and the matching input columns of o_proj move
    together, so the module computes exactly the same function.
    """
    head_dim = attn.head_dim
    kv_rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in order])
    q_heads = [h * group + g for h in order for g in range(group)]
    q_rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in q_heads])
    for proj, rows in ((attn.q_proj, q_rows), (attn.k_proj, kv_rows), (attn.v_proj, kv_rows)):
        proj.weight.copy_(proj.weight[rows.to(proj.weight.device)])
        if proj.bias is not None:
            proj.bias.copy_(proj.bias[rows.to(proj.bias.device)])
    attn.o_proj.weight.copy_(attn.o_proj.weight[:, q_rows.to(attn.o_proj.weight.device)])
