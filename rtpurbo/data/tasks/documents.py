"""Document tasks: a question about one item of a long technical text or code file."""
from __future__ import annotations

import re
from typing import Any, Callable

from ..needles import encode_plain
from .corpus import TextItem
from .prompt import Ambiguous, Context, ContextFn, Frame, check_boundary


def _window(tokenizer: Any, text: str, anchor: int, evidence_end: int, budget: int, depth: float) -> list[int]:
    """``budget`` ids of ``text`` with char ``anchor`` at ``depth``; ids up to ``evidence_end`` included."""
    span = 8 * budget
    left = encode_plain(tokenizer, text[max(0, anchor - span) : anchor])
    right = encode_plain(tokenizer, text[anchor : anchor + span])
    evidence = len(encode_plain(tokenizer, text[anchor:evidence_end]))
    n_left = min(len(left), round(depth * budget), budget - evidence)
    n_left = max(n_left, budget - len(right), 0)
    if n_left > len(left) or evidence > budget:
        raise Ambiguous("the document around the chosen item is too short for this length")
    return left[len(left) - n_left :] + right[: budget - n_left]


def _window_context(ctx: Context, text: str, item: TextItem, unique: Callable[[str], bool]) -> ContextFn:
    """A window of ``text`` with ``item`` at the sample's depth; raises Ambiguous unless ``unique``."""

    def build(budget: int) -> tuple[list[int], list[tuple[int, int]]]:
        ids = _window(ctx.tokenizer, text, item.anchor, item.evidence_end, budget, ctx.depth)
        if not unique(ctx.tokenizer.decode(ids)):
            raise Ambiguous(f"{item.kind} {item.name} is ambiguous in its window")
        return ids, []

    return build


def doc_qa(ctx: Context) -> tuple[Frame, ContextFn]:
    """Which function/class does this sentence of the documentation describe?"""
    items = ctx.corpus.doc_items
    if not items:
        raise ValueError("the technical text has no documented functions")
    item = items[ctx.rng.randrange(len(items))]
    kind, name, sentence = item.kind, item.name, item.detail
    frame = Frame(
        "Read the following documentation carefully. You will be asked a question about it.",
        f'Which {kind} does the documentation above describe with the sentence "{sentence}"? Give its name.',
        f"The {kind} described with that sentence is", name, (name,),
    )
    check_boundary(ctx.tokenizer, frame)

    def unique(window: str) -> bool:
        return window.count(sentence) == 1 and len(re.findall(rf":: +{re.escape(name)}\b", window)) == 1

    return frame, _window_context(ctx, ctx.corpus.docs, item, unique)


def code_function(ctx: Context) -> tuple[Frame, ContextFn]:
    """Complete the definition line of a named function of a long code file."""
    items = ctx.corpus.code_items
    if not items:
        raise ValueError("the code text has no usable function definitions")
    item = items[ctx.rng.randrange(len(items))]
    name, rest, params = item.name, item.detail, item.params
    frame = Frame(
        "Read the following Python code carefully. You will be asked about one of its functions.",
        f"Write the complete definition line (the line starting with `def`) of the function `{name}` "
        "in the code above.",
        f"def {name}(", rest, params, separator="",
    )
    check_boundary(ctx.tokenizer, frame)
    return frame, _window_context(ctx, ctx.corpus.code, item, lambda window: window.count(f"def {name}(") == 1)
