"""Needle tasks: values hidden in a haystack, asked for at the end.

Haystacks: ``prose`` (the corpus's long documents), ``essays`` (its prose paragraphs without
markup: RULER's essay haystack) or ``noise`` (a few plain sentences repeated: nothing to
read but the needles). The multi-key "lines" tasks have no haystack at all: every line is a
needle with its own key (RULER multi-key 2 and 3).
"""
from __future__ import annotations

import math
import random
import string
import uuid
from typing import Any

from ..needles import Needle, SampleTooShort, encode_plain, haystack_ids, haystack_window, insertion_points, line_boundaries
from .prompt import MIN_CONTEXT, Context, ContextFn, Frame, fill, prefix_len

N_DISTRACTORS = 3  # extra keys of multi-key / multi-query; values of multi-value
CHAIN_HOPS = 4
NOISE = "The lake is calm. The road runs north. The lamp is lit. Here we are again. Round and round it goes.\n"
_NOUN = {"number": "number", "word": "word", "uuid": "UUID"}
_HIDDEN = "Some special magic {0}s are hidden in the following text. Remember them: you will be asked about them."


def haystack_texts(ctx: Context, kind: str) -> list[str]:
    """The documents a haystack of ``kind`` (prose, essays, noise) is cut from."""
    if kind == "prose":
        return ctx.corpus.prose
    if kind == "essays":
        if not ctx.corpus.essays:
            raise ValueError("the corpus has no prose paragraphs to make essay haystacks from")
        return ctx.corpus.essays
    if kind == "noise":
        return [NOISE * 2000]  # 200K characters: more than any 8K-token haystack needs
    raise ValueError(f"unknown haystack {kind!r}")


def _needle_ids(tokenizer: Any, needle: Needle) -> tuple[list[int], tuple[int, int]]:
    """Ids of one needle and the [start, end) range of its value inside them."""
    whole = encode_plain(tokenizer, needle.before + needle.value + needle.after)
    start = prefix_len(tokenizer, whole, needle.before)
    end = prefix_len(tokenizer, whole, needle.before + needle.value) if needle.value else start
    return whole, (start, end)


def needle_context(ctx: Context, needles: list[Needle], holders: list[int], haystack: str = "prose") -> ContextFn:
    """A ``haystack`` with ``needles`` at their depths; spans of ``holders``' values."""

    def build(budget: int) -> tuple[list[int], list[tuple[int, int]]]:
        pieces = [_needle_ids(ctx.tokenizer, n) for n in needles]
        n_hay = budget - sum(len(ids) for ids, _ in pieces)
        if n_hay < MIN_CONTEXT:
            raise SampleTooShort(f"needles take {budget - n_hay} of {budget} context tokens; use a longer length")
        hay = haystack_ids(ctx.tokenizer, haystack_window(haystack_texts(ctx, haystack), ctx.rng, 8 * budget), n_hay)
        inserts = insertion_points(needles, [len(ids) for ids, _ in pieces], line_boundaries(ctx.tokenizer, hay))
        out, cursor, spans = [], 0, {}
        for point, i in inserts:
            out += hay[cursor:point]
            cursor = point
            spans[i] = (len(out) + pieces[i][1][0], len(out) + pieces[i][1][1])
            out += pieces[i][0]
        return out + hay[cursor:], [spans[i] for i in holders]

    return build


def _key(rng: random.Random, words: list[str], taken: set[str], kind: str = "word") -> str:
    while True:
        key = f"{rng.choice(words)}-{rng.choice(words)}" if kind == "word" else _uuid(rng)
        if key not in taken:
            taken.add(key)
            return key


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _value(rng: random.Random, kind: str, words: list[str]) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "word":
        return rng.choice(words)
    return _uuid(rng)


def _magic(key: str, value: str, kind: str, depth: float) -> Needle:
    return Needle(f"\nOne of the special magic {_NOUN[kind]}s for {key} is: ", value, ".\n", depth)


def _ask_one(kind: str, key: str, value: str) -> Frame:
    noun = _NOUN[kind]
    return Frame(
        _HIDDEN.format(noun), f"What is the special magic {noun} for {key} mentioned in the text above?",
        f"The special magic {noun} for {key} mentioned in the text above is:", value, (value,),
    )


def niah(ctx: Context, kind: str = "number", distractors: int = 0, haystack: str = "prose") -> tuple[Frame, ContextFn]:
    """One key's value at ``depth``; ``distractors`` other keys with their own values elsewhere."""
    words, taken = ctx.corpus.words, set()
    keys = [_key(ctx.rng, words, taken) for _ in range(1 + distractors)]
    values = [_value(ctx.rng, kind, words) for _ in keys]
    depths = [ctx.depth] + [ctx.rng.random() for _ in keys[1:]]
    needles = [_magic(k, v, kind, d) for k, v, d in zip(keys, values, depths)]
    return _ask_one(kind, keys[0], values[0]), needle_context(ctx, needles, [0], haystack)


def niah_multivalue(ctx: Context, haystack: str = "prose") -> tuple[Frame, ContextFn]:
    """Several values for one key; the answer lists them in context order."""
    key = _key(ctx.rng, ctx.corpus.words, set())
    values: list[str] = []
    while len(values) < 1 + N_DISTRACTORS:
        value = _value(ctx.rng, "number", [])
        values += [value] if value not in values else []
    depths = [ctx.depth] + [ctx.rng.random() for _ in values[1:]]
    needles = [_magic(key, v, "number", d) for v, d in zip(values, depths)]
    order = sorted(range(len(needles)), key=lambda i: (depths[i], i))
    answers = tuple(values[i] for i in order)
    frame = Frame(
        _HIDDEN.format("number"), f"What are all the special magic numbers for {key} mentioned in the text above?",
        f"The special magic numbers for {key} mentioned in the text above are:", ", ".join(answers), answers, "set",
    )
    return frame, needle_context(ctx, needles, order, haystack)


def niah_multiquery(ctx: Context) -> tuple[Frame, ContextFn]:
    """Several keys, all asked for, in a shuffled order; the answer follows the question's order."""
    taken: set[str] = set()
    keys = [_key(ctx.rng, ctx.corpus.words, taken) for _ in range(1 + N_DISTRACTORS)]
    values = [_value(ctx.rng, "number", []) for _ in keys]
    depths = [ctx.depth] + [ctx.rng.random() for _ in keys[1:]]
    needles = [_magic(k, v, "number", d) for k, v, d in zip(keys, values, depths)]
    asked = list(range(len(keys)))
    ctx.rng.shuffle(asked)
    names = ", ".join(keys[i] for i in asked[:-1]) + f" and {keys[asked[-1]]}"
    answers = tuple(values[i] for i in asked)
    frame = Frame(
        _HIDDEN.format("number"), f"What are the special magic numbers for {names} mentioned in the text above?",
        f"The special magic numbers for {names} mentioned in the text above are, in this order:",
        ", ".join(answers), answers, "list",
    )
    return frame, needle_context(ctx, needles, asked)


def kv_lines(ctx: Context, key_kind: str, value_kind: str) -> tuple[Frame, ContextFn]:
    """Nothing but needle lines, each key with its own value; the line asked for sits at ``depth``.

    Whole lines fill the budget; the few tokens left over are noise sentences before them.
    """
    words, taken = ctx.corpus.words, set()
    asked, answer = _key(ctx.rng, words, taken, key_kind), _value(ctx.rng, value_kind, words)
    lines: list[tuple[str, str]] = []  # grows in one fixed order, whatever counts are tried
    noun = _NOUN[value_kind]

    def layout(n: int) -> tuple[list[str], int]:
        while len(lines) < n:
            lines.append((_key(ctx.rng, words, taken, key_kind), _value(ctx.rng, value_kind, words)))
        target = round(ctx.depth * (n - 1))
        items = lines[:target] + [(asked, answer)] + lines[target + 1 : n]
        return [f"One of the special magic {noun}s for {k} is: {v}.\n" for k, v in items], target

    def build(budget: int) -> tuple[list[int], list[tuple[int, int]]]:
        n, ids = fill(ctx.tokenizer, budget, lambda count: "".join(layout(count)[0]))
        texts, target = layout(n)
        value_start = sum(len(t) for t in texts[:target]) + texts[target].index(": ") + 2
        text = "".join(texts)
        start = prefix_len(ctx.tokenizer, ids, text[:value_start])
        end = prefix_len(ctx.tokenizer, ids, text[: value_start + len(answer)])
        pad = _noise_lines(ctx.tokenizer, budget - len(ids))
        return pad + ids, [(len(pad) + start, len(pad) + end)]

    return _ask_one(value_kind, asked, answer), build


def _noise_lines(tokenizer: Any, n: int) -> list[int]:
    """``n`` ids of noise sentences, the last one a line break (none for ``n = 0``)."""
    if n <= 0:
        return []
    return haystack_ids(tokenizer, NOISE * math.ceil(n / 8 + 1), n - 1) + encode_plain(tokenizer, "\n")[-1:]


def _chain_names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        names += [name] if name not in names else []
    return names


def _chain(names: list[str], value: str, first_depth: float, later: list[float]) -> list[Needle]:
    """``VAR A = value`` at ``first_depth``, then ``VAR B = VAR A`` ... at the ``later`` depths."""
    return [Needle("\nVAR ", names[0], f" = {value}.\n", first_depth)] + [
        Needle("\nVAR ", name, f" = VAR {previous}.\n", depth)
        for previous, name, depth in zip(names, names[1:], later)
    ]


def _tracking_frame(value: str, names: list[str]) -> Frame:
    return Frame(
        "Memorize and track the chain of variable assignments hidden in the following text.",
        f"Find all variables that are assigned the value {value} in the text above.",
        f"The variables assigned the value {value} are:", " ".join(names), tuple(names), "set",
    )


def variable_tracking(ctx: Context) -> tuple[Frame, ContextFn]:
    """``VAR A = 12345`` at ``depth``, then ``VAR B = VAR A`` ... later; name every variable of the chain."""
    names = _chain_names(ctx.rng, CHAIN_HOPS + 1)
    value = str(ctx.rng.randint(10_000, 99_999))
    later = sorted(ctx.rng.uniform(ctx.depth, 1.0) for _ in range(CHAIN_HOPS))
    return _tracking_frame(value, names), needle_context(ctx, _chain(names, value, ctx.depth, later),
                                                         list(range(len(names))))


def variable_tracking_chains(ctx: Context, chains: int = 2) -> tuple[Frame, ContextFn]:
    """``chains`` interleaved assignment chains with different values in noise; one value is asked for."""
    names = _chain_names(ctx.rng, chains * (CHAIN_HOPS + 1))
    values: list[str] = []
    while len(values) < chains:
        value = str(ctx.rng.randint(10_000, 99_999))
        values += [value] if value not in values else []
    needles = []
    for c in range(chains):
        first = ctx.depth if c == 0 else ctx.rng.uniform(0.05, 0.95)
        later = sorted(ctx.rng.uniform(first, 1.0) for _ in range(CHAIN_HOPS))
        needles += _chain(names[c * (CHAIN_HOPS + 1) : (c + 1) * (CHAIN_HOPS + 1)], values[c], first, later)
    asked = names[: CHAIN_HOPS + 1]
    return _tracking_frame(values[0], asked), needle_context(ctx, needles, list(range(CHAIN_HOPS + 1)), "noise")
