"""Tiny converted models with trained-looking indexers and LoRA, as artifacts and exported directories."""
from __future__ import annotations

from pathlib import Path

import torch

from rtpurbo import io
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.export import export
from rtpurbo.models import load_base
from rtpurbo.testing import save_tiny_checkpoint
from rtpurbo.lora import LoraSettings, attach_lora

# top-p 0.5 over a few keys with no floor, selecting at every length: decode really drops keys, so a wrong
# cache or indexer shows
SPARSE = dict(window=4, sinks=1, top_p=0.5, min_tokens=1, recent=1, seqlen_threshold=0)
# a chat template the word-level test tokenizer can encode (servers and harnesses apply it)
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"


def trained_artifact(tmp_path: Path, family: str, retrieval: list[list[int]], reorder: bool = False,
                     lora: bool = True) -> tuple[Path, Path]:
    """An artifact over a tiny checkpoint with perturbed indexers (and LoRA): (artifact dir, base dir)."""
    base = save_tiny_checkpoint(family, tmp_path / "base")
    model, _ = load_base(str(base))
    plan = HeadPlan(model.config.num_hidden_layers, model.config.num_key_value_heads,
                    model.config.num_attention_heads, retrieval)
    convert(model, plan, SparseConfig(reorder_heads=reorder, **SPARSE))
    if lora:
        attach_lora(model, LoraSettings(r=4))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or ".indexer." in name:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return io.save(model, tmp_path / "artifact"), base


def exported(tmp_path: Path, artifact: Path, chat_template: bool = False, **kwargs) -> Path:
    """``rtpurbo export`` of ``artifact`` into ``tmp_path / "hf"``."""
    model, tokenizer = io.load(artifact, merge_adapters=True)
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return export(model, tokenizer, tmp_path / "hf", **kwargs)
