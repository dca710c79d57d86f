"""Text generation through the head-wise cache.

``generate`` = (optional) chunked prefill of the prompt through :class:`HeadwiseCache`,
then Hugging Face ``generate()`` continues from the filled cache (greedy or sampling,
batch >= 1 with left padding, streaming).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ._compat import cache_kwarg
from .cache import HeadwiseCache
from .models import stop_token_ids


class PromptTooLong(ValueError):
    """The prompt plus the requested new tokens exceed the model's positions."""


@dataclass
class GenerationResult:
    """Generated ids (B, L_prompt + new), the cache used, and the selection statistics."""

    sequences: torch.Tensor
    cache: HeadwiseCache
    prompt_length: int

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]


def check_length(model: nn.Module, prompt_length: int, max_new_tokens: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt_length + max_new_tokens > limit:
        raise PromptTooLong(
            f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{limit} positions; shorten the prompt or lower --max-new-tokens"
        )


@torch.no_grad()
def prefill(
    model: nn.Module, cache: HeadwiseCache, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int
) -> None:
    """Run ``input_ids`` (B, L) through the model in chunks of ``chunk`` tokens, filling ``cache``."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    for start in range(0, input_ids.shape[1], chunk):
        stop = min(start + chunk, input_ids.shape[1])
        model(
            input_ids=input_ids[:, start:stop],
            attention_mask=attention_mask[:, :stop],
            position_ids=positions[:, start:stop],
            use_cache=True,
            logits_to_keep=1,
            **{cache_kwarg(): cache},
        )


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    prefill_chunk: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    streamer: Any = None,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Generate from a converted model with the head-wise cache.

    Args:
        input_ids: (B, L) prompt ids, left-padded when B > 1.
        attention_mask: (B, L) 1 for tokens, 0 for padding (default: all ones).
        prefill_chunk: prefill the prompt (all but its last token) in chunks of this size.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    check_length(model, input_ids.shape[1], max_new_tokens)
    if prefill_chunk is not None and prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
    cache = HeadwiseCache(model)
    if prefill_chunk is not None and input_ids.shape[1] > 1:
        prefill(model, cache, input_ids[:, :-1], attention_mask[:, :-1], prefill_chunk)
    sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    if not do_sample:
        sampling.update(top_p=None, top_k=None, temperature=None)
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    sequences = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_token_ids(model, tokenizer) if tokenizer is not None else None,
        pad_token_id=pad,
        streamer=streamer,
        use_cache=True,
        **sampling,
        **{cache_kwarg(): cache},
        **generate_kwargs,
    )
    return GenerationResult(sequences, cache, input_ids.shape[1])
