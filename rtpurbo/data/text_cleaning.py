"""Reading one source file as cleaned plain text: decompression, HTML, troff and Gutenberg stripping."""

from __future__ import annotations

import gzip
import html
import re
from pathlib import Path

from .source_table import refuse_reserved_path

MAX_FILE_BYTES = 1_000_000

_HTML_INVISIBLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)
_HTML_BLOCK_END = re.compile(r"<(br|hr|/p|/div|/h[1-6]|/li|/dt|/dd|/tr|/pre|/table|/title)\b[^>]*>", re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_TROFF_COMMENT = re.compile(r"^['.][ \t]*\\\".*\n?", re.M)
_TROFF_REQUEST = re.compile(r"^['.][ \t]*[A-Za-z]\w*[ \t]*", re.M)
_TROFF_FONT = re.compile(r"\\f(\[[^]]*\]|\(..|.)|\\[&|^]")
_TROFF_GLYPH = re.compile(r"\\\((..)|\\\[([^]]*)\]")
_TROFF_GLYPHS = {"em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d", "bu": "\u2022", "mi": "-", "ti": "~", "rs": "\\"}
_BLANK_RUNS = re.compile(r"\n[ \t]*(\n[ \t]*)+\n")
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I)


def strip_html(markup: str) -> str:
    """Crude HTML to text: drop scripts, styles and tags (block ends become newlines), unescape, squeeze blank lines."""
    text = _HTML_BLOCK_END.sub("\n", _HTML_INVISIBLE.sub("", markup))
    text = html.unescape(_HTML_TAG.sub("", text))
    return _BLANK_RUNS.sub("\n\n", text).strip()


def strip_troff(source: str) -> str:
    """Crude man-page (troff) to text: drop comments, request names and font escapes; common glyphs."""
    text = _TROFF_REQUEST.sub("", _TROFF_COMMENT.sub("", source))
    text = _TROFF_GLYPH.sub(lambda glyph: _TROFF_GLYPHS.get(glyph[1] or glyph[2], ""), _TROFF_FONT.sub("", text))
    text = text.replace("\\-", "-").replace("\\ ", " ").replace("\\e", "\\")
    return _BLANK_RUNS.sub("\n\n", text).strip()


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg text, without its licence header and footer (if present)."""
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)].strip()


def read_text_file(path: str | Path) -> str | None:
    """Cleaned text of one file, or None if it is over MAX_FILE_BYTES on disk or binary.

    `.gz` / `.dz` files are decompressed; HTML loses its tags and man pages
    (`/man/man*` paths) their troff requests.  Reserved paths raise ValueError.
    """
    path = Path(path)
    refuse_reserved_path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        return None
    compressed = path.suffix in (".gz", ".dz")
    raw = gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()
    if b"\x00" in raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    inner_suffix = Path(path.stem).suffix if compressed else path.suffix
    if inner_suffix in (".html", ".htm"):
        return strip_html(text)
    if "/man/man" in path.as_posix():
        return strip_troff(text)
    return text
