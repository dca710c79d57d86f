"""The only module that branches on torch / transformers versions.

Supported: torch 2.11-2.13, transformers 5.17-5.24. transformers renamed the
attention/decoder ``past_key_values`` argument to ``cache`` (5.2x, deprecation
window until 5.40); both spellings are accepted here.
"""
from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

ATTN_IMPLEMENTATION = "rtpurbo"

TORCH_VERSION = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
TRANSFORMERS_VERSION = tuple(int(x) for x in transformers.__version__.split(".")[:2])


def cache_from_kwargs(kwargs: dict[str, Any]) -> Any:
    """The cache object handed to an attention module, under either argument name."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def _unused_attention(*args: Any, **kwargs: Any) -> Any:
    """Called only by a transformers attention module whose config names rtpurbo's attention: a model built from
    the config object of a converted model (convert() points that config at rtpurbo's attention)."""
    raise RuntimeError("this model's config names rtpurbo's attention, but its attention modules are transformers' "
                       "own: was it built from the config of a converted model? Build it from a copy of the base "
                       "config (copy.deepcopy(config)), or call model.set_attn_implementation('sdpa') on it")


def _padding_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """Mask builder for our implementation name: hands the 2D padding mask through.

    Our attention modules build their own (head-wise) visibility from positions; all
    they need from transformers is which tokens are padding: (B, seen + L) bool or None.
    """
    return attention_mask


def register_attention() -> None:
    """Register the ``rtpurbo`` attention name (idempotent)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, _unused_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _padding_mask)


def set_attn_implementation(model: torch.nn.Module, name: str) -> None:
    """Point the model's config (and sub-configs) at attention implementation ``name``."""
    register_attention() if name == ATTN_IMPLEMENTATION else None
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = name


def from_pretrained_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    """Keyword for the load dtype (``dtype`` in transformers 5, ``torch_dtype`` before)."""
    return {"dtype": dtype} if TRANSFORMERS_VERSION >= (5, 0) else {"torch_dtype": dtype}


def cache_kwarg() -> str:
    """Name under which models and ``generate()`` take the KV cache in this transformers."""
    import inspect

    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def use_grouped_experts(model: torch.nn.Module) -> None:
    """Routed experts through ``torch._grouped_mm`` (no host sync, CUDA-graph capturable) where this
    transformers has its experts interface; the default eager experts loop syncs on every MoE layer."""
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("grouped_mm")
    else:  # pragma: no cover - transformers without the experts interface
        raise RuntimeError(f"transformers {transformers.__version__} has no experts interface: a MoE model would "
                           "sync with the host in every layer (decode cannot be graphed)")
