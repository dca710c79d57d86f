"""The model of the end-to-end benchmark and the variants it is measured as.

One model with random weights (``LlamaConfig`` or ``Qwen3MoeConfig`` + ``AutoModelForCausalLM.from_config``,
:func:`build_model`) is put in turn (:class:`Variants`) into the state of

* ``dense``: the unconverted Hugging Face model, ``attn_implementation="sdpa"``, ``DynamicCache``.
  SDPA is restricted to one backend per phase, the first of ``sdpa_backends`` (cuDNN, flash) that
  runs a 256-token prefill, resp. one decode step, of this model
  (:func:`rtpurbo.bench.steps.pick_sdpa_backends`); the report names it.
* ``dense-graph`` (with ``cuda_graph``): the dense model with its decode launch overhead removed,
  as the graphed sparse variants have theirs. transformers' own ``StaticCache`` cannot be that
  baseline: its decode mask makes SDPA give up GQA (``repeat_kv`` of the whole cache every step),
  26 ms vs 6 ms per token eager at 128K on an H200 (2026-11-28). So the same weights are
  converted with *every* KV head a retrieval head at top-p 1: full causal attention, exactly the
  dense model's function (prefill through the dense kernel, decode through rtpurbo's GQA split-K
  Triton kernel over all cached keys, graph-captured).
* ``sparse``: the same weights converted by :func:`rtpurbo.convert.convert` (untrained indexers,
  ``top_p``), decoding through :class:`rtpurbo.cache.HeadwiseCache`; ``sparse-max{N}`` variants
  add a ``max_tokens = N`` budget to the retrieval heads' selection; ``sparse-prefill{N}`` variants
  prefill the retrieval heads sparsely (``retrieval_prefill="sparse"``): each query block over at most
  ``N`` key blocks that the indexer ranks highest (top-p ``prefill_top_p``), plus the sink block and
  the local band. Random weights give nearly flat block scores, so ``N`` sets what is kept; the row
  records the fraction of visible key blocks kept, and the Amdahl ceiling uses it. With ``index_logit_std`` the
  indexers of every converted variant are scaled after each conversion (:func:`calibrate_indexers`)
  so that decode scores against random-filled caches are as peaked as a trained indexer's. ``sparse-two-launch``
  (``two_launch``) decodes like ``sparse`` with ``HeadwiseCache.fuse_roles`` off: a layer's local and
  retrieval heads in two launches on two streams instead of one launch.

Retrieval heads (:func:`spread_plan`): ``round(fraction * layers * kv_heads)`` KV heads, spread evenly
over the layers, the first KV heads of their layer (weights are random, so which heads does not matter,
and leading heads keep the roles contiguous, as a ``reorder_heads`` conversion would).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, Qwen3MoeConfig

from .._compat import set_attn_implementation, use_grouped_experts
from ..cache import HeadwiseCache
from ..config import HeadPlan, SparseConfig
from ..convert import convert, is_converted, unconvert
from ..families import attention_modules
from .settings import TWO_LAUNCH, ModelBenchSettings
from .token_chunks import chunk_mlps


def model_config(settings: ModelBenchSettings):
    """The transformers config of ``settings.geometry`` with ``settings.layers`` layers."""
    geo = settings.geometry
    longest = max([*settings.lengths, *settings.decode_lengths, *(settings.oom_lengths if settings.oom_search else []),
                   settings.profile_length or 0])
    common = dict(
        hidden_size=geo.hidden, num_attention_heads=geo.q_heads, num_key_value_heads=geo.kv_heads,
        head_dim=geo.head_dim, intermediate_size=geo.intermediate, vocab_size=geo.vocab,
        num_hidden_layers=settings.layers, rope_theta=geo.rope_theta, tie_word_embeddings=False,
        max_position_embeddings=max(131072, longest + settings.decode_steps + settings.decode_warmup + 1),
    )
    if geo.family == "qwen3_moe":
        return Qwen3MoeConfig(**common, num_experts=geo.experts, num_experts_per_tok=geo.experts_per_token,
                              moe_intermediate_size=geo.moe_intermediate, decoder_sparse_step=1, mlp_only_layers=[],
                              norm_topk_prob=True)
    return LlamaConfig(**common)


def build_model(settings: ModelBenchSettings) -> nn.Module:
    """A causal LM of ``settings.geometry`` with ``settings.layers`` layers, random weights, eval mode."""
    config = model_config(settings)
    torch.manual_seed(settings.seed)
    with torch.device(settings.device):  # initialise on the device: no multi-GB host copy
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, settings.dtype))
    set_attn_implementation(model, "sdpa")
    if settings.geometry.experts:
        use_grouped_experts(model)  # routed experts without host syncs: CUDA-graph capturable decode
    if settings.mlp_chunk:
        chunk_mlps(model, settings.mlp_chunk)  # token-wise: same output, dense one-shot prefill fits at 1M
    return model.to(settings.device).eval()  # already there unless from_config ignored the device context


def spread_plan(num_layers: int, num_kv: int, num_q: int, fraction: float) -> HeadPlan:
    """``max(1, round(fraction * layers * kv))`` retrieval KV heads, as even over the layers as they go.

    Every layer gets ``count // layers`` heads; the ``count % layers`` extra ones go to evenly spaced
    layers. A layer's retrieval heads are its first KV heads.
    """
    count = max(1, round(fraction * num_layers * num_kv))
    per_layer = [count // num_layers] * num_layers
    extra = count % num_layers
    for i in range(extra):
        per_layer[i * num_layers // extra] += 1
    return HeadPlan(num_layers, num_kv, num_q, [list(range(n)) for n in per_layer],
                    criterion=f"benchmark: {count} KV heads spread evenly (random weights)")


DENSE_GRAPH = "dense-graph"


def conversions(settings: ModelBenchSettings, plan: HeadPlan) -> dict[str, tuple[HeadPlan, SparseConfig]]:
    """Variant name -> (head plan, sparse configuration) for every converted variant, in measuring order.

    ``dense-graph`` (with ``cuda_graph``): every KV head a retrieval head at top-p 1, i.e. full
    attention, the dense model's function (see the module docstring).
    """
    out = {}
    if settings.cuda_graph:
        geo = settings.geometry
        full = spread_plan(settings.layers, geo.kv_heads, geo.q_heads, 1.0)
        out[DENSE_GRAPH] = (full, SparseConfig(window=settings.window, sinks=settings.sinks, top_p=1.0, impl="auto",
                                               decode_impl="auto"))
    out.update({name: (plan, config) for name, config in settings.sparse_configs().items()})
    return out


FLASH_DENSE = "dense-flash"  # the dense model's TTFT with SDPA's flash backend (FlashAttention-2 class)


class Variants:
    """The one model, put in the state a variant needs: unconverted (``dense``, ``dense-flash``) or converted."""

    def __init__(self, model: nn.Module, conversions: dict[str, tuple[HeadPlan, SparseConfig]],
                 flash: bool = False, index_logit_std: float | None = None) -> None:
        self.model, self.conversions = model, conversions
        self.dense_names = ["dense"] + ([FLASH_DENSE] if flash else [])
        self.index_logit_std = index_logit_std
        self.current = "dense"

    @property
    def names(self) -> list[str]:
        return [*self.dense_names, *self.conversions]

    def use(self, name: str) -> None:
        if name == self.current:
            return
        if is_converted(self.model):
            unconvert(self.model)
        if name in self.conversions:
            convert(self.model, *self.conversions[name])  # fresh, untrained indexers
            if self.index_logit_std is not None:  # the same scales every time: a fixed calibration prompt
                calibrate_indexers(self.model, self.index_logit_std)
        self.current = name

    def new_cache(self, capacity: int):
        """An empty cache for the current variant; a head-wise cache reserves ``capacity`` retrieval slots."""
        if self.current not in self.conversions:
            return DynamicCache(config=self.model.config)
        cache = HeadwiseCache(self.model, initial_capacity=capacity)
        cache.plain_prompt = True  # every prompt here is one unpadded row at positions 0..L-1
        cache.fuse_roles = self.current != TWO_LAUNCH
        return cache


CALIBRATION_TOKENS = 32


def indexer_query_norms(model: nn.Module, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Layer index -> mean L2 norm (Hr,) of each retrieval head's indexer queries over the tokens of ids (1, n).

    One cache-free forward of the converted ``model``; a pre-hook on every attention module with an
    indexer computes its indexer queries from the layer's input as the module does
    (:meth:`SparseAttention.project`, then :meth:`SparseAttention.index_vectors`).
    """
    norms: dict[int, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        q_raw, k_raw, _ = module.project(hidden)
        q_idx, _ = module.index_vectors(q_raw, k_raw, kwargs["position_embeddings"])  # (1, Hr, n, d_idx)
        norms[module.layer_idx] = q_idx.float().norm(dim=-1).mean(dim=(0, 2))

    modules = [m for m in attention_modules(model) if getattr(m, "indexer", None) is not None]
    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    try:
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return norms


@torch.no_grad()
def calibrate_indexers(model: nn.Module, sigma: float, tokens: int = CALIBRATION_TOKENS, seed: int = 0) -> None:
    """Scale every retrieval head's indexer query weights so its queries have mean L2 norm ``sigma``.

    A query ``q`` scores N(0, I) indexer keys (those of :meth:`HeadwiseCache.fill_random`) with
    std ``|q|`` across the keys, so decode scores get std ``sigma`` logits: peaked like a trained
    indexer's (top-p ``p`` keeps a fraction ``Phi(Phi^-1(p) - sigma)`` of Gaussian scores) instead
    of the nearly flat scores of an untrained one. The norms are measured on ``tokens`` random
    tokens (fixed by ``seed``), one cache-free forward; the layer input is RMS-normalised, so they
    carry over to decode steps. Only ``indexer.wq`` changes (in place, per head).
    """
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=generator).to(device)
    norms = indexer_query_norms(model, ids)
    for module in attention_modules(model):
        if module.layer_idx in norms:
            scale = sigma / norms[module.layer_idx].clamp_min(1e-12)  # (Hr,)
            module.indexer.wq.mul_(scale.to(module.indexer.wq).view(-1, 1, 1, 1))
