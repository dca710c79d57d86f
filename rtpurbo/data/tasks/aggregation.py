"""Aggregation tasks: answers that need counts over the whole context, not one retrieved line."""
from __future__ import annotations

import math
import random
import string
from typing import Callable

from .prompt import Context, ContextFn, Frame, fill

N_COMMON = 10


def _usual_frequencies(n: int) -> tuple[int, int]:
    """(times each common word appears, times each rare word appears) in a list of ``n`` items."""
    common_freq = min(30, max(4, n // 40))
    return common_freq, min(3, common_freq - 2)


def close_frequencies(n: int) -> tuple[int, int]:
    """Common words only three times as frequent as rare ones: a window of the list cannot tell them apart."""
    return 6, 2


def common_words(ctx: Context, frequencies: Callable[[int], tuple[int, int]] = _usual_frequencies
                 ) -> tuple[Frame, ContextFn]:
    """A numbered word list where ``N_COMMON`` words repeat most; answer in first-appearance order."""
    common = ctx.rng.sample(ctx.corpus.words, N_COMMON)

    def render(n: int) -> str:
        rng = random.Random(f"{ctx.key}/items={n}")
        common_freq, rare_freq = frequencies(n)
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

    frame = Frame(
        "Below is a numbered list of words. Some words appear more often than the others: remember them.",
        f"What are the {N_COMMON} most common words in the list above?",
        f"The {N_COMMON} most common words in the list above are:", ", ".join(common), tuple(common), "set",
    )
    return frame, lambda budget: (fill(ctx.tokenizer, budget, render)[1], [])


def frequent_words(ctx: Context) -> tuple[Frame, ContextFn]:
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
    frame = Frame(
        "Read the following coded text and keep track of how often each coded word appears.",
        "What are the three most frequent coded words in the text above?",
        "The three most frequent coded words are:", ", ".join(top), top, "set",
    )
    return frame, lambda budget: (fill(ctx.tokenizer, budget, render)[1], [])
