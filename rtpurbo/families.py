"""Model families rtpurbo converts, in one table keyed by ``config.model_type``.

All supported families share Llama's attention layout (``q_proj``/``k_proj``/``v_proj``/
``o_proj``, rotate-half RoPE from ``position_embeddings``); they differ in biases,
per-head ``q_norm``/``k_norm`` (Qwen3), and whether the base model itself uses a
sliding window on some layers (Mistral, Qwen2/3 with ``layer_types``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn


@dataclass(frozen=True)
class Family:
    """What rtpurbo needs to know about one model family."""

    model_type: str
    modeling_module: str  # transformers module holding the attention and its RoPE helper
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE
    window_from_config: bool  # base window read from config.sliding_window for every layer

    def apply_rotary(self) -> Callable:
        """The family's own ``apply_rotary_pos_emb(q, k, cos, sin)``."""
        return importlib.import_module(self.modeling_module).apply_rotary_pos_emb


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "transformers.models.llama.modeling_llama", qk_norm=False, window_from_config=False),
    "mistral": Family("mistral", "transformers.models.mistral.modeling_mistral", qk_norm=False, window_from_config=True),
    "qwen2": Family("qwen2", "transformers.models.qwen2.modeling_qwen2", qk_norm=False, window_from_config=False),
    "qwen3": Family("qwen3", "transformers.models.qwen3.modeling_qwen3", qk_norm=True, window_from_config=False),
    "qwen3_moe": Family(
        "qwen3_moe", "transformers.models.qwen3_moe.modeling_qwen3_moe", qk_norm=True, window_from_config=False
    ),
}


class UnsupportedModel(ValueError):
    """The model's family is not one rtpurbo converts."""


def family_of(config: Any) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not supported; supported families: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def base_window(family: Family, attn: nn.Module, config: Any) -> int | None:
    """The base model's own sliding window for this attention module (None = full causal); a converted module
    (:class:`rtpurbo.modules.SparseAttention`) records the window its base layer had."""
    if hasattr(attn, "base_window"):
        return attn.base_window
    if family.window_from_config:
        return getattr(config, "sliding_window", None)
    return getattr(attn, "sliding_window", None)


def geometry(config: Any) -> tuple[int, int, int, int]:
    """(num_layers, num_kv_heads, num_q_heads, head_dim) of a transformers config."""
    num_q = config.num_attention_heads
    num_kv = getattr(config, "num_key_value_heads", None) or num_q
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_q
    return config.num_hidden_layers, num_kv, num_q, head_dim


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The per-layer attention modules (``model.model.layers[i].self_attn``)."""
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is None:
        raise UnsupportedModel(f"{type(model).__name__} has no .model.layers; is it a causal LM of a supported family?")
    return [layer.self_attn for layer in layers]
