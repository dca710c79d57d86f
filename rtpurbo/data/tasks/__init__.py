"""RULER-style long-context tasks generated from a text corpus, with fixed seeds.

Every sample is a chat prompt (the model's template when it has one) whose user turn holds
an instruction, a long context and a question; the assistant turn starts with an answer
prefix, and the gold answer's ids follow it::

    head | instruction | context ........................ | question | tail | prefix || answer

``len(prompt_ids) + max_new_tokens <= length``, where ``max_new_tokens`` is the answer's
length plus :data:`GEN_MARGIN`: a sample "at 4K" fits 4096 positions, generation included.
Pieces are tokenised separately and concatenated; each cut is checked against the
tokenisation of the joined text, so ``answer_ids`` are exactly what the model would produce
(SmolLM2 splits " 4821" into " " + digits: the lone " " then ends the prompt) and, for
needle tasks, ``spans`` (token ranges of ``prompt_ids``) hold the answer items' ids.

Tasks (``TASKS``; the first eleven keep their samples from before the later ones were added):

* single needle with a number, word or UUID value in prose; multi-key (3 distractor keys);
  multi-value (4 values of one key); multi-query (4 keys asked); variable tracking (a chain
  of 4 assignments); common-word and frequent-word extraction; a question about a long
  technical document (python-docs); the definition line of a named function (CPython code);
* ``essay_*``: needles (number, UUID, multi-key, multi-value) in essay-like prose: the
  corpus's prose paragraphs without markup (RULER's essay haystack, from allowed text);
* ``multikey_lines`` / ``multikey_uuid_lines``: nothing but needle lines, each key its own
  value (word keys and numbers; UUID keys and UUIDs), one asked for;
* ``variable_tracking_chains``: two assignment chains with different values in noise;
* ``common_words_close``: common words only three times as frequent as the rare ones.

Splits and seeds: sample ``i`` of task ``t`` uses ``seed_for(namespace, TASK_SEED_BLOCK * t + i)``
with the split's seed namespace: ``eval`` (reported results), ``tune`` (head profiling and
plan search: never reported) or ``train`` (training mixes; namespace ``train_tasks``, cut
from a training-pool corpus). The namespaces are disjoint blocks, so no training sequence
and no tuning prompt is ever an evaluation item. A sample's random stream also depends on
the length, and its needle depth follows a golden-ratio sequence (entered at the task's
index), so any prefix of samples spreads over depths.
"""
from __future__ import annotations

import random
from functools import partial
from typing import Any, Callable

from ..needles import seed_for
from . import aggregation, documents, needle_tasks
from .corpus import PROSE_SOURCES, TaskCorpus, TextItem, load_dev_corpus
from .prompt import GEN_MARGIN, Ambiguous, Context, ContextFn, Frame, PromptFormat, TaskSample, assemble

__all__ = [
    "GEN_MARGIN", "PROSE_SOURCES", "SINGLE_NEEDLE", "SPLITS", "TASKS", "PromptFormat", "TaskCorpus", "TaskSample",
    "TextItem", "load_dev_corpus", "make_task_sample", "make_task_samples", "sample_depth", "sample_seed",
]

_BUILDERS: dict[str, Callable[[Context], tuple[Frame, ContextFn]]] = {
    "niah_number": partial(needle_tasks.niah, kind="number"),
    "niah_word": partial(needle_tasks.niah, kind="word"),
    "niah_uuid": partial(needle_tasks.niah, kind="uuid"),
    "niah_multikey": partial(needle_tasks.niah, kind="number", distractors=needle_tasks.N_DISTRACTORS),
    "niah_multivalue": needle_tasks.niah_multivalue,
    "niah_multiquery": needle_tasks.niah_multiquery,
    "variable_tracking": needle_tasks.variable_tracking,
    "common_words": aggregation.common_words,
    "frequent_words": aggregation.frequent_words,
    "doc_qa": documents.doc_qa,
    "code_function": documents.code_function,
    "essay_niah_number": partial(needle_tasks.niah, kind="number", haystack="essays"),
    "essay_niah_uuid": partial(needle_tasks.niah, kind="uuid", haystack="essays"),
    "essay_multikey": partial(needle_tasks.niah, kind="number", distractors=needle_tasks.N_DISTRACTORS,
                              haystack="essays"),
    "essay_multivalue": partial(needle_tasks.niah_multivalue, haystack="essays"),
    "multikey_lines": partial(needle_tasks.kv_lines, key_kind="word", value_kind="number"),
    "multikey_uuid_lines": partial(needle_tasks.kv_lines, key_kind="uuid", value_kind="uuid"),
    "variable_tracking_chains": needle_tasks.variable_tracking_chains,
    "common_words_close": partial(aggregation.common_words, frequencies=aggregation.close_frequencies),
}
TASKS = tuple(_BUILDERS)
SINGLE_NEEDLE = ("niah_number", "niah_word", "niah_uuid")  # the tasks of the depth x length heatmap
NO_DEPTH = ("common_words", "frequent_words", "common_words_close")  # list tasks: the answer is everywhere
SPLITS = {"eval": "eval", "tune": "tune", "train": "train_tasks"}  # split -> seed namespace
TASK_SEED_BLOCK = 50_000
MAX_ATTEMPTS = 50  # document items tried before giving up


def sample_depth(task: str, i: int) -> float:
    """Depth of sample ``i`` of ``task``: a golden-ratio sequence in [0.05, 0.95], entered at the
    task's index, so every prefix of samples is spread out and tasks start at different depths."""
    return 0.05 + 0.9 * (((i + TASKS.index(task)) * 0.6180339887498949) % 1.0)


def sample_seed(task: str, i: int, split: str = "eval") -> int:
    """Seed of sample ``i`` of ``task`` in the seed namespace of ``split`` (eval, tune, train)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if not 0 <= i < TASK_SEED_BLOCK:
        raise ValueError(f"sample index {i} outside [0, {TASK_SEED_BLOCK})")
    return seed_for(SPLITS[split], TASKS.index(task) * TASK_SEED_BLOCK + i)


def make_task_sample(task: str, tokenizer: Any, corpus: TaskCorpus, length: int, i: int,
                     fmt: PromptFormat | None = None, split: str = "eval") -> TaskSample:
    """Sample ``i`` of ``task`` at ``length`` tokens (prompt + generation budget) of ``split``."""
    seed = sample_seed(task, i, split)
    key = f"rtpurbo-eval/{task}/{length}/{seed}"
    ctx = Context(random.Random(key), corpus, tokenizer, sample_depth(task, i), key)
    fmt = fmt or PromptFormat.for_tokenizer(tokenizer)
    for _ in range(MAX_ATTEMPTS):
        try:
            frame, build = _BUILDERS[task](ctx)
            prompt, answer_ids, spans = assemble(tokenizer, fmt, frame, build, length)
            break
        except Ambiguous:
            continue
    else:
        raise ValueError(f"{task}: no usable item found in {MAX_ATTEMPTS} attempts (seed {seed}); "
                         "is the document text shorter than the length?")
    return TaskSample(task, length, seed, None if task in NO_DEPTH else ctx.depth, prompt, answer_ids,
                      frame.answer_text, list(frame.answers), frame.match, spans)


def make_task_samples(task: str, tokenizer: Any, corpus: TaskCorpus, length: int, n: int,
                      fmt: PromptFormat | None = None, split: str = "eval") -> list[TaskSample]:
    """Samples 0 .. n-1 of ``task`` at ``length``."""
    fmt = fmt or PromptFormat.for_tokenizer(tokenizer)
    return [make_task_sample(task, tokenizer, corpus, length, i, fmt, split) for i in range(n)]
