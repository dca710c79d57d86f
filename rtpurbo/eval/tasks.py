"""RULER-style long-context tasks generated from the development pool, with fixed seeds.

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

Tasks (``TASKS``): single needle with a number, word or UUID value; multi-key; multi-value;
multi-query; variable tracking (a chain of 4 assignments); common-word and frequent-word
extraction; a question about a long technical document (python-docs: which function does
this sentence describe?); and the definition line of a named function in a long code file
(CPython standard library). Haystacks and documents come from the development pool only.

Seeds: sample ``i`` of task ``t`` uses ``seed_for("eval", TASK_SEED_BLOCK * t + i)`` (disjoint
from profiling and training seeds); its random stream also depends on the length, and its
needle depth follows a golden-ratio sequence (entered at the task's index), so any prefix of
samples spreads over depths, and one sample per task already covers several depths.
"""
from __future__ import annotations

import math
import random
import re
import string
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, NamedTuple

from ..data.needles import (
    Needle,
    encode_plain,
    haystack_ids,
    haystack_window,
    insertion_points,
    leading_special_ids,
    line_boundaries,
    seed_for,
)
from ..data.sources import long_documents

TASKS = (
    "niah_number", "niah_word", "niah_uuid", "niah_multikey", "niah_multivalue", "niah_multiquery",
    "variable_tracking", "common_words", "frequent_words", "doc_qa", "code_function",
)
SINGLE_NEEDLE = ("niah_number", "niah_word", "niah_uuid")  # the tasks of the depth x length heatmap
TASK_SEED_BLOCK = 50_000
GEN_MARGIN = 8  # new tokens allowed beyond the gold answer's length
MIN_CONTEXT = 64
N_DISTRACTORS = 3  # extra keys of multi-key / multi-query; values of multi-value
CHAIN_HOPS = 4
N_COMMON = 10
MAX_ATTEMPTS = 50  # document items tried before giving up
_MARK = "\x00RTPURBO_USER_CONTENT\x00"
PROSE_SOURCES = ("python-docs", "shakespeare")


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
class _Frame:
    """The words around the context; ``separator`` joins the answer prefix and the answer."""

    instruction: str
    question: str
    answer_prefix: str
    answer_text: str
    answers: tuple[str, ...]
    match: str = "text"
    separator: str = " "


# --- development-pool text ----------------------------------------------------------------------
class TextItem(NamedTuple):
    """Something a document task can ask about: chars [anchor, evidence_end) of the text hold it.

    kind and name: "function", "method", ... and its name; detail: the documented first
    sentence (docs) or the rest of the ``def`` line after ``name(`` (code); params: parameter names.
    """

    anchor: int
    evidence_end: int
    kind: str
    name: str
    detail: str
    params: tuple[str, ...] = ()


@dataclass
class DevCorpus:
    """Text the tasks are cut from: prose haystacks, one long technical text, one long code text."""

    prose: list[str]
    docs: str
    code: str
    paths: list[str] = field(default_factory=list)

    @cached_property
    def words(self) -> list[str]:
        """Sorted lowercase words (4-9 letters) seen at least 3 times in the prose."""
        counts = Counter(w for text in self.prose for w in re.findall(r"\b[a-z]{4,9}\b", text))
        return sorted(w for w, n in counts.items() if n >= 3)

    @cached_property
    def doc_items(self) -> list[TextItem]:
        """Documented functions, methods, classes and exceptions of ``docs`` with a usable first sentence."""
        return _doc_items(self.docs)

    @cached_property
    def code_items(self) -> list[TextItem]:
        """One-line ``def`` statements of ``code`` with named parameters."""
        return _code_items(self.code)


def load_dev_corpus(install: bool = True, n_prose: int = 40, n_docs: int = 120, n_code: int = 80) -> DevCorpus:
    """The development pool (python-docs, shakespeare, CPython stdlib); never a training source."""
    prose = long_documents(list(PROSE_SOURCES), min_chars=50_000, limit=n_prose, install=install)
    docs = long_documents(["python-docs"], min_chars=20_000, limit=n_docs, install=install)
    code = long_documents(["cpython-stdlib"], min_chars=30_000, limit=n_code, install=install)
    return DevCorpus(
        prose=[d.text for d in prose],
        docs="\n\n".join(d.text for d in docs),
        code="\n\n".join(d.text for d in code),
        paths=[d.path for d in prose + docs + code],
    )


_DIRECTIVE = re.compile(
    r"^(?P<indent> *)\.\. (?P<kind>function|method|class|exception):: +(?P<name>[A-Za-z_][\w.]*)", re.M
)
_DEF = re.compile(
    r"^(?P<indent> *)def (?P<name>[A-Za-z_]\w{3,})\((?P<params>[^()\n]{3,80})\)(?P<ret> *-> *[^:\n]+)?:[ \t]*$", re.M
)


def _doc_items(text: str) -> list[TextItem]:
    items = []
    for m in _DIRECTIVE.finditer(text):
        found = _first_sentence(text, m.end(), len(m["indent"]))
        bare = m["name"].rsplit(".", 1)[-1].lower()
        if found and 30 <= len(found[0]) <= 250 and bare not in found[0].lower():
            items.append(TextItem(m.start(), found[1], m["kind"], m["name"], found[0]))
    return items


def _first_sentence(text: str, pos: int, indent: int) -> tuple[str, int] | None:
    """First sentence of the first prose paragraph of the directive body after ``pos``, and
    the char offset where that paragraph ends. Lines before the first blank line are the
    signature and options; a line indented no deeper than the directive ends the body."""
    paragraphs, current, offset, in_body = [], [], pos, False
    for line in text[pos : pos + 4000].splitlines(keepends=True):
        offset += len(line)
        if not line.strip():
            if current:
                paragraphs.append((" ".join(current), offset))
            current, in_body = [], True
        elif in_body and len(line) - len(line.lstrip()) <= indent:
            break
        elif in_body:
            current.append(line.strip())
    prose = [(p, end) for p, end in paragraphs if not p.startswith(("..", ":"))]
    sentence = re.match(r"(.+?\.)(?:\s|$)", prose[0][0]) if prose else None
    return (sentence.group(1), prose[0][1]) if sentence else None


def _code_items(text: str) -> list[TextItem]:
    items = []
    for m in _DEF.finditer(text):
        names = _param_names(m["params"])
        if names and not m["name"].startswith("__"):
            rest = m["params"] + ")" + (m["ret"] or "") + ":"
            items.append(TextItem(m.start(), m.end(), "function", m["name"], rest, tuple(names)))
    return items


def _param_names(params: str) -> list[str]:
    names = [re.split(r"[:=]", p.strip().lstrip("*"))[0].strip() for p in params.split(",")]
    return [n for n in names if n.isidentifier() and n not in ("self", "cls")]


# --- prompt assembly -----------------------------------------------------------------------------
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


def _prefix_len(tokenizer: Any, whole: list[int], text: str) -> int:
    """Number of leading ids of ``whole`` that spell ``text`` (trailing spaces may go either side)."""
    for head in dict.fromkeys((text, text.rstrip(" "))):
        ids = encode_plain(tokenizer, head)
        if whole[: len(ids)] == ids:
            return len(ids)
    raise ValueError(
        f"{type(tokenizer).__name__} merges the end of {text[-40:]!r} with the text after it; "
        "the answer would not start on a token boundary"
    )


def _answer_split(tokenizer: Any, frame: _Frame) -> tuple[list[int], list[int]]:
    """(prefix ids, answer ids) of ``prefix + separator + answer``."""
    whole = encode_plain(tokenizer, frame.answer_prefix + frame.separator + frame.answer_text)
    cut = _prefix_len(tokenizer, whole, frame.answer_prefix + frame.separator)
    if cut >= len(whole):
        raise ValueError(f"empty answer ids for {frame.answer_text!r}")
    return whole[:cut], whole[cut:]


@dataclass
class _Context:
    """What a task needs to build its context: randomness, text, tokenizer, depth, cache key."""

    rng: random.Random
    corpus: DevCorpus
    tokenizer: Any
    depth: float
    key: str


ContextFn = Callable[[int], tuple[list[int], list[tuple[int, int]]]]  # budget -> (ids, item spans)


def _assemble(tokenizer: Any, fmt: PromptFormat, frame: _Frame, build: ContextFn, length: int) -> tuple:
    """(prompt ids, answer ids, spans) with the context filling what ``length`` leaves."""
    prefix_ids, answer_ids = _answer_split(tokenizer, frame)
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


# --- needles in a haystack -------------------------------------------------------------------------
def _needle_ids(tokenizer: Any, needle: Needle) -> tuple[list[int], tuple[int, int]]:
    """Ids of one needle and the [start, end) range of its value inside them."""
    whole = encode_plain(tokenizer, needle.before + needle.value + needle.after)
    start = _prefix_len(tokenizer, whole, needle.before)
    end = _prefix_len(tokenizer, whole, needle.before + needle.value) if needle.value else start
    return whole, (start, end)


def _needle_context(ctx: _Context, needles: list[Needle], holders: list[int]) -> ContextFn:
    """Haystack from the prose pool with ``needles`` at their depths; spans of ``holders``' values."""

    def build(budget: int) -> tuple[list[int], list[tuple[int, int]]]:
        pieces = [_needle_ids(ctx.tokenizer, n) for n in needles]
        n_hay = budget - sum(len(ids) for ids, _ in pieces)
        if n_hay < MIN_CONTEXT:
            raise ValueError(f"needles take {budget - n_hay} of {budget} context tokens; use a longer length")
        hay = haystack_ids(ctx.tokenizer, haystack_window(ctx.corpus.prose, ctx.rng, 8 * budget), n_hay)
        inserts = insertion_points(needles, [len(ids) for ids, _ in pieces], line_boundaries(ctx.tokenizer, hay))
        out, cursor, spans = [], 0, {}
        for point, i in inserts:
            out += hay[cursor:point]
            cursor = point
            spans[i] = (len(out) + pieces[i][1][0], len(out) + pieces[i][1][1])
            out += pieces[i][0]
        return out + hay[cursor:], [spans[i] for i in holders]

    return build


def _key(rng: random.Random, words: list[str], taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(words)}-{rng.choice(words)}"
        if key not in taken:
            taken.add(key)
            return key


def _value(rng: random.Random, kind: str, words: list[str]) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "word":
        return rng.choice(words)
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


_NOUN = {"number": "number", "word": "word", "uuid": "UUID"}
_HIDDEN = "Some special magic {0}s are hidden in the following text. Remember them: you will be asked about them."


def _magic(key: str, value: str, kind: str, depth: float) -> Needle:
    return Needle(f"\nOne of the special magic {_NOUN[kind]}s for {key} is: ", value, ".\n", depth)


def _niah(ctx: _Context, kind: str = "number", distractors: int = 0) -> tuple[_Frame, ContextFn]:
    """One key's value at ``depth``; ``distractors`` other keys with their own values elsewhere."""
    words, taken = ctx.corpus.words, set()
    keys = [_key(ctx.rng, words, taken) for _ in range(1 + distractors)]
    values = [_value(ctx.rng, kind, words) for _ in keys]
    depths = [ctx.depth] + [ctx.rng.random() for _ in keys[1:]]
    needles = [_magic(k, v, kind, d) for k, v, d in zip(keys, values, depths)]
    noun = _NOUN[kind]
    frame = _Frame(
        _HIDDEN.format(noun), f"What is the special magic {noun} for {keys[0]} mentioned in the text above?",
        f"The special magic {noun} for {keys[0]} mentioned in the text above is:", values[0], (values[0],),
    )
    return frame, _needle_context(ctx, needles, [0])


def _niah_multivalue(ctx: _Context) -> tuple[_Frame, ContextFn]:
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
    frame = _Frame(
        _HIDDEN.format("number"), f"What are all the special magic numbers for {key} mentioned in the text above?",
        f"The special magic numbers for {key} mentioned in the text above are:", ", ".join(answers), answers, "set",
    )
    return frame, _needle_context(ctx, needles, order)


def _niah_multiquery(ctx: _Context) -> tuple[_Frame, ContextFn]:
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
    frame = _Frame(
        _HIDDEN.format("number"), f"What are the special magic numbers for {names} mentioned in the text above?",
        f"The special magic numbers for {names} mentioned in the text above are, in this order:",
        ", ".join(answers), answers, "list",
    )
    return frame, _needle_context(ctx, needles, asked)


def _variable_tracking(ctx: _Context) -> tuple[_Frame, ContextFn]:
    """``VAR A = 12345`` at ``depth``, then ``VAR B = VAR A`` ... later; name every variable of the chain."""
    names: list[str] = []
    while len(names) < CHAIN_HOPS + 1:
        name = "".join(ctx.rng.choices(string.ascii_uppercase, k=5))
        names += [name] if name not in names else []
    value = str(ctx.rng.randint(10_000, 99_999))
    depths = [ctx.depth] + sorted(ctx.rng.uniform(ctx.depth, 1.0) for _ in range(CHAIN_HOPS))
    needles = [Needle("\nVAR ", names[0], f" = {value}.\n", depths[0])] + [
        Needle("\nVAR ", name, f" = VAR {previous}.\n", depth)
        for previous, name, depth in zip(names, names[1:], depths[1:])
    ]
    frame = _Frame(
        "Memorize and track the chain of variable assignments hidden in the following text.",
        f"Find all variables that are assigned the value {value} in the text above.",
        f"The variables assigned the value {value} are:", " ".join(names), tuple(names), "set",
    )
    return frame, _needle_context(ctx, needles, list(range(len(names))))


# --- aggregation over long lists ------------------------------------------------------------------
def _fill(tokenizer: Any, budget: int, render: Callable[[int], str]) -> list[int]:
    """Ids of ``render(n)`` for the largest ``n`` whose ids fit ``budget``.

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
    return best


def _common_words(ctx: _Context) -> tuple[_Frame, ContextFn]:
    """A numbered word list where ``N_COMMON`` words repeat most; answer in first-appearance order."""
    common = ctx.rng.sample(ctx.corpus.words, N_COMMON)

    def render(n: int) -> str:
        rng = random.Random(f"{ctx.key}/items={n}")
        common_freq = min(30, max(4, n // 40))
        rare_freq = min(3, common_freq - 2)
        pool = [w for w in ctx.corpus.words if w not in common]
        n_rare = max(0, (n - N_COMMON * common_freq) // rare_freq)
        if n_rare > len(pool):
            raise ValueError(f"the word pool ({len(pool)} words) is too small for {n} list items")
        slots = [-1 - i for i in range(N_COMMON)] * common_freq + rng.sample(range(len(pool)), n_rare) * rare_freq
        rng.shuffle(slots)
        first_seen = list(dict.fromkeys(s for s in slots if s < 0))  # common slots in order of appearance
        rename = {slot: common[rank] for rank, slot in enumerate(first_seen)}
        items = [rename[s] if s < 0 else pool[s] for s in slots]
        return "\n".join(f"{i + 1}. {w}" for i, w in enumerate(items))

    frame = _Frame(
        "Below is a numbered list of words. Some words appear more often than the others: remember them.",
        f"What are the {N_COMMON} most common words in the list above?",
        f"The {N_COMMON} most common words in the list above are:", ", ".join(common), tuple(common), "set",
    )
    return frame, lambda budget: (_fill(ctx.tokenizer, budget, render), [])


def _frequent_words(ctx: _Context) -> tuple[_Frame, ContextFn]:
    """Coded words with Zipf(2) frequencies; the three most frequent, most frequent first."""
    vocab: list[str] = []
    while len(vocab) < 400:
        word = "".join(ctx.rng.choices(string.ascii_lowercase, k=ctx.rng.randint(3, 6)))
        vocab += [word] if word not in vocab else []

    def render(n: int) -> str:
        weights = [1.0 / (r + 1) ** 2 for r in range(max(10, min(len(vocab), n // 4)))]
        counts = [max(1, math.floor(n * w / sum(weights))) for w in weights]
        if not counts[0] > counts[1] > counts[2] > counts[3]:
            raise ValueError(f"{n} coded words are too few to rank the top three")
        words = [w for w, c in zip(vocab, counts) for _ in range(c)]
        random.Random(f"{ctx.key}/words={n}").shuffle(words)
        return "\n".join(" ".join(words[i : i + 16]) for i in range(0, len(words), 16))

    top = tuple(vocab[:3])
    frame = _Frame(
        "Read the following coded text and keep track of how often each coded word appears.",
        "What are the three most frequent coded words in the text above?",
        "The three most frequent coded words are:", ", ".join(top), top, "set",
    )
    return frame, lambda budget: (_fill(ctx.tokenizer, budget, render), [])


# --- long documents -------------------------------------------------------------------------------
class _Ambiguous(ValueError):
    """Pick another item: this one is ambiguous inside its window, the text around it is too
    short, or its answer does not start on a token boundary (``def f(`` + ``*a`` gives ``(*``)."""


def _window(tokenizer: Any, text: str, anchor: int, evidence_end: int, budget: int, depth: float) -> list[int]:
    """``budget`` ids of ``text`` with char ``anchor`` at ``depth``; ids up to ``evidence_end`` included."""
    span = 8 * budget
    left = encode_plain(tokenizer, text[max(0, anchor - span) : anchor])
    right = encode_plain(tokenizer, text[anchor : anchor + span])
    evidence = len(encode_plain(tokenizer, text[anchor:evidence_end]))
    n_left = min(len(left), round(depth * budget), budget - evidence)
    n_left = max(n_left, budget - len(right), 0)
    if n_left > len(left) or evidence > budget:
        raise _Ambiguous("the document around the chosen item is too short for this length")
    return left[len(left) - n_left :] + right[: budget - n_left]


def _check_boundary(tokenizer: Any, frame: _Frame) -> None:
    try:
        _answer_split(tokenizer, frame)
    except ValueError as err:
        raise _Ambiguous(str(err)) from err


def _window_context(ctx: _Context, text: str, item: TextItem, unique: Callable[[str], bool]) -> ContextFn:
    """A window of ``text`` with ``item`` at the sample's depth; raises _Ambiguous unless ``unique``."""

    def build(budget: int) -> tuple[list[int], list[tuple[int, int]]]:
        ids = _window(ctx.tokenizer, text, item.anchor, item.evidence_end, budget, ctx.depth)
        if not unique(ctx.tokenizer.decode(ids)):
            raise _Ambiguous(f"{item.kind} {item.name} is ambiguous in its window")
        return ids, []

    return build


def _doc_qa(ctx: _Context) -> tuple[_Frame, ContextFn]:
    """Which function/class does this sentence of the documentation describe?"""
    items = ctx.corpus.doc_items
    if not items:
        raise ValueError("the technical text has no documented functions")
    item = items[ctx.rng.randrange(len(items))]
    kind, name, sentence = item.kind, item.name, item.detail
    frame = _Frame(
        "Read the following documentation carefully. You will be asked a question about it.",
        f'Which {kind} does the documentation above describe with the sentence "{sentence}"? Give its name.',
        f"The {kind} described with that sentence is", name, (name,),
    )
    _check_boundary(ctx.tokenizer, frame)

    def unique(window: str) -> bool:
        return window.count(sentence) == 1 and len(re.findall(rf":: +{re.escape(name)}\b", window)) == 1

    return frame, _window_context(ctx, ctx.corpus.docs, item, unique)


def _code_function(ctx: _Context) -> tuple[_Frame, ContextFn]:
    """Complete the definition line of a named function of a long code file."""
    items = ctx.corpus.code_items
    if not items:
        raise ValueError("the code text has no usable function definitions")
    item = items[ctx.rng.randrange(len(items))]
    name, rest, params = item.name, item.detail, item.params
    frame = _Frame(
        "Read the following Python code carefully. You will be asked about one of its functions.",
        f"Write the complete definition line (the line starting with `def`) of the function `{name}` "
        "in the code above.",
        f"def {name}(", rest, params, separator="",
    )
    _check_boundary(ctx.tokenizer, frame)
    return frame, _window_context(ctx, ctx.corpus.code, item, lambda window: window.count(f"def {name}(") == 1)


_BUILDERS: dict[str, Callable[[_Context], tuple[_Frame, ContextFn]]] = {
    "niah_number": lambda ctx: _niah(ctx, "number"),
    "niah_word": lambda ctx: _niah(ctx, "word"),
    "niah_uuid": lambda ctx: _niah(ctx, "uuid"),
    "niah_multikey": lambda ctx: _niah(ctx, "number", N_DISTRACTORS),
    "niah_multivalue": _niah_multivalue,
    "niah_multiquery": _niah_multiquery,
    "variable_tracking": _variable_tracking,
    "common_words": _common_words,
    "frequent_words": _frequent_words,
    "doc_qa": _doc_qa,
    "code_function": _code_function,
}


def sample_depth(task: str, i: int) -> float:
    """Depth of sample ``i`` of ``task``: a golden-ratio sequence in [0.05, 0.95], entered at the
    task's index, so every prefix of samples is spread out and tasks start at different depths."""
    return 0.05 + 0.9 * (((i + TASKS.index(task)) * 0.6180339887498949) % 1.0)


def sample_seed(task: str, i: int) -> int:
    """Seed of sample ``i`` of ``task`` in the ``eval`` namespace."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    if not 0 <= i < TASK_SEED_BLOCK:
        raise ValueError(f"sample index {i} outside [0, {TASK_SEED_BLOCK})")
    return seed_for("eval", TASKS.index(task) * TASK_SEED_BLOCK + i)


def make_task_sample(task: str, tokenizer: Any, corpus: DevCorpus, length: int, i: int,
                     fmt: PromptFormat | None = None) -> TaskSample:
    """Sample ``i`` of ``task`` at ``length`` tokens (prompt + generation budget)."""
    seed = sample_seed(task, i)
    key = f"rtpurbo-eval/{task}/{length}/{seed}"
    ctx = _Context(random.Random(key), corpus, tokenizer, sample_depth(task, i), key)
    fmt = fmt or PromptFormat.for_tokenizer(tokenizer)
    for _ in range(MAX_ATTEMPTS):
        try:
            frame, build = _BUILDERS[task](ctx)
            prompt, answer_ids, spans = _assemble(tokenizer, fmt, frame, build, length)
            break
        except _Ambiguous:
            continue
    else:
        raise ValueError(f"{task}: no usable item found in {MAX_ATTEMPTS} attempts (seed {seed}); "
                         "is the document text shorter than the length?")
    has_depth = task not in ("common_words", "frequent_words")
    return TaskSample(task, length, seed, ctx.depth if has_depth else None, prompt, answer_ids,
                      frame.answer_text, list(frame.answers), frame.match, spans)


def make_task_samples(task: str, tokenizer: Any, corpus: DevCorpus, length: int, n: int,
                      fmt: PromptFormat | None = None) -> list[TaskSample]:
    """Samples 0 .. n-1 of ``task`` at ``length``."""
    fmt = fmt or PromptFormat.for_tokenizer(tokenizer)
    return [make_task_sample(task, tokenizer, corpus, length, i, fmt) for i in range(n)]
