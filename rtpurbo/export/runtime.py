"""What the code of an exported directory calls (``modeling_rtpurbo.py``, ``custom_generate/generate.py``).

* :class:`HeadwiseCausalLM` — mixed into the base class by ``modeling_rtpurbo.py``:
  ``from_pretrained`` loads the base weights, then :func:`make_sparse` swaps the attention modules
  and loads the indexers; ``forward`` and ``generate`` are :class:`rtpurbo.causal_lm.HeadwiseCausalLM`'s,
  as for a model converted in process.
* :func:`generate` — what transformers' custom-generate hook calls: a model that is still dense (a
  server built the base class from ``architectures``) is made sparse on the first call, then it
  generates as :func:`rtpurbo.causal_lm.generate`.
"""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn as nn

from .. import causal_lm
from ..config import HeadPlan, SparseConfig
from ..convert import convert, is_converted
from ..families import geometry
from ..headwise import EXPORT_FORMAT as FORMAT, LEGACY_EXPORT_FORMAT, exported_settings, is_rtp_llm_form

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
    """The ``...indexer.wq`` / ``...indexer.wk`` tensors of an exported directory (or hub repository), read from the
    files transformers loads the base weights from: ``model.safetensors`` when there is one, else the shards its
    index names."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    single = cached_file(source, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    index = None if single is not None else cached_file(source, "model.safetensors.index.json",
                                                          _raise_exceptions_for_missing_entries=False)
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


class HeadwiseCausalLM(causal_lm.HeadwiseCausalLM):
    """Mixin placed before a transformers ``...ForCausalLM`` class by an exported ``modeling_rtpurbo.py``:
    :class:`rtpurbo.causal_lm.HeadwiseCausalLM` whose ``from_pretrained`` also makes the model sparse."""

    _keys_to_ignore_on_load_unexpected = [r"\.indexer\."]  # the base class loads first, the indexers after

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> nn.Module:
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return make_sparse(model, str(pretrained_model_name_or_path))


def generate(*args: Any, model: nn.Module, **kwargs: Any) -> Any:
    """``generate()`` of an exported model found through transformers' custom-generate hook: a model that is
    still dense (a server built the base class from ``architectures``) is made sparse on the first call, then
    generation runs as :func:`rtpurbo.causal_lm.generate`. ``model`` is keyword-only because transformers binds
    it with ``functools.partial(generate, model=...)``."""
    return causal_lm.generate(make_sparse(model), *args, **kwargs)
