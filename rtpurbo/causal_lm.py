"""A converted model as transformers' users call it: ``model(ids)`` and ``model.generate()``.

:func:`rtpurbo.convert.convert` gives the model the class ``headwise_class(type(model))``: the base
class (same name, same ``isinstance``) with :class:`HeadwiseCausalLM` placed before it. An exported
directory's ``modeling_rtpurbo.py`` builds its class the same way, so a model converted in process and
one loaded with ``trust_remote_code`` behave alike:

* ``forward`` without a cache (``use_cache`` on) starts a :class:`~rtpurbo.cache.HeadwiseCache` where
  the base model would start a ``DynamicCache``, which a converted model cannot use;
* ``generate()`` runs through a head-wise cache (:func:`generate`). The prompt but its last token is
  prefilled first, so the last prompt token and every new one are decoded: with ``top_p < 1`` the
  retrieval heads attend over their indexer's selection for each of them, as in
  :func:`rtpurbo.generate.generate` and :func:`rtpurbo.eval.scoring.score_batch`. Beam search and several
  sequences per prompt prefill each prompt once and repeat its cache rows, as ``generate()`` repeats the prompt;
  beams then reorder the cache's rows in place (:meth:`HeadwiseCache.reorder_cache`, graphs included);
* ``save_pretrained()`` writes what ``rtpurbo export`` writes, but the tokenizer
  (:func:`rtpurbo.export.writer.save_directory`), so that ``from_pretrained(..., trust_remote_code=True)``
  loads the sparse model back.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import torch
import torch.nn as nn
from transformers import GenerationMixin

from ._compat import cache_kwarg
from .cache import HeadwiseCache
from .converted import base_class, runs_sparse  # noqa: F401 (base_class: part of this module's API)
from .prefill import prefill


def given_cache(kwargs: dict[str, Any]) -> Any:
    """The cache a caller passed, under either argument name (None without one)."""
    return kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")


# generate() arguments that start assisted decoding (draft tokens checked, then the cache cropped)
ASSISTED = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


def sequences_per_prompt(config: Any, kwargs: dict[str, Any]) -> int:
    """The rows transformers' ``generate()`` expands each prompt into (``config``: its generation config,
    ``kwargs``: the call's arguments): ``max(num_beams, num_return_sequences)``."""
    beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
    returned = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
    return max(beams, returned)


GRAPH_MIN_NEW_TOKENS = 4  # below this, capturing the step's graph (about one eager step) does not pay


def graphs_by_default(model: nn.Module, input_ids: torch.Tensor | None, kwargs: dict[str, Any], config: Any) -> bool:
    """Whether ``generate()`` without a ``cuda_graph`` argument decodes from CUDA graphs: on a CUDA model on one
    device (not spread by a ``device_map``), for prompt ids of at least 2 tokens, with the cache ``generate()``
    starts itself (no caller cache, ``use_cache`` on), one sequence per prompt (no beams, no
    ``num_return_sequences``), logits only (no ``output_attentions`` / ``output_hidden_states``) and at least
    :data:`GRAPH_MIN_NEW_TOKENS` new tokens. Otherwise eager, as before.
    ``RTPURBO_GENERATE_CUDA_GRAPH=0`` turns the default off for the process."""
    switch = os.environ.get("RTPURBO_GENERATE_CUDA_GRAPH", "auto").strip().lower()
    if switch not in ("auto", "0"):
        raise ValueError(f"RTPURBO_GENERATE_CUDA_GRAPH must be auto (or unset) or 0; got {switch!r}")
    if switch == "0" or input_ids is None or input_ids.shape[1] < 2 or not input_ids.is_cuda:
        return False
    if len(set(getattr(model, "hf_device_map", None) or {0: 0}.values())) > 1:
        return False  # spread over devices (accelerate's device_map): a graph captures one device's stream
    if given_cache(kwargs) is not None or kwargs.get("use_cache", getattr(config, "use_cache", True)) is False:
        return False
    if sequences_per_prompt(config, kwargs) != 1 or kwargs.get("inputs_embeds") is not None:
        return False
    if any(kwargs.get(name, getattr(config, name, False)) for name in ("output_attentions", "output_hidden_states")):
        return False
    if any(kwargs.get(name, getattr(config, name, None)) is not None for name in ASSISTED):
        return False  # refused below, with why
    try:
        return _new_tokens(model, kwargs, input_ids.shape[1]) >= GRAPH_MIN_NEW_TOKENS
    except ValueError:
        return False  # no new token: transformers' own error, eagerly


def generate(model: nn.Module, *args: Any, cuda_graph: bool | None = None, **kwargs: Any) -> Any:
    """transformers' ``generate()`` of a converted model through a head-wise cache (module docstring); the
    arguments are transformers'. A caller's own cache, or ``use_cache=False`` (as an argument or in the generation
    config), is passed through as given. A prompt given as ``inputs_embeds`` is prefilled whole, its last token
    included (there are no ids to decode it from).

    ``cuda_graph=True``: after the prefill the cache switches to static decode and every decode step is replayed
    from a CUDA graph (:class:`rtpurbo.decode_graph.GraphedDecoder`; an eager stand-in off CUDA), while
    transformers keeps its own loop around it (logits processors, sampling, stopping criteria, streamers). It
    needs prompt ids of at least 2 tokens and the head-wise cache this function starts; the cache holds the prompt
    and the new tokens as transformers counts them (:func:`_new_tokens`). The steps return logits only (no
    attentions or hidden states). ``None`` (the default): graphs where :func:`graphs_by_default` says they apply
    (a CUDA model's plain generation), eager otherwise; ``False``: eager."""
    config = kwargs.get("generation_config") or model.generation_config
    use_cache = kwargs.get("use_cache", getattr(config, "use_cache", True))
    input_ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if cuda_graph is None:
        cuda_graph = graphs_by_default(model, input_ids, kwargs, config)
    if cuda_graph and (given_cache(kwargs) is not None or use_cache is False or input_ids is None
                       or input_ids.shape[1] < 2):
        raise ValueError("cuda_graph=True decodes through the head-wise cache that generate() starts: it needs prompt "
                         "ids of at least 2 tokens, no cache of the caller's and use_cache on")
    extras = [name for name in ("output_attentions", "output_hidden_states")
              if kwargs.get(name, getattr(config, name, False))]
    if cuda_graph and extras:
        raise ValueError(f"cuda_graph=True decode steps return logits only; drop {', '.join(extras)}")
    assisted = [name for name in ASSISTED if kwargs.get(name, getattr(config, name, None)) is not None]
    if assisted:
        raise ValueError(f"assisted decoding ({', '.join(assisted)}) crops the cache after rejected draft tokens, and "
                         "a head-wise cache cannot be cropped (its local heads have already dropped the tokens a crop "
                         "would bring back); generate without it")
    if given_cache(kwargs) is None and use_cache is not False:
        prompt = 0 if input_ids is None else input_ids.shape[1]
        capacity = prompt - 1 + _new_tokens(model, kwargs, prompt) if cuda_graph else None
        cache = HeadwiseCache(model) if capacity is None else HeadwiseCache(model, initial_capacity=capacity)
        if prompt > 1:
            if kwargs.get("attention_mask") is None:  # generate() slices the prompt by the cache only with a mask
                kwargs["attention_mask"] = inferred_mask(input_ids, config, kwargs)
            mask = kwargs["attention_mask"]
            prefill(model, cache, input_ids[:, :-1], mask[:, :-1], chunk=prompt - 1)
            cache.batch_repeat_interleave(sequences_per_prompt(config, kwargs))  # as generate() expands the prompt
        if capacity is not None:
            from .decode_graph import GraphedDecoder

            cache.static_decode(capacity)
            cache.graphed_decoder = GraphedDecoder(model, cache)  # forward() hands it the one-token steps
        kwargs[cache_kwarg()] = cache
        try:
            return GenerationMixin.generate(model, *args, **kwargs)
        finally:
            cache.graphed_decoder = None  # the graphs belong to this call; the cache stays in static decode mode
    return GenerationMixin.generate(model, *args, **kwargs)


DEFAULT_NEW_TOKENS = 20  # what transformers' generate() adds when no length is set anywhere


def _new_tokens(model: nn.Module, kwargs: dict[str, Any], prompt: int) -> int:
    """The most tokens ``generate()`` adds to a prompt of ``prompt`` tokens, as transformers decides it: the first
    ``max_new_tokens`` set (call, the caller's generation config, the model's), else the first ``max_length`` set
    minus the prompt, else :data:`DEFAULT_NEW_TOKENS`."""
    given = kwargs.get("generation_config")
    sources = (kwargs, {} if given is None else vars(given), vars(model.generation_config))

    def first(name: str) -> int | None:
        return next((source[name] for source in sources if source.get(name) is not None), None)

    new, length = first("max_new_tokens"), first("max_length")
    new = new if new is not None else DEFAULT_NEW_TOKENS if length is None else length - prompt
    if new < 1:
        raise ValueError(f"generate() would add no token to a prompt of {prompt} (max_new_tokens / max_length)")
    return new


def _graphed_step(decoder: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """One decode step of ``generate(cuda_graph=True)``: logits (B, 1, V) from the graphed decoder, as the output
    transformers' loop reads."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    input_ids = kwargs.get("input_ids", args[0] if args else None)
    position_ids = kwargs.get("position_ids")
    extras = [name for name in ("inputs_embeds", "labels", "output_attentions", "output_hidden_states")
              if kwargs.get(name)]
    if input_ids is None or input_ids.shape[1] != 1 or position_ids is None or extras:
        raise ValueError("a cache decoding from a CUDA graph takes one token per row with its position_ids and returns "
                         f"logits only; got input_ids {None if input_ids is None else tuple(input_ids.shape)}"
                         + (f", {', '.join(extras)}" if extras else "")
                         + ("" if position_ids is not None else ", no position_ids"))
    logits = decoder.step(input_ids, position_ids)
    return CausalLMOutputWithPast(logits=logits, past_key_values=decoder.cache)


def inferred_mask(input_ids: torch.Tensor, config: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    """The attention mask transformers' ``generate()`` infers for ``input_ids`` (B, L) given none: the tokens that
    are not the padding id, when the prompt holds that id and it is not an end-of-sequence id; else all ones."""
    pad = kwargs.get("pad_token_id", getattr(config, "pad_token_id", None))
    eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if pad is None or pad in eos or not bool((input_ids == pad).any()):
        return torch.ones_like(input_ids)
    return input_ids.ne(pad).long()


class HeadwiseCausalLM:
    """Mixin placed before a transformers ``...ForCausalLM`` class (module docstring)."""

    rtpurbo_headwise = True  # converted.HEADWISE_MARKER: base_class() skips the classes that carry it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give a subclass that has a base model class the base ``forward``'s signature: transformers'
        ``generate()`` passes ``position_ids`` (counted along the attention mask, so left padding does not
        shift RoPE) only to a ``forward`` that declares them."""
        super().__init_subclass__(**kwargs)
        base_forward = getattr(super(HeadwiseCausalLM, cls), "forward", None)
        if base_forward is None:  # a mixin refining this one, not yet placed before a model class
            return

        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            return HeadwiseCausalLM.forward(self, *args, **kwargs)

        # the signature and docs, not ``__wrapped__``: unwrapping (accelerate's unwrap_model) must stop here
        forward.__signature__ = inspect.signature(base_forward)
        forward.__doc__, forward.__name__ = base_forward.__doc__, "forward"
        forward.__qualname__ = base_forward.__qualname__
        cls.forward = forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("output_attentions"):  # (the config's flag transformers refuses for this attention itself)
            raise ValueError("a converted model returns no attention weights: its kernels never form them (retrieval "
                             "heads over their selection, local heads over a window); take attention maps from the "
                             "base model (rtpurbo.convert.unconvert, or the directory loaded without "
                             "trust_remote_code)")
        decoder = getattr(given_cache(kwargs), "graphed_decoder", None)
        if decoder is not None and not decoder.in_step:  # generate(cuda_graph=True)
            return _graphed_step(decoder, args, kwargs)
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = self.config.use_cache
        if given_cache(kwargs) is None and use_cache and runs_sparse(self):
            if self.training and getattr(self, "is_gradient_checkpointing", False):
                kwargs["use_cache"] = False  # what transformers does then anyway, without its warning
            else:
                kwargs[cache_kwarg()] = HeadwiseCache(self)
        return super().forward(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return generate(self, *args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict | None = None, push_to_hub: bool = False,
                        max_shard_size: int | str = "50GB", **kwargs: Any) -> None:
        """Write the directory ``rtpurbo export`` writes, without the tokenizer
        (:func:`rtpurbo.export.writer.save_directory`): ``from_pretrained(save_directory, trust_remote_code=True)``
        loads this sparse model back, plain ``from_pretrained`` the dense base. LoRA adapters are folded into the
        written weights, not into the model, so training can go on after a checkpoint.

        The arguments are transformers'. Refused (ValueError): a caller's ``state_dict``, ``safe_serialization=False``,
        a ``variant``, ``distributed_checkpoint=True`` and ``push_to_hub=True`` (``model.push_to_hub(repo_id)`` saves
        through this method). With ``is_main_process=False`` nothing is written. Other keyword arguments (``token``,
        ``save_peft_format``, ...) are ignored. As transformers does, ``config.architectures`` becomes the class
        written (the base class). A model that is no longer converted saves as its base class does.
        """
        if getattr(self, "rtpurbo_plan", None) is None:
            return super().save_pretrained(save_directory, is_main_process=is_main_process, state_dict=state_dict,
                                           push_to_hub=push_to_hub, max_shard_size=max_shard_size, **kwargs)
        if state_dict is not None:
            raise ValueError("save_pretrained of a converted rtpurbo model writes its own tensors (base layout, LoRA "
                             "folded in, indexers) and cannot map a caller's state_dict: call save_pretrained without "
                             "state_dict on a process that holds the whole model")
        if kwargs.get("safe_serialization", True) is False:
            raise ValueError("a converted rtpurbo model is saved as safetensors only (what from_pretrained of the "
                             "sparse model reads): drop safe_serialization=False")
        if kwargs.get("variant") is not None:
            raise ValueError("a converted rtpurbo model is saved without a weights variant (the sparse model reads "
                             "model.safetensors): drop variant=")
        if kwargs.get("distributed_checkpoint"):
            raise ValueError("a converted rtpurbo model cannot be saved as a distributed checkpoint: gather the model "
                             "onto one process and call save_pretrained without distributed_checkpoint")
        if push_to_hub:
            raise ValueError("save_pretrained(push_to_hub=True) is not supported for a converted rtpurbo model: call "
                             "model.push_to_hub(repo_id), or save_pretrained(save_directory) and then "
                             "huggingface_hub.upload_folder(repo_id=..., folder_path=save_directory)")
        self.config.architectures = [base_class(self).__name__]  # as transformers records the class saved
        if not is_main_process:
            return None
        from .export import writer  # lazily: export/ (its runtime) builds on this module

        writer.save_directory(self, save_directory, max_shard_size=max_shard_size)
        return None


@functools.cache
def headwise_class(base: type) -> type:
    """``base`` (a transformers causal-LM class) with :class:`HeadwiseCausalLM` before it. Its ``__name__`` is the
    base's, so ``save_pretrained`` still writes the base class into ``architectures``; it is found (pickle) as
    ``rtpurbo.causal_lm.Headwise<base name>``, which this module builds on demand (:func:`__getattr__`)."""
    if issubclass(base, HeadwiseCausalLM):
        return base
    namespace = {"__module__": __name__, "__qualname__": PREFIX + base.__name__, "__doc__": base.__doc__}
    return type(base.__name__, (HeadwiseCausalLM, base), namespace)


PREFIX = "Headwise"


def __getattr__(name: str) -> type:
    """``Headwise<transformers class>`` -> :func:`headwise_class` of it (how pickle finds a converted model's class)."""
    import transformers

    base = getattr(transformers, name[len(PREFIX):], None) if name.startswith(PREFIX) else None
    if not isinstance(base, type):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return headwise_class(base)


