"""How a generated answer is judged against a task sample's gold answer (the task's own rule, shared by
``rtpurbo eval``'s scoring and the lm-evaluation-harness task that ``rtpurbo export`` writes).

* :func:`exact_match`: the first non-empty line of the answer equals the gold answer, as text, item by item
  (``match == "list"``) or as a set (``"set"``), after :func:`normalize`;
* :func:`partial_match`: the fraction of gold items found anywhere in the text (RULER's string match).
"""
from __future__ import annotations

import re

from .prompt import TaskSample


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding quotes, backticks or final period."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip("\"'` ").rstrip(".").strip("\"'` ")


def answer_line(prediction: str) -> str:
    """The first non-empty line of a generated answer."""
    return next((line for line in prediction.splitlines() if line.strip()), "")


def _items(text: str) -> list[str]:
    return [item for item in (normalize(p) for p in re.split(r",|;|\band\b|\s+", text)) if item]


def exact_match(prediction: str, sample: TaskSample) -> bool:
    """The answer line equals the gold answer: as text, or item by item (``list``) or as a set."""
    line = answer_line(prediction)
    if sample.match == "text":
        return normalize(line) == normalize(sample.answer_text)
    got, want = _items(line), [normalize(a) for a in sample.answers]
    return got == want if sample.match == "list" else sorted(got) == sorted(want)


def partial_match(prediction: str, sample: TaskSample) -> float:
    """Fraction of gold items found anywhere in the generated text (RULER's string match)."""
    text = normalize(prediction)
    return sum(normalize(a) in text for a in sample.answers) / len(sample.answers)
