"""Long-context task generators: lengths, exact answer ids and spans, determinism, seeds, dev-pool only.

Uses the embedded SmolLM2 tokenizer (skipped without it) and a synthetic TaskCorpus, so
nothing is installed or read from disk.
"""
import re

import pytest

from rtpurbo.data.needles import SEED_NAMESPACE_SIZE, SEED_NAMESPACES
from rtpurbo.data.sources import SOURCES, check_not_reserved
from rtpurbo.data.task_data import PPL_SOURCES, build_task_data
from rtpurbo.data.tasks import (
    GEN_MARGIN,
    PROSE_SOURCES,
    SINGLE_NEEDLE,
    SPLITS,
    TASKS,
    TaskCorpus,
    PromptFormat,
    make_task_sample,
    make_task_samples,
    sample_depth,
    sample_seed,
)
from rtpurbo.data.tasks.corpus import prose_paragraphs
from rtpurbo.testing import synthetic_corpus

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
    splits = {split: {sample_seed(t, i, split) for t in TASKS for i in (0, 49_999)} for split in SPLITS}
    for split, namespace in SPLITS.items():  # tuning and training items are never evaluation items
        lo = SEED_NAMESPACES[namespace]
        assert all(lo <= s < lo + SEED_NAMESPACE_SIZE for s in splits[split])
    assert not splits["eval"] & splits["tune"] and not splits["eval"] & splits["train"]
    assert not splits["train"] & set(range(SEED_NAMESPACES["train"], SEED_NAMESPACES["train"] + SEED_NAMESPACE_SIZE))
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


def test_splits_give_other_samples(tokenizer, corpus):
    eval_sample = make_task_sample("essay_niah_number", tokenizer, corpus, 1024, 0)
    tune_sample = make_task_sample("essay_niah_number", tokenizer, corpus, 1024, 0, split="tune")
    assert tune_sample.seed != eval_sample.seed and tune_sample.prompt_ids != eval_sample.prompt_ids
    assert tune_sample.depth == eval_sample.depth  # the same depth sequence
    with pytest.raises(ValueError, match="unknown split"):
        sample_seed("niah_number", 0, "test")


RST = """Title
=====

.. function:: open(path)

   Open it.

The :func:`~os.path.join` function joins ``paths`` for you, see `the docs <https://x>`_.  It is
useful when *portable* code must build file names; this paragraph is long enough to count as prose
in the essays that needle tasks hide their values in.

>>> open("x")

   An indented block of code or a quote, which is not essay prose at all, however long it may be, really.

- a list item that is long enough to pass the length filter if it were prose, which it is not at all
"""


def test_essays_are_prose_paragraphs_without_markup():
    paragraphs = prose_paragraphs(RST)
    assert paragraphs == ["The os.path.join function joins paths for you, see the docs.  It is useful when portable "
                          "code must build file names; this paragraph is long enough to count as prose in the essays that needle "
                          "tasks hide their values in."]
    essay_corpus = TaskCorpus(prose=[], docs="\n\n".join([RST] * 3), code="")
    assert essay_corpus.essays == ["\n\n".join(paragraphs * 3)]


def test_lines_tasks_are_all_needles_with_one_answer(tokenizer, corpus):
    for task, noun in (("multikey_lines", "numbers"), ("multikey_uuid_lines", "UUIDs")):
        for i in range(3):
            sample = make_task_sample(task, tokenizer, corpus, 2048, i)
            text = tokenizer.decode(sample.prompt_ids)
            lines = [line for line in text.splitlines() if line.startswith("One of the special magic")]
            keys = [line.split(" for ", 1)[1].split(" is: ")[0] for line in lines]
            assert len(lines) > 10 and len(set(keys)) == len(keys)
            asked = text.rsplit(f"special magic {noun[:-1]} for ", 1)[1].split(" mentioned")[0]
            (line,) = [line for line in lines if f" for {asked} is: " in line]
            assert line.endswith(f"is: {sample.answer_text}.")
            position = lines.index(line) / (len(lines) - 1)
            assert abs(position - sample.depth) < 0.1


def test_variable_tracking_chains_ask_one_chain(tokenizer, corpus):
    sample = make_task_sample("variable_tracking_chains", tokenizer, corpus, 2048, 3)
    text = tokenizer.decode(sample.prompt_ids)
    assigned = dict(re.findall(r"VAR ([A-Z]{5}) = (?:VAR )?(\w+)\.", text))
    assert len(assigned) == 10

    def root(name):
        return assigned[name] if assigned[name].isdigit() else root(assigned[name])

    value = text.rsplit("assigned the value ", 1)[1].split(" ")[0]
    assert {n for n in assigned if root(n) == value} == set(sample.answers)
    assert len({root(n) for n in assigned}) == 2


def test_close_common_words_are_only_three_times_as_frequent(tokenizer, corpus):
    sample = make_task_sample("common_words_close", tokenizer, corpus, 4096, 0)
    items = [line.split(". ", 1)[1] for line in tokenizer.decode(sample.prompt_ids).splitlines()
             if ". " in line and line.split(". ")[0].isdigit()]
    counts = {w: items.count(w) for w in set(items)}
    assert {counts[w] for w in sample.answers} == {6}
    assert {c for w, c in counts.items() if w not in sample.answers} == {2}


def test_corpus_file_round_trip(tmp_path, corpus):
    loaded = TaskCorpus.load(corpus.save(tmp_path / "corpus.json.gz"))
    assert (loaded.prose, loaded.docs, loaded.code, loaded.pool) == (corpus.prose, corpus.docs, corpus.code, "dev")
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a task corpus"):
        TaskCorpus.load(tmp_path / "bad.json.gz")


def test_build_data_in_workers_is_the_same_and_splits_differ(tokenizer, corpus):
    base = dict(lengths=[1024], samples=2, tasks=["niah_number", "multikey_lines"], corpus=corpus, progress=False)
    one = build_task_data(tokenizer, **base)
    two = build_task_data(tokenizer, **base, workers=2)
    assert one.samples == two.samples and len(one.samples) == 4 and one.meta["split"] == "eval"
    tune = build_task_data(tokenizer, **base, split="tune")
    assert tune.meta["split"] == "tune" and not {s.seed for s in tune.samples} & {s.seed for s in one.samples}
    with pytest.raises(ValueError, match="at most 32 perplexity windows"):
        build_task_data(tokenizer, **base, ppl_windows=33)
    more = build_task_data(tokenizer, **{**base, "samples": 1}, first_sample=1)  # sample 1 alone, as in `one`
    assert more.samples == [s for s in one.samples if s.seed in {m.seed for m in more.samples}]
    assert len(more.samples) == 2 and more.meta["first_sample"] == 1
    with pytest.raises(ValueError, match="first_sample"):
        build_task_data(tokenizer, **base, first_sample=-1)
    train_corpus = TaskCorpus(corpus.prose, corpus.docs, corpus.code, pool="train")
    with pytest.raises(ValueError, match="dev pool"):
        build_task_data(tokenizer, **{**base, "corpus": train_corpus})
