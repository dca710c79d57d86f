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
