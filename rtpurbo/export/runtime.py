"""What the code of an exported directory calls (``modeling_rtpurbo.py``, ``custom_generate/generate.py``).

* :class:`HeadwiseCausalLM` — mixed into the base class by ``modeling_rtpurbo.py``:
  ``from_pretrained`` loads the base weights, then :func:`make_sparse` swaps the attention modules
  and loads the indexers; ``forward`` without a cache (and ``use_cache`` on) starts a head-wise
  cache where the base model would start a ``DynamicCache``; ``generate`` is :func:`generate`.
* :func:`generate` — ``generate()`` through a :class:`~rtpurbo.cache.HeadwiseCache`. The prompt but
  its last token is prefilled first, so the last prompt token and every new one are decoded: with
  ``top_p < 1`` the retrieval heads attend over their indexer's selection for each of them, as in
  :func:`rtpurbo.eval.scoring.score_batch`. A model that is still dense (a server built the base
  class from ``architectures`` and found this function through transformers' custom-generate hook)
  is made sparse on the first call.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import torch
import torch.nn as nn
from transformers import GenerationMixin

from .._compat import cache_kwarg
from ..cache import HeadwiseCache
from ..config import HeadPlan, SparseConfig
from ..convert import convert, is_converted
from ..families import geometry
from ..generate import prefill
from ..headwise import LEGACY_EXPORT_FORMAT, exported_settings, is_rtp_llm_form

FORMAT = "rtpurbo.export/2"
INDEXER_KEY = ".indexer."


class ExportedModelError(ValueError):
    """An exported directory's config or weights do not describe a sparse model rtpurbo can build."""


def sparse_settings(config: Any) -> tuple[HeadPlan, SparseConfig]:
    """(plan, sparse config) from an exported ``config.json`` (its ``headwise_config`` and ``rtpurbo`` keys)."""
    block = getattr(config, "rtpurbo", None)
    if not isinstance(block, dict) or block.get("format") not in (FORMAT, LEGACY_EXPORT_FORMAT):
        found = block.get("format") if isinstance(block, dict) else None
        raise ExportedModelError(f"config.json: 'rtpurbo' must be a dict with format {FORMAT!r} (found {found!r}); "
                                 "is this a directory written by `rtpurbo export`?")
    headwise = getattr(config, "headwise_config", None)
    if not is_rtp_llm_form(headwise):
        raise ExportedModelError("config.json: 'headwise_config' must be a dict with one 0/1 list per layer "
                                 "under the keys '0', '1', ...")
    plan, values = exported_settings(headwise, block, *geometry(config)[:2])
    try:
        return plan, SparseConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ExportedModelError(f"config.json: rtpurbo.sparse: {err}") from err


def indexer_tensors(source: str) -> dict[str, torch.Tensor]:
    """The ``...indexer.wq`` / ``...indexer.wk`` tensors of an exported directory (or hub repository)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    index = cached_file(source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index is not None:
        weight_map = json.loads(open(index).read())["weight_map"]
        files = sorted({file for key, file in weight_map.items() if INDEXER_KEY in key})
    else:
        files = ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(cached_file(source, name), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys() if INDEXER_KEY in key})
    return tensors


def make_sparse(model: nn.Module, source: str | None = None) -> nn.Module:
    """Convert a model loaded from an exported directory ``source`` (default: where it was loaded
    from) per its config and load its indexers, in place. A converted model is returned as it is."""
    if is_converted(model):
        return model
    source = str(source or model.name_or_path)
    plan, sparse = sparse_settings(model.config)
    convert(model, plan, sparse, check_windows=False)  # rebuilt as it was exported
    tensors = indexer_tensors(source)
    wanted = {key for key in model.state_dict() if INDEXER_KEY in key}
    if set(tensors) != wanted:
        missing, extra = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
        raise ExportedModelError(f"{source}: indexer tensors do not match headwise_config "
                                 f"(missing {missing[:3]}, unexpected {extra[:3]})")
    model.load_state_dict(tensors, strict=False)
    return model


def _given_cache(kwargs: dict[str, Any]) -> Any:
    return kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")


def _one_sequence_per_prompt(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Raise unless generation keeps one sequence per prompt (the head-wise cache cannot be reordered)."""
    config = kwargs.get("generation_config") or model.generation_config
    beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
    returned = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
    if beams > 1 or returned > 1:
        raise ValueError(f"the head-wise cache decodes one sequence per prompt; got num_beams={beams}, "
                         f"num_return_sequences={returned} (pass use_cache=False to run without it)")


def generate(*args: Any, model: nn.Module, **kwargs: Any) -> Any:
    """``model.generate(...)`` through a head-wise cache (module docstring); arguments as transformers'.

    ``model`` is keyword-only because transformers binds it with ``functools.partial(generate, model=...)``.
    """
    make_sparse(model)
    if _given_cache(kwargs) is None and kwargs.get("use_cache", True) is not False:
        _one_sequence_per_prompt(model, kwargs)
        cache = HeadwiseCache(model)
        input_ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        if input_ids is not None and input_ids.shape[1] > 1:
            if kwargs.get("attention_mask") is None:  # generate() slices the prompt by the cache only with a mask
                kwargs["attention_mask"] = torch.ones_like(input_ids)
            mask = kwargs["attention_mask"]
            prefill(model, cache, input_ids[:, :-1], mask[:, :-1], chunk=input_ids.shape[1] - 1)
        kwargs[cache_kwarg()] = cache
    return GenerationMixin.generate(model, *args, **kwargs)


class HeadwiseCausalLM:
    """Mixin placed before a transformers ``...ForCausalLM`` class by an exported ``modeling_rtpurbo.py``."""

    _keys_to_ignore_on_load_unexpected = [r"\.indexer\."]  # the base class loads first, the indexers after

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give the subclass's ``forward`` the base class's signature: transformers' ``generate()`` passes
        ``position_ids`` (counted along the attention mask, so left padding does not shift RoPE) only to a
        ``forward`` that declares them."""
        super().__init_subclass__(**kwargs)
        base_forward = super(HeadwiseCausalLM, cls).forward

        @functools.wraps(base_forward)
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return HeadwiseCausalLM.forward(self, *args, **kwargs)

        cls.forward = forward

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> nn.Module:
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return make_sparse(model, str(pretrained_model_name_or_path))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if _given_cache(kwargs) is None and kwargs.get("use_cache", self.config.use_cache):
            kwargs[cache_kwarg()] = HeadwiseCache(self)
        return super().forward(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return generate(*args, model=self, **kwargs)
