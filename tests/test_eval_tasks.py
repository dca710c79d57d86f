"""Eval task generators: lengths, exact answer ids and spans, determinism, seeds, dev-pool only.

Uses the embedded SmolLM2 tokenizer (skipped without it) and a synthetic DevCorpus, so
nothing is installed or read from disk.
"""
import random

import pytest

from rtpurbo.data.needles import SEED_NAMESPACE_SIZE, SEED_NAMESPACES
from rtpurbo.data.sources import SOURCES, check_not_reserved
from rtpurbo.eval.suite import PPL_SOURCES
from rtpurbo.eval.tasks import (
    GEN_MARGIN,
    PROSE_SOURCES,
    SINGLE_NEEDLE,
    TASKS,
    DevCorpus,
    PromptFormat,
    make_task_sample,
    make_task_samples,
    sample_depth,
    sample_seed,
)

SYLLABLES = ("ka", "lo", "mi", "ren", "to", "sa", "vel", "dun", "pri", "no", "ta", "gor")
WORDS = sorted({a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES})  # 4-9 letters, 1700 words


def synthetic_corpus(seed: int = 0) -> DevCorpus:
    """Prose over WORDS (each word many times), reST-like docs, and code: nothing read from disk."""
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
    return DevCorpus(prose=prose, docs=docs, code=code)


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer):
    return smollm_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


@pytest.mark.parametrize("task", TASKS)
def test_samples_fit_length_and_answers_are_exact(task, tokenizer, corpus):
    fmt = PromptFormat.for_tokenizer(tokenizer)
    for length in (1024, 2048):
        for sample in make_task_samples(task, tokenizer, corpus, length, 3, fmt):
            total = len(sample.prompt_ids) + sample.max_new_tokens
            assert total <= length and total >= 0.97 * length
            assert sample.max_new_tokens == len(sample.answer_ids) + GEN_MARGIN
            assert sample.prompt_ids[: len(fmt.head)] == fmt.head
            # the answer ids are the tokenisation of the answer text after the prompt
            assert tokenizer.decode(sample.answer_ids).strip() == sample.answer_text
            whole = tokenizer.decode(sample.prompt_ids + sample.answer_ids)
            assert whole.endswith(sample.answer_text)
            for (start, end), item in zip(sample.spans, sample.answers):
                assert tokenizer.decode(sample.prompt_ids[start:end]).strip() == item
            if task in SINGLE_NEEDLE:
                (start, end), = sample.spans
                assert sample.prompt_ids[start:end] == sample.answer_ids


def test_needle_tasks_have_one_span_per_answer_item(tokenizer, corpus):
    for task in ("niah_multivalue", "niah_multiquery", "variable_tracking", "niah_multikey"):
        sample = make_task_sample(task, tokenizer, corpus, 2048, 0)
        assert len(sample.spans) == len(sample.answers)
    multivalue = make_task_sample("niah_multivalue", tokenizer, corpus, 2048, 1)
    assert [s for s, _ in multivalue.spans] == sorted(s for s, _ in multivalue.spans)  # context order


def test_list_tasks_answer_is_what_the_list_says(tokenizer, corpus):
    sample = make_task_sample("common_words", tokenizer, corpus, 2048, 0)
    text = tokenizer.decode(sample.prompt_ids)
    items = [line.split(". ", 1)[1] for line in text.splitlines() if ". " in line and line.split(". ")[0].isdigit()]
    counts = {w: items.count(w) for w in set(items)}
    top = sorted(counts.values(), reverse=True)
    assert {w for w in sample.answers} == {w for w, c in counts.items() if c >= top[9]}
    assert sample.answers == list(dict.fromkeys(w for w in items if w in sample.answers))  # first-appearance order
    sample = make_task_sample("frequent_words", tokenizer, corpus, 2048, 0)
    words = tokenizer.decode(sample.prompt_ids).split("\n\n")[1].split()
    ranked = sorted(set(words), key=words.count, reverse=True)
    assert ranked[:3] == sample.answers


def test_document_tasks_point_at_their_item(tokenizer, corpus):
    qa = make_task_sample("doc_qa", tokenizer, corpus, 2048, 2)
    text = tokenizer.decode(qa.prompt_ids)
    assert f".. function:: {qa.answer_text}(" in text
    code = make_task_sample("code_function", tokenizer, corpus, 2048, 2)
    name = tokenizer.decode(code.prompt_ids).rsplit("def ", 1)[1].rstrip("(")
    assert f"def {name}({code.answer_text}" in tokenizer.decode(code.prompt_ids)
    assert code.answers == ["alpha", "beta", "rest"]  # items whose answer starts inside a token are skipped


def test_deterministic_and_length_dependent(tokenizer, corpus):
    a = make_task_sample("niah_word", tokenizer, corpus, 1024, 4)
    b = make_task_sample("niah_word", tokenizer, corpus, 1024, 4)
    c = make_task_sample("niah_word", tokenizer, corpus, 2048, 4)
    assert a == b
    assert a.prompt_ids != c.prompt_ids and a.seed == c.seed and a.depth == c.depth


def test_seeds_live_in_the_eval_namespace_and_never_collide():
    seeds = {sample_seed(t, i) for t in TASKS for i in (0, 1, 99, 49_999)}
    assert len(seeds) == len(TASKS) * 4
    lo = SEED_NAMESPACES["eval"]
    assert all(lo <= s < lo + SEED_NAMESPACE_SIZE for s in seeds)
    with pytest.raises(ValueError):
        sample_seed("niah_number", 50_000)
    with pytest.raises(ValueError):
        sample_seed("ruler_qa", 0)


def test_depths_spread_over_every_prefix():
    for task in TASKS:
        depths = [sample_depth(task, i) for i in range(20)]
        assert all(0.05 <= d <= 0.95 for d in depths)
        assert len({int(d * 5) for d in depths[:10]}) == 5  # ten samples already cover five depth bins
    assert len({int(sample_depth(task, 0) * 5) for task in SINGLE_NEEDLE}) == 3  # one sample per task, three depths


def test_sources_are_dev_pool_and_not_reserved():
    for name in {*PROSE_SOURCES, *PPL_SOURCES, "cpython-stdlib"}:
        check_not_reserved(name)
        assert SOURCES[name].pool == "dev"


def test_too_short_length_is_a_clear_error(tokenizer, corpus):
    with pytest.raises(ValueError, match="context tokens"):
        make_task_sample("niah_uuid", tokenizer, corpus, 128, 0)


def test_plain_format_without_chat_template(tokenizer, corpus):
    fmt = PromptFormat.for_tokenizer(tokenizer, chat=False)
    sample = make_task_sample("niah_number", tokenizer, corpus, 1024, 0, fmt)
    assert "<|im_start|>" not in tokenizer.decode(sample.prompt_ids)
    assert len(sample.prompt_ids) + sample.max_new_tokens == 1024
