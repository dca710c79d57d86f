"""Launch shapes of the threshold search on a card's SM count (host arithmetic only; no kernel runs)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")

from rtpurbo.ops.triton import threshold  # noqa: E402

H100_SMS = 132
CUDA = torch.device("cuda")  # only its type is read: no GPU needed


@pytest.fixture
def h100(monkeypatch):
    monkeypatch.setattr(threshold, "_num_sms", lambda device: H100_SMS)


@pytest.mark.parametrize("n_keys, own", [(262144, (1024, 256)), (327680, (1280, 256))])
def test_level0_takes_its_own_chunks_where_the_block_chunks_fill_the_sms_once(h100, n_keys, own):
    assert threshold.level0_chunks(n_keys, 1, CUDA, 2048) == own
    assert threshold._chunks(n_keys, 1, CUDA, 2048, "phased")[0] == 2048  # the other launches' chunks


# 128K: own chunks of 512 keys, under half a block; 384K / 448K / 512K: the block chunks already put 1.5-2 programs
# on an SM; 256K over 2 rows: 2,048-key chunks either way
@pytest.mark.parametrize("n_keys, rows", [(131072, 1), (393216, 1), (458752, 1), (524288, 1), (1 << 20, 1),
                                          (262144, 2), (5000, 1)])
def test_level0_keeps_the_block_chunks_elsewhere(h100, n_keys, rows):
    assert threshold.level0_chunks(n_keys, rows, CUDA, 2048) == threshold._chunks(n_keys, rows, CUDA, 2048, "phased")


def test_the_interpreter_case_takes_level0s_own_chunks():
    """The interpreter's case ``randn-level0-chunks`` (8 SMs on a CPU) runs level 0 in chunks of its own."""
    cpu = torch.device("cpu")
    assert threshold.level0_chunks(9001, 1, cpu, 512) == (768, 12)
    assert threshold._chunks(9001, 1, cpu, 512, "phased") == (1024, 9)


def test_level0_chunks_cover_every_key(h100):
    for n_keys in (1, 255, 256, 70001, 262147, 999999):
        for rows in (1, 3, 8):
            chunk, programs = threshold.level0_chunks(n_keys, rows, CUDA, 2048)
            assert chunk % threshold.LEVEL0_ALIGN == 0 and chunk * programs >= n_keys > chunk * (programs - 1)
