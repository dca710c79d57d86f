"""The text long-context tasks are cut from: prose haystacks, essays, a technical text, a code text.

``load_dev_corpus`` reads the development pool (python-docs, shakespeare, CPython standard
library); a training mix builds a :class:`TaskCorpus` from training-pool documents instead.
``save`` / ``load`` carry a corpus to a machine that cannot install the sources (a GPU host)
as one gzipped JSON file of a few MB.

Essays are the flowing-prose paragraphs of the technical text (reST and markup stripped: no
directives, code, lists or tables), joined in order and cut into long texts: the essay-like
haystack of RULER's needle tasks, made from allowed text.
"""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from ..sources import long_documents

PROSE_SOURCES = ("python-docs", "shakespeare")
CORPUS_FORMAT = "rtpurbo.task_corpus/1"
ESSAY_CHARS = 100_000  # essays are cut at the first paragraph end past this many characters
MIN_PARAGRAPH_CHARS = 200


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
class TaskCorpus:
    """Text the tasks are cut from: prose haystacks, one long technical text, one long code text.

    pool: ``dev`` (evaluation and tuning) or ``train`` (a training mix); paths: the files read.
    """

    prose: list[str]
    docs: str
    code: str
    paths: list[str] = field(default_factory=list)
    pool: str = "dev"

    @cached_property
    def words(self) -> list[str]:
        """Sorted lowercase words (4-9 letters) seen at least 3 times in the prose."""
        counts = Counter(w for text in self.prose for w in re.findall(r"\b[a-z]{4,9}\b", text))
        return sorted(w for w, n in counts.items() if n >= 3)

    @cached_property
    def essays(self) -> list[str]:
        """Long texts of flowing expository prose: the prose paragraphs of ``docs`` in order (of
        ``prose`` when ``docs`` has none; plays would give speeches, not essays)."""
        paragraphs = prose_paragraphs(self.docs) or [p for text in self.prose for p in prose_paragraphs(text)]
        essays, current, size = [], [], 0
        for paragraph in paragraphs:
            current.append(paragraph)
            size += len(paragraph) + 2
            if size >= ESSAY_CHARS:
                essays.append("\n\n".join(current))
                current, size = [], 0
        if current:
            essays.append("\n\n".join(current))
        return essays

    @cached_property
    def doc_items(self) -> list[TextItem]:
        """Documented functions, methods, classes and exceptions of ``docs`` with a usable first sentence."""
        return _doc_items(self.docs)

    @cached_property
    def code_items(self) -> list[TextItem]:
        """One-line ``def`` statements of ``code`` with named parameters."""
        return _code_items(self.code)

    def save(self, path: str | Path) -> Path:
        """Write the corpus as gzipped JSON (read back with :meth:`load`)."""
        data = {"format": CORPUS_FORMAT, "pool": self.pool, "paths": self.paths, "prose": self.prose,
                "docs": self.docs, "code": self.code}
        path = Path(path)
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            json.dump(data, handle)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TaskCorpus":
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a task corpus file ({err})") from err
        if data.get("format") != CORPUS_FORMAT:
            raise ValueError(f"{path}: format {data.get('format')!r}, expected {CORPUS_FORMAT!r}")
        return cls(data["prose"], data["docs"], data["code"], data["paths"], data["pool"])


def load_dev_corpus(install: bool = True, n_prose: int = 40, n_docs: int = 120, n_code: int = 80) -> TaskCorpus:
    """The development pool (python-docs, shakespeare, CPython stdlib); never a training source."""
    prose = long_documents(list(PROSE_SOURCES), min_chars=50_000, limit=n_prose, install=install)
    docs = long_documents(["python-docs"], min_chars=20_000, limit=n_docs, install=install)
    code = long_documents(["cpython-stdlib"], min_chars=30_000, limit=n_code, install=install)
    return TaskCorpus(
        prose=[d.text for d in prose],
        docs="\n\n".join(d.text for d in docs),
        code="\n\n".join(d.text for d in code),
        paths=[d.path for d in prose + docs + code],
    )


# --- essays: prose paragraphs without markup ---------------------------------------------------
_ROLE = re.compile(r":[\w:+-]+:`~?([^`<]*?)(?:\s*<[^`>]*>)?`")  # :func:`~os.path.join` -> os.path.join
_LINK = re.compile(r"`([^`<]+?)(?:\s*<[^`>]*>)?`_{1,2}")  # `text <url>`_ -> text
_LITERAL = re.compile(r"``([^`]+)``")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_FOOTNOTE = re.compile(r"\s*\[(?:#\w*|\d+|\*)\]_")
_SUBSTITUTION = re.compile(r"\|([\w -]+)\|")
_NOT_PROSE_START = re.compile(r"^(\.\.|::|>>>|[-*+#=|~^`:]|\d+[.)] |\w+:\s*$)")


def clean_inline(text: str) -> str:
    """Inline reST markup replaced by its text; ``::`` at the end of a sentence becomes ``:``."""
    for pattern in (_ROLE, _LINK, _LITERAL, _EMPHASIS, _SUBSTITUTION):
        text = pattern.sub(r"\1", text)
    text = _FOOTNOTE.sub("", text)
    return re.sub(r"\s*::$", ":", text)


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of ``text`` that read as prose: unindented lines of sentences, at least
    MIN_PARAGRAPH_CHARS long once markup is gone, mostly letters, two sentences or more."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = block.strip("\n").splitlines()
        if not lines or any(line[:1].isspace() for line in lines) or _NOT_PROSE_START.match(lines[0]):
            continue
        if sum(len(line) for line in lines) / len(lines) < 50:  # verse, lists, headings
            continue
        paragraph = clean_inline(" ".join(line.strip() for line in lines))
        letters = sum(c.isalpha() or c.isspace() for c in paragraph)
        sentences = len(re.findall(r"[a-z0-9)][.!?](?:\s|$)", paragraph))
        if (len(paragraph) >= MIN_PARAGRAPH_CHARS and letters >= 0.88 * len(paragraph) and sentences >= 2
                and paragraph[0].isupper() and paragraph.rstrip()[-1] in ".!?:"):
            out.append(paragraph)
    return out


# --- items of the technical text and the code ----------------------------------------------------
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
