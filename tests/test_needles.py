"""Synthetic retrieval samples: exact lengths, exact needle spans, depth, seeds.

Most tests use the embedded SmolLM2 tokenizer (loaded once, offline); a few use
small character-level fake tokenizers to show the generic path and its checks.
"""

import random

import pytest
import torch

from rtpurbo.data.needles import (
    KINDS,
    SEED_NAMESPACE_SIZE,
    SEED_NAMESPACES,
    make_sample,
    make_samples,
    seed_for,
    teacher_forced_accuracy,
)

WORDS = "river stone lantern quiet orchard copper harbor meadow signal winter ledger violet engine".split()


def _prose(n_lines: int, seed: int = 0) -> str:
    """Deterministic filler text: lines of one to three short sentences."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(4, 9))).capitalize() + "." for _ in range(rng.randint(1, 3))]
        lines.append(" ".join(sentences))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer):
    return smollm_tokenizer


@pytest.fixture(scope="module")
def haystack_docs():
    return [_prose(400, seed) for seed in range(3)]


class CharTokenizer:
    """One id per character; with `merge_space`, " x" becomes one token like GPT-2's byte-level BPE."""

    def __init__(self, merge_space: bool = False, bos_id: int | None = None):
        self.merge_space, self.bos_id = merge_space, bos_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            if self.merge_space and text[i] == " " and i + 1 < len(text) and text[i + 1] != " ":
                ids.append(100_000 + ord(text[i + 1]))
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return ([self.bos_id] if add_special_tokens and self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return "".join(" " + chr(i - 100_000) if i >= 100_000 else chr(i) for i in ids)


@pytest.mark.real_model
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [333, 1025, 2048])
def test_exact_length_and_needle_spans(tokenizer, haystack_docs, kind, length):
    (sample,) = make_samples(kind, tokenizer, haystack_docs, length, n=1, seed=seed_for("eval", 7))
    assert len(sample.input_ids) == sample.length == length
    assert sample.answer_start == length - len(sample.answer_ids)
    assert tokenizer.decode(sample.answer_ids) == sample.answer_text
    assert len(sample.needle_spans) == 1
    for start, end in sample.needle_spans:
        assert sample.input_ids[start:end] == sample.answer_ids
        assert end <= sample.answer_start
    # SmolLM2: the prompt ends with a lone space token and the answer starts right after it.
    assert tokenizer.decode([sample.input_ids[sample.answer_start - 1]]) == " "


@pytest.mark.real_model
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_depth_is_respected(tokenizer, haystack_docs, kind, depth):
    sample = make_sample(kind, tokenizer, haystack_docs[0], 2048, depth, seed=seed_for("eval", 3))
    needle_start = sample.needle_spans[0][0]
    assert abs(needle_start / sample.answer_start - depth) < 0.05


@pytest.mark.real_model
@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_sample_and_different_seeds_differ(tokenizer, haystack_docs, kind):
    first = make_samples(kind, tokenizer, haystack_docs, 1025, n=3, seed=seed_for("train", 0))
    again = make_samples(kind, tokenizer, haystack_docs, 1025, n=3, seed=seed_for("train", 0))
    other = make_samples(kind, tokenizer, haystack_docs, 1025, n=3, seed=seed_for("train", 3))
    assert [s.input_ids for s in first] == [s.input_ids for s in again]
    assert [s.seed for s in first] == [seed_for("train", i) for i in range(3)]
    assert len({s.answer_text for s in first + other}) == 6
    assert all(a.input_ids != b.input_ids for a, b in zip(first, other))


@pytest.mark.real_model
def test_default_depths_spread_evenly(tokenizer, haystack_docs):
    samples = make_samples("passkey", tokenizer, haystack_docs, 512, n=5, seed=seed_for("profile", 0))
    assert [s.depth for s in samples] == pytest.approx([0.05, 0.275, 0.5, 0.725, 0.95])
    starts = [s.needle_spans[0][0] for s in samples]
    assert starts == sorted(starts)


@pytest.mark.real_model
@pytest.mark.parametrize("kind", KINDS)
def test_too_short_length_raises(tokenizer, haystack_docs, kind):
    with pytest.raises(ValueError, match="too short"):
        make_sample(kind, tokenizer, haystack_docs[0], 40, 0.5, seed=1)


@pytest.mark.real_model
def test_short_haystack_is_repeated(tokenizer):
    sample = make_sample("passkey", tokenizer, "One line of text.\nAnother line.", 600, 0.5, seed=2)
    assert sample.length == len(sample.input_ids) == 600


def test_bad_arguments_raise():
    tokenizer = CharTokenizer()
    with pytest.raises(ValueError, match="unknown needle kind"):
        make_sample("haystack", tokenizer, _prose(50), 2000, 0.5, seed=0)
    with pytest.raises(ValueError, match="depth"):
        make_sample("passkey", tokenizer, _prose(50), 2000, 1.5, seed=0)
    with pytest.raises(ValueError, match="empty"):
        make_sample("passkey", tokenizer, "  ", 2000, 0.5, seed=0)
    with pytest.raises(ValueError, match="depths"):
        make_samples("passkey", tokenizer, [_prose(50)], 2000, n=2, seed=0, depths=[0.5])


@pytest.mark.parametrize("kind", KINDS)
def test_other_tokenizer_with_bos(kind):
    tokenizer = CharTokenizer(bos_id=1)
    sample = make_sample(kind, tokenizer, _prose(200), 3001, 0.3, seed=11)
    assert sample.input_ids[0] == 1 and len(sample.input_ids) == 3001
    start, end = sample.needle_spans[0]
    assert tokenizer.decode(sample.input_ids[start:end]) == sample.answer_text


def test_tokenizer_that_merges_spaces_is_refused():
    with pytest.raises(ValueError, match="differently from its pieces"):
        make_sample("passkey", CharTokenizer(merge_space=True), _prose(200), 3000, 0.5, seed=0)


def test_seed_namespaces_are_disjoint():
    blocks = sorted((base, base + SEED_NAMESPACE_SIZE) for base in SEED_NAMESPACES.values())
    assert all(end <= next_start for (_, end), (next_start, _) in zip(blocks, blocks[1:]))
    assert seed_for("eval", 0) == SEED_NAMESPACES["eval"]
    with pytest.raises(ValueError, match="outside"):
        seed_for("train", SEED_NAMESPACE_SIZE)
    with pytest.raises(ValueError, match="unknown seed namespace"):
        seed_for("test", 0)
    with pytest.raises(ValueError, match="run past"):
        make_samples("passkey", CharTokenizer(), [_prose(50)], 2000, n=2, seed=seed_for("profile", SEED_NAMESPACE_SIZE - 1))


def test_teacher_forced_accuracy():
    sample = make_sample("passkey", CharTokenizer(), _prose(100), 1500, 0.5, seed=5)
    next_ids = torch.tensor(sample.input_ids[1:] + [0])  # perfect next-token predictions
    logits = torch.nn.functional.one_hot(next_ids, num_classes=200).float()
    assert teacher_forced_accuracy(logits, sample) == 1.0
    assert teacher_forced_accuracy(next_ids, sample) == 1.0
    wrong = next_ids.clone()
    wrong[sample.answer_start - 1] = 0
    assert teacher_forced_accuracy(wrong, sample) == pytest.approx(1 - 1 / len(sample.answer_ids))
    assert teacher_forced_accuracy(wrong.tolist(), sample) == pytest.approx(1 - 1 / len(sample.answer_ids))
    with pytest.raises(ValueError, match="positions"):
        teacher_forced_accuracy(next_ids[:-5], sample)
    with pytest.raises(ValueError, match="shape"):
        teacher_forced_accuracy(logits[None], sample)
