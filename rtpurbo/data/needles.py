"""Synthetic long-context retrieval samples: pass keys, key-value lookups, variable chains.

Every sample is plain text (no chat template: the caller decides), generated
from a seed, and exactly `length_tokens` tokens long::

    [bos] haystack .. \\n<needle>\\n .. haystack .. \\n<needle>\\n .. haystack \\n\\n<question ending in " "><answer>

Needles sit at line or sentence boundaries of the haystack, as close as
possible to the requested depth (a fraction of haystack + needles).  The text is tokenised piece by piece
(haystack, each needle split around its value, question, answer) and the ids
concatenated, so `needle_spans` and `answer_start` are exact.  Each needle and
the question are checked to tokenise on their own exactly as the concatenated
pieces; otherwise ValueError.  With SmolLM2 the question ends in a lone " "
token and the answer is its digits (" 48213" -> " " + "4" "8" "2" "1" "3"), so
the value's ids inside the haystack equal the answer ids and copy scores can
match them token by token.

Seeds: sample `i` of `make_samples(..., seed=s)` uses seed `s + i`.  Use
`seed_for(namespace, i)` with the namespaces of `SEED_NAMESPACES`, one block of
`SEED_NAMESPACE_SIZE` seeds each, so that head profiling, training and
evaluation samples never share a seed (`tune` and `train_tasks` are the eval tasks'
tuning and training splits, see `rtpurbo.eval.tasks`).
"""

from __future__ import annotations

import bisect
import random
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class SampleTooShort(ValueError):
    """A sample length too short for a needle task's needles, question and answer (the message names the minimum)."""


KINDS = ("passkey", "kv", "multihop")
SEED_NAMESPACES = {"profile": 1_000_000, "train": 2_000_000, "eval": 3_000_000, "tune": 4_000_000,
                   "train_tasks": 5_000_000}
SEED_NAMESPACE_SIZE = 1_000_000
MIN_HAYSTACK_TOKENS = 16
KV_MAX_PAIRS = 32
MULTIHOP_ALIASES = 3


@dataclass
class NeedleSample:
    """One teacher-forced retrieval sample.

    input_ids: (length,) prompt + answer; the answer is `input_ids[answer_start:]`.
    needle_spans: token ranges [start, end) inside the haystack that hold the
        answer's ids (where a copy-retrieval head should look).
    depth: requested position of the answer-bearing needle as a fraction (0..1)
        of the context before the question; it lands on the nearest line or
        sentence boundary.
    """

    kind: str
    input_ids: list[int]
    answer_start: int
    answer_text: str
    needle_spans: list[tuple[int, int]]
    length: int
    depth: float
    seed: int

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.answer_start :]


@dataclass(frozen=True)
class Needle:
    """A sentence to hide: `before` + `value` + `after`; `value` may be empty."""

    before: str
    value: str
    after: str
    depth: float


@dataclass(frozen=True)
class _Task:
    needles: list[Needle]  # needles[0] holds the answer
    question: str  # text right before the answer; ends with a space
    answer: str


def seed_for(namespace: str, i: int) -> int:
    """Seed number `i` (0 <= i < SEED_NAMESPACE_SIZE) of `namespace` ("profile", "train" or "eval")."""
    if namespace not in SEED_NAMESPACES:
        raise ValueError(f"unknown seed namespace {namespace!r}; namespaces are {sorted(SEED_NAMESPACES)}")
    if not 0 <= i < SEED_NAMESPACE_SIZE:
        raise ValueError(f"seed index {i} is outside [0, {SEED_NAMESPACE_SIZE}) for namespace {namespace!r}")
    return SEED_NAMESPACES[namespace] + i


def _random_number(rng: random.Random) -> str:
    digits = rng.randint(5, 7)
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def _passkey_task(rng: random.Random, length_tokens: int, depth: float) -> _Task:
    key = _random_number(rng)
    needle = Needle("The pass key is ", key, ". Remember it.", depth)
    return _Task([needle], "What is the pass key? The pass key is ", key)


def _kv_task(rng: random.Random, length_tokens: int, depth: float) -> _Task:
    """Hex keys and values; values start with a digit so they follow a lone " " token."""
    n_pairs = min(KV_MAX_PAIRS, max(2, length_tokens // 128))
    keys, values = set(), set()
    while len(keys) < n_pairs:
        keys.add(f"{rng.getrandbits(32):08x}")
    while len(values) < n_pairs:
        values.add(f"{rng.randint(1, 9)}{rng.getrandbits(28):07x}")
    pairs = list(zip(sorted(keys), sorted(values)))
    rng.shuffle(pairs)
    needles = [
        Needle(f"The value for key {key} is ", value, ".", depth if i == 0 else rng.random())
        for i, (key, value) in enumerate(pairs)
    ]
    asked_key, asked_value = pairs[0]
    return _Task(needles, f"What is the value for key {asked_key}? The value for key {asked_key} is ", asked_value)


def _multihop_task(rng: random.Random, length_tokens: int, depth: float) -> _Task:
    """`VAR A = 49231.` at `depth`, then `VAR B = VAR A.`, ... later on; ask for the last variable."""
    names: list[str] = []
    while len(names) < MULTIHOP_ALIASES + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    value = _random_number(rng)
    alias_depths = sorted(rng.uniform(depth, 1.0) for _ in range(MULTIHOP_ALIASES))
    needles = [Needle(f"VAR {names[0]} = ", value, ".", depth)] + [
        Needle(f"VAR {name} = VAR {previous}.", "", "", alias_depth)
        for previous, name, alias_depth in zip(names, names[1:], alias_depths)
    ]
    last = names[-1]
    return _Task(needles, f"What is the numeric value of VAR {last}? The value of VAR {last} is ", value)


_TASK_BUILDERS: dict[str, Callable[[random.Random, int, float], _Task]] = {
    "passkey": _passkey_task,
    "kv": _kv_task,
    "multihop": _multihop_task,
}


def encode_plain(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def encode_pieces(tokenizer: PreTrainedTokenizerBase, pieces: Sequence[str]) -> list[list[int]]:
    """Ids of each piece, checked to concatenate to the ids of the joined text."""
    ids = [encode_plain(tokenizer, piece) for piece in pieces]
    whole = encode_plain(tokenizer, "".join(pieces))
    if sum(ids, []) != whole:
        raise ValueError(
            f"{type(tokenizer).__name__} tokenises {''.join(pieces)!r} differently from its pieces {list(pieces)!r}; "
            "needle spans would not line up with the answer ids (does it merge a space into the next token?)"
        )
    return ids


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special ids (e.g. BOS) that the tokenizer puts before a text by default."""
    with_special = tokenizer.encode("a", add_special_tokens=True)
    plain = tokenizer.encode("a", add_special_tokens=False)
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []


def haystack_ids(tokenizer: PreTrainedTokenizerBase, text: str, n_tokens: int) -> list[int]:
    """The first `n_tokens` ids of `text`, repeating the text if it is too short."""
    if not text.strip():
        raise ValueError("haystack_text is empty")
    window = max(4 * n_tokens, 256)
    ids = encode_plain(tokenizer, text[:window])
    while len(ids) < n_tokens and window < len(text):
        window *= 2
        ids = encode_plain(tokenizer, text[:window])
    if len(ids) < n_tokens:
        ids = encode_plain(tokenizer, "\n\n".join([text] * (n_tokens // max(len(ids), 1) + 2)))
    return ids[:n_tokens]


def line_boundaries(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """Sorted insertion points b (0..len(ids)) between ids[b-1] and ids[b].

    A point is a line end (either token holds the newline: code merges a newline
    with the next line's indentation) or a sentence end followed by white space.
    """
    pieces = {token: tokenizer.decode([token]) for token in set(ids)}
    points = [0, len(ids)]
    for b in range(1, len(ids)):
        before, after = pieces[ids[b - 1]], pieces[ids[b]]
        line_end = before.endswith("\n") or after.startswith("\n")
        if line_end or (before.endswith((".", "!", "?")) and after[:1].isspace()):
            points.append(b)
    return sorted(set(points))


def nearest_point(points: list[int], target: int) -> int:
    i = bisect.bisect_left(points, target)
    candidates = points[max(i - 1, 0) : i + 1]
    return min(candidates, key=lambda point: (abs(point - target), point))


def insertion_points(needles: list[Needle], needle_lengths: list[int], points: list[int]) -> list[tuple[int, int]]:
    """(haystack insertion point, needle index) pairs, in insertion order.

    Needles go in order of depth; each lands on the boundary in `points` nearest
    to where it would start at `depth` of the final haystack + needles context,
    counting the needles already placed before it.
    """
    haystack_tokens = points[-1]
    context_tokens = haystack_tokens + sum(needle_lengths)
    inserts, inserted, previous = [], 0, 0
    for order in sorted(range(len(needles)), key=lambda i: (needles[i].depth, i)):
        target = min(max(round(needles[order].depth * context_tokens) - inserted, 0), haystack_tokens)
        previous = max(previous, nearest_point(points, target))
        inserts.append((previous, order))
        inserted += needle_lengths[order]
    return inserts


def _insert_needles(
    prefix_ids: list[int],
    haystack: list[int],
    needle_ids: list[list[list[int]]],
    inserts: list[tuple[int, int]],
) -> tuple[list[int], list[tuple[int, int]]]:
    """prefix + haystack with the needles (each [before, value, after] ids) inserted; spans of needle 0's value."""
    context_ids, cursor, needle_spans = list(prefix_ids), 0, []
    for point, order in inserts:
        context_ids += haystack[cursor:point]
        before, value, after = needle_ids[order]
        if order == 0:
            start = len(context_ids) + len(before)
            needle_spans.append((start, start + len(value)))
        context_ids += before + value + after
        cursor = point
    return context_ids + haystack[cursor:], needle_spans


def make_sample(
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    haystack_text: str,
    length_tokens: int,
    depth: float,
    seed: int,
) -> NeedleSample:
    """One sample of `kind` with exactly `length_tokens` tokens, its answer needle at `depth` (0..1).

    The haystack is the start of `haystack_text` (repeated if too short),
    trimmed so that haystack + needles + question + answer fill `length_tokens`.
    Raises ValueError for an unknown kind, a depth outside [0, 1], a length
    too short to hold the needles with MIN_HAYSTACK_TOKENS of haystack, or a
    tokenizer whose pieces do not line up (see module docstring).
    """
    if kind not in _TASK_BUILDERS:
        raise ValueError(f"unknown needle kind {kind!r}; kinds are {KINDS}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    task = _TASK_BUILDERS[kind](random.Random(seed), length_tokens, depth)
    needle_ids = [encode_pieces(tokenizer, ["\n" + n.before, n.value, n.after + "\n"]) for n in task.needles]
    question_ids, answer_ids = encode_pieces(tokenizer, ["\n\n" + task.question, task.answer])
    prefix_ids = leading_special_ids(tokenizer)
    needle_lengths = [sum(len(piece) for piece in pieces) for pieces in needle_ids]
    fixed = len(prefix_ids) + sum(needle_lengths) + len(question_ids) + len(answer_ids)
    haystack_tokens = length_tokens - fixed
    if haystack_tokens < MIN_HAYSTACK_TOKENS:
        raise SampleTooShort(
            f"length_tokens={length_tokens} is too short for a {kind!r} sample: its needles, question and answer "
            f"take {fixed} tokens and the haystack needs {MIN_HAYSTACK_TOKENS}; use length_tokens >= "
            f"{fixed + MIN_HAYSTACK_TOKENS}"
        )
    haystack = haystack_ids(tokenizer, haystack_text, haystack_tokens)
    inserts = insertion_points(task.needles, needle_lengths, line_boundaries(tokenizer, haystack))
    context_ids, needle_spans = _insert_needles(prefix_ids, haystack, needle_ids, inserts)
    input_ids = context_ids + question_ids + answer_ids
    answer_start = len(input_ids) - len(answer_ids)
    _check_sample(input_ids, length_tokens, needle_spans, answer_ids)
    return NeedleSample(kind, input_ids, answer_start, task.answer, needle_spans, length_tokens, depth, seed)


def _check_sample(
    input_ids: list[int], length_tokens: int, needle_spans: list[tuple[int, int]], answer_ids: list[int]
) -> None:
    if len(input_ids) != length_tokens:
        raise AssertionError(f"built {len(input_ids)} tokens instead of {length_tokens}")
    for start, end in needle_spans:
        if input_ids[start:end] != answer_ids:
            raise AssertionError(f"needle span [{start}, {end}) does not hold the answer ids {answer_ids}")


def haystack_window(documents: Sequence[str], rng: random.Random, n_chars: int) -> str:
    """About `n_chars` characters of one document, starting at a line start; prefers documents that long."""
    long_enough = [document for document in documents if len(document) >= n_chars] or list(documents)
    document = long_enough[rng.randrange(len(long_enough))]
    start = rng.randrange(max(len(document) - n_chars, 0) + 1)
    line_start = document.find("\n", start)
    if start > 0 and 0 <= line_start < len(document) - 1:
        start = line_start + 1
    return document[start : start + n_chars]


def _check_seed_block(seed: int, n: int) -> None:
    """Raise if seeds seed .. seed+n-1 start inside a namespace and run out of it."""
    for namespace, base in SEED_NAMESPACES.items():
        if base <= seed < base + SEED_NAMESPACE_SIZE < seed + n:
            raise ValueError(f"seeds {seed}..{seed + n - 1} run past the end of the {namespace!r} seed namespace")


def make_samples(
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    haystack_docs: Sequence[str],
    length_tokens: int,
    n: int,
    seed: int,
    depths: Sequence[float] | None = None,
) -> list[NeedleSample]:
    """`n` samples with seeds seed .. seed+n-1, haystacks cut deterministically from `haystack_docs`.

    `depths` defaults to n values spread evenly over [0.05, 0.95] (0.5 when n == 1).
    """
    if not haystack_docs:
        raise ValueError("haystack_docs is empty")
    if depths is None:
        depths = [0.5] if n == 1 else [0.05 + 0.9 * i / (n - 1) for i in range(n)]
    if len(depths) != n:
        raise ValueError(f"got {len(depths)} depths for n={n} samples")
    _check_seed_block(seed, n)
    samples = []
    for i, depth in enumerate(depths):
        window = haystack_window(haystack_docs, random.Random(f"haystack:{seed + i}"), 8 * length_tokens)
        samples.append(make_sample(kind, tokenizer, window, length_tokens, depth, seed + i))
    return samples


def teacher_forced_accuracy(logits_or_pred_ids, sample: NeedleSample) -> float:
    """Fraction of the answer tokens predicted correctly under teacher forcing.

    logits_or_pred_ids: logits (L, V) or predicted ids (L,) for `sample.input_ids`
    (torch tensor, numpy array or list of ints), L >= sample.length.  Position p
    predicts token p + 1, so positions answer_start-1 .. length-2 predict the answer.
    """
    shape = tuple(getattr(logits_or_pred_ids, "shape", (len(logits_or_pred_ids),)))
    if len(shape) == 2:
        predicted = logits_or_pred_ids.argmax(-1)
    elif len(shape) == 1:
        predicted = logits_or_pred_ids
    else:
        raise ValueError(f"expected logits (L, V) or predicted ids (L,), got shape {shape}")
    if shape[0] < sample.length:
        raise ValueError(f"predictions cover {shape[0]} positions but the sample has {sample.length} tokens")
    predicted = predicted.tolist() if hasattr(predicted, "tolist") else list(predicted)
    answer = sample.answer_ids
    guesses = predicted[sample.answer_start - 1 : sample.length - 1]
    return sum(int(guess) == token for guess, token in zip(guesses, answer)) / len(answer)
