"""Prompt assembly shared by every task: chat frame, exact answer ids, context budget.

A prompt is ``head | instruction | context | question | tail | prefix`` and the gold answer's
ids follow it; the context fills what the length leaves (see :func:`assemble`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from ..needles import encode_plain, leading_special_ids
from .corpus import TaskCorpus

GEN_MARGIN = 8  # new tokens allowed beyond the gold answer's length
MIN_CONTEXT = 64
_MARK = "\x00RTPURBO_USER_CONTENT\x00"


@dataclass
class TaskSample:
    """One evaluation prompt and its gold answer.

    prompt_ids: (P,) chat-formatted prompt ending where the answer starts.
    answer_ids: (A,) gold answer tokens (the teacher-forced target).
    answers: gold items; ``match`` says how the generated answer is compared:
        ``text`` (whole answer), ``list`` (items in order) or ``set`` (items in any order).
    spans: for needle tasks, [start, end) ranges of ``prompt_ids`` holding each item.
    depth: where the answer's evidence sits in the context (0..1), None for list tasks.
    """

    task: str
    length: int
    seed: int
    depth: float | None
    prompt_ids: list[int]
    answer_ids: list[int]
    answer_text: str
    answers: list[str]
    match: str
    spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def max_new_tokens(self) -> int:
        return len(self.answer_ids) + GEN_MARGIN


@dataclass(frozen=True)
class Frame:
    """The words around the context; ``separator`` joins the answer prefix and the answer."""

    instruction: str
    question: str
    answer_prefix: str
    answer_text: str
    answers: tuple[str, ...]
    match: str = "text"
    separator: str = " "


@dataclass(frozen=True)
class PromptFormat:
    """Ids before the user's message (``head``) and between it and the answer prefix (``tail``)."""

    head: list[int]
    tail: list[int]
    chat: bool

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, chat: bool = True) -> "PromptFormat":
        """The tokenizer's chat template when it has one (and ``chat``), else plain text."""
        if chat and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": _MARK}], tokenize=False, add_generation_prompt=True
            )
            before, found, after = text.partition(_MARK)
            if not found:
                raise ValueError("the chat template dropped the user message; pass chat=False")
            return cls(encode_plain(tokenizer, before), encode_plain(tokenizer, after), True)
        return cls(leading_special_ids(tokenizer), encode_plain(tokenizer, "\n"), False)


@dataclass
class Context:
    """What a task needs to build its context: randomness, text, tokenizer, depth, cache key."""

    rng: random.Random
    corpus: TaskCorpus
    tokenizer: Any
    depth: float
    key: str


ContextFn = Callable[[int], tuple[list[int], list[tuple[int, int]]]]  # budget -> (ids, item spans)


class Ambiguous(ValueError):
    """Pick another item: this one is ambiguous inside its window, the text around it is too
    short, or its answer does not start on a token boundary (``def f(`` + ``*a`` gives ``(*``)."""


def prefix_len(tokenizer: Any, whole: list[int], text: str) -> int:
    """Number of leading ids of ``whole`` that spell ``text`` (trailing spaces may go either side)."""
    for head in dict.fromkeys((text, text.rstrip(" "))):
        ids = encode_plain(tokenizer, head)
        if whole[: len(ids)] == ids:
            return len(ids)
    raise ValueError(
        f"{type(tokenizer).__name__} merges the end of {text[-40:]!r} with the text after it; "
        "the answer would not start on a token boundary"
    )


def answer_split(tokenizer: Any, frame: Frame) -> tuple[list[int], list[int]]:
    """(prefix ids, answer ids) of ``prefix + separator + answer``."""
    whole = encode_plain(tokenizer, frame.answer_prefix + frame.separator + frame.answer_text)
    cut = prefix_len(tokenizer, whole, frame.answer_prefix + frame.separator)
    if cut >= len(whole):
        raise ValueError(f"empty answer ids for {frame.answer_text!r}")
    return whole[:cut], whole[cut:]


def check_boundary(tokenizer: Any, frame: Frame) -> None:
    """Raise :class:`Ambiguous` unless the answer starts on a token boundary."""
    try:
        answer_split(tokenizer, frame)
    except ValueError as err:
        raise Ambiguous(str(err)) from err


def assemble(tokenizer: Any, fmt: PromptFormat, frame: Frame, build: ContextFn, length: int) -> tuple:
    """(prompt ids, answer ids, spans) with the context filling what ``length`` leaves."""
    prefix_ids, answer_ids = answer_split(tokenizer, frame)
    head = fmt.head + encode_plain(tokenizer, frame.instruction + "\n\n")
    question = encode_plain(tokenizer, "\n\n" + frame.question)
    budget = length - GEN_MARGIN - len(answer_ids) - len(head) - len(question) - len(fmt.tail) - len(prefix_ids)
    if budget < MIN_CONTEXT:
        raise ValueError(f"length {length} leaves {budget} context tokens; at least {MIN_CONTEXT} are needed")
    context, spans = build(budget)
    if len(context) > budget:
        raise AssertionError(f"context of {len(context)} tokens exceeds its budget of {budget}")
    prompt = head + context + question + fmt.tail + prefix_ids
    return prompt, answer_ids, [(s + len(head), e + len(head)) for s, e in spans]


def fill(tokenizer: Any, budget: int, render: Callable[[int], str]) -> tuple[int, list[int]]:
    """(n, ids of ``render(n)``) for the largest ``n`` whose ids fit ``budget``.

    Proportional guesses kept inside a bracket [fits, does not fit] that shrinks every step.
    """
    fits, too_long, best = 0, None, None
    n = max(8, budget // 4)
    while too_long is None or too_long - fits > 1:
        ids = encode_plain(tokenizer, render(n))
        if len(ids) <= budget:
            fits, best = n, ids
        else:
            too_long = n
        guess = int(n * budget / len(ids))
        n = max(fits + 1, guess if too_long is None else min(guess, too_long - 1))
    if best is None:
        raise ValueError(f"no list fits {budget} tokens")
    return fits, best
