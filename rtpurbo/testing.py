"""Tiny deterministic models of every supported family, built from config (no download), and a
synthetic task corpus.

Used by the tests, by benchmarks that need a model of a given geometry with random weights,
and by the dry runs of the reproduction scripts.
"""
from __future__ import annotations

import random
from typing import Any

import torch

# family -> config overrides giving each family a different GQA ratio and its quirks
TINY_GEOMETRY: dict[str, dict[str, Any]] = {
    "llama": dict(num_attention_heads=6, num_key_value_heads=2),  # G = 3
    "mistral": dict(num_attention_heads=8, num_key_value_heads=2, sliding_window=None),  # G = 4
    "qwen2": dict(num_attention_heads=4, num_key_value_heads=4),  # G = 1, q/k/v biases
    "qwen3": dict(num_attention_heads=8, num_key_value_heads=1),  # G = 8, q_norm / k_norm
    "qwen3_moe": dict(
        num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
    ),
}


def tiny_config(family: str, num_layers: int = 2, head_dim: int = 16, vocab_size: int = 256, **overrides: Any):
    """A transformers config of ``family`` with a few small layers."""
    from transformers import AutoConfig

    geometry = dict(TINY_GEOMETRY[family])
    geometry.update(overrides)
    num_heads = geometry["num_attention_heads"]
    return AutoConfig.for_model(
        family,
        hidden_size=num_heads * head_dim,
        head_dim=head_dim,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        **geometry,
    )


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides: Any):
    """A randomly initialised causal LM of ``family`` (eval mode), deterministic in ``seed``.

    Weights are drawn with a larger spread than the default initialisation so that
    attention is far from uniform and head-wise masking visibly changes the output.
    """
    from transformers import AutoModelForCausalLM

    from ._compat import set_attn_implementation

    config = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            elif "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    set_attn_implementation(model, "sdpa")
    return model.eval()


def tiny_tokenizer(vocab_size: int = 256):
    """A whitespace word-level fast tokenizer over ``w0 .. w{n}`` plus digits, offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    words = [str(d) for d in range(10)] + [f"w{i}" for i in range(vocab_size - len(specials) - 10)]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def save_tiny_checkpoint(family: str, directory, seed: int = 0, **config_overrides: Any):
    """Write a tiny model + tokenizer as a Hugging Face directory (for load/save tests)."""
    model = tiny_model(family, seed=seed, **config_overrides)
    model.save_pretrained(directory)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(directory)
    return directory


def save_hub_cache(model_dir, hf_home, repo_id: str, revision: str = "main") -> str:
    """Lay out the files of ``model_dir`` as the Hugging Face Hub cache does; returns the commit.

    ``HF_HOME/hub/models--org--name/`` gets ``blobs/`` (named by sha256 for weights, by git
    blob sha1 for the rest, as the Hub's LFS and git etags are), ``refs/<revision>`` holding
    a 40-hex commit, and ``snapshots/<commit>/`` with relative symlinks to the blobs.
    """
    import hashlib
    import os
    from pathlib import Path

    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
    blobs = {}
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            blobs[path] = hashlib.sha256(data).hexdigest()
        else:
            blobs[path] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    commit = hashlib.sha1("".join(f"{p.relative_to(model_dir)}:{b}" for p, b in blobs.items()).encode()).hexdigest()
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for path, blob in blobs.items():
        (repo / "blobs" / blob).write_bytes(path.read_bytes())
        link = repo / "snapshots" / commit / path.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    (repo / "refs" / revision).write_text(commit)  # no newline, as the Hub writes it
    return commit


SYLLABLES = ("ka", "lo", "mi", "ren", "to", "sa", "vel", "dun", "pri", "no", "ta", "gor")
WORDS = sorted({a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES})  # 4-9 letters, 1700 words


def synthetic_corpus(seed: int = 0):
    """A :class:`rtpurbo.data.tasks.TaskCorpus` of prose over WORDS (each word many times),
    reST-like docs and code: nothing read from disk."""
    from .data.tasks import TaskCorpus

    rng = random.Random(seed)
    prose = ["\n".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 12))).capitalize() + "." for _ in range(1500))
             for _ in range(3)]
    docs = "\n\n".join(
        f".. function:: tool_{i}(path, mode)\n\n   Open the {rng.choice(WORDS)} {rng.choice(WORDS)} store number {i} "
        f"and return its {rng.choice(WORDS)} handle.\n\n   More text about {rng.choice(WORDS)}.\n" for i in range(300)
    )
    code = "\n\n".join(  # SmolLM2 tokenises "(*" as one token: odd items can never be asked
        f"def compute_{i}(alpha, beta=None, *rest):\n    total = alpha + {i}\n    return total\n" if i % 2 == 0 else
        f"def compute_{i}(*items):\n    return items\n" for i in range(400)
    )
    return TaskCorpus(prose=prose, docs=docs, code=code)
