"""Text generation through the head-wise cache.

``generate`` = (optional) chunked prefill of the prompt through :class:`HeadwiseCache`,
then Hugging Face ``generate()`` continues from the filled cache (greedy or sampling,
batch >= 1 with left padding, streaming).

With ``cuda_graph=True`` the decode steps are replayed from a CUDA graph instead
(:class:`rtpurbo.decode_graph.GraphedDecoder` over the cache in static decode mode): the prompt
is prefilled, then a plain loop feeds one token per row and picks the next one (argmax, or a
sample at ``temperature``), stopping when every row has produced an end-of-sequence token. At
batch 1 an eager step is a few hundred small launches, so this is the fast path on a GPU (an
8-layer Llama-3.1-8B-geometry model at 128K on an H200: 3.4 vs 6.3 ms per token eager, see
``benchmarks/results``). On the CPU the same loop runs the graph's eager stand-in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ._compat import cache_kwarg
from .cache import HeadwiseCache
from .causal_lm import sequences_per_prompt
from .decode_graph import GraphedDecoder
from .models import stop_token_ids
from .prefill import prefill


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


def _pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id, 0 without one."""
    return tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0


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
    cuda_graph: bool = False,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Generate from a converted model with the head-wise cache.

    Args:
        input_ids: (B, L) prompt ids, left-padded when B > 1.
        attention_mask: (B, L) 1 for tokens, 0 for padding (default: all ones).
        prefill_chunk: prefill the prompt (all but its last token, which is decoded: with top-p < 1
            its retrieval heads attend over their selection) in chunks of this size (default: one chunk).
        cuda_graph: decode from a CUDA graph (module docstring); takes no ``generate_kwargs``,
            and samples at ``temperature`` only (no top-k / top-p warpers). The prompt's last
            token is always decoded, not prefilled (as with a ``prefill_chunk``): with top-p < 1
            its retrieval heads attend over their selection, not over every key.
    """
    if input_ids.shape[1] < 1:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} hold no prompt token; generation needs at least one")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    check_length(model, input_ids.shape[1], max_new_tokens)
    if prefill_chunk is not None and prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
    if cuda_graph:
        if generate_kwargs:
            raise ValueError(f"cuda_graph decode takes no generate() arguments; got {sorted(generate_kwargs)}")
        if input_ids.shape[1] < 2:
            raise ValueError("cuda_graph decode needs a prompt of at least 2 tokens (one to prefill, one to feed)")
        return _generate_graphed(model, tokenizer, input_ids, attention_mask, max_new_tokens, prefill_chunk,
                                 do_sample, temperature, streamer)
    cache = HeadwiseCache(model)
    if input_ids.shape[1] > 1:  # the prompt but its last token; generate() then decodes from there
        prefill(model, cache, input_ids[:, :-1], attention_mask[:, :-1], prefill_chunk or input_ids.shape[1])
        config = generate_kwargs.get("generation_config") or model.generation_config
        cache.batch_repeat_interleave(sequences_per_prompt(config, generate_kwargs))  # as generate() expands it
    sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    if not do_sample:
        sampling.update(top_p=None, top_k=None, temperature=None)
    defaults = dict(eos_token_id=stop_token_ids(model, tokenizer) if tokenizer is not None else None,
                    pad_token_id=_pad_id(tokenizer), **sampling)
    sequences = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        streamer=streamer,
        use_cache=True,
        **{cache_kwarg(): cache},
        **{**defaults, **generate_kwargs},  # the caller's own stop, padding and sampling arguments win
    )
    return GenerationResult(sequences, cache, input_ids.shape[1])


def _generate_graphed(
    model: nn.Module, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
    prefill_chunk: int | None, do_sample: bool, temperature: float, streamer: Any,
) -> GenerationResult:
    """:func:`generate` with ``cuda_graph=True``: prefill, static decode mode, one graphed step per token."""
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    prompt = input_ids.shape[1]
    cache = HeadwiseCache(model, initial_capacity=prompt - 1 + max_new_tokens)
    prefill(model, cache, input_ids[:, :-1], attention_mask[:, :-1], prefill_chunk or prompt - 1)
    cache.static_decode(prompt - 1 + max_new_tokens)  # every fed token takes a retrieval slot
    decoder = GraphedDecoder(model, cache)
    device = input_ids.device
    stops = torch.tensor(stop_token_ids(model, tokenizer) if tokenizer is not None else [], dtype=torch.long,
                         device=device)
    pad = _pad_id(tokenizer)
    token, position = input_ids[:, -1:], attention_mask.sum(-1, keepdim=True) - 1
    finished = torch.zeros(input_ids.shape[0], 1, dtype=torch.bool, device=device)
    new = []
    for _ in range(max_new_tokens):
        logits = decoder.step(token, position)[:, -1].float()  # (B, V)
        if do_sample:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)
        else:
            token = logits.argmax(-1, keepdim=True)
        token = torch.where(finished, torch.full_like(token, pad), token)
        new.append(token)
        if streamer is not None:
            streamer.put(token.cpu())
        finished |= torch.isin(token, stops)
        if bool(finished.all()):  # one host sync per token; the graph replay itself is asynchronous
            break
        position = position + 1
    if streamer is not None:
        streamer.end()
    return GenerationResult(torch.cat([input_ids, *new], dim=1), cache, prompt)
