"""Offline text corpora for training and development evaluation: the documents callers read.

`iter_documents` and `long_documents` read the built-in sources as cleaned,
de-duplicated `Document`s.  The parts live beside this module:
`source_table` (the `SOURCES` table, pools, the reserved-source guard),
`source_install` (`ensure_source`: installing a source and finding its files)
and `text_cleaning` (`read_text_file`: one file as plain text).

This module is also the public face of those parts: the names that callers
import from `rtpurbo.data.sources` are re-exported here (see `__all__`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from .source_install import SourceUnavailable, default_cache_dir, ensure_source
from .source_table import (
    RESERVED_SOURCES,
    SOURCES,
    Source,
    UnknownSource,
    check_not_reserved,
    get_source,
    is_reserved_path,
    sources_in_pool,
)
from .text_cleaning import MAX_FILE_BYTES, read_text_file, strip_gutenberg

__all__ = [
    "Document",
    "iter_documents",
    "long_documents",
    "MAX_FILE_BYTES",
    "RESERVED_SOURCES",
    "SOURCES",
    "Source",
    "SourceUnavailable",
    "UnknownSource",
    "check_not_reserved",
    "default_cache_dir",
    "ensure_source",
    "is_reserved_path",
    "read_text_file",
    "sources_in_pool",
    "strip_gutenberg",
]


@dataclass(frozen=True)
class Document:
    """One cleaned text file: `source` is its name in `SOURCES`, `path` its file."""

    source: str
    path: str
    text: str


def _text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def iter_documents(
    names: Iterable[str] | str,
    cache_dir: Path | None = None,
    min_chars: int = 0,
    install: bool = True,
) -> Iterator[Document]:
    """Documents of the sources `names`, in the given source order and sorted path order.

    Files over MAX_FILE_BYTES, binary files and texts shorter than `min_chars`
    are skipped; a text already yielded (same hash) is not yielded again.  Names
    are checked (reserved, unknown) before anything is read.
    """
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        get_source(name)
    return _documents(names, cache_dir, min_chars, install)


def _documents(names: list[str], cache_dir: Path | None, min_chars: int, install: bool) -> Iterator[Document]:
    seen: set[bytes] = set()
    for name in names:
        files = ensure_source(name, cache_dir, install)
        for path in tqdm(files, desc=f"reading {name}", unit="file", leave=False, disable=len(files) < 500):
            text = read_text_file(path)
            if text is None:
                continue
            if SOURCES[name].strip_gutenberg:
                text = strip_gutenberg(text)
            digest = _text_digest(text)
            if len(text) >= min_chars and digest not in seen:
                seen.add(digest)
                yield Document(name, str(path), text)


def long_documents(
    names: Iterable[str] | str,
    cache_dir: Path | None = None,
    min_chars: int = 20_000,
    limit: int = 100,
    install: bool = True,
) -> list[Document]:
    """Up to `limit` documents of at least `min_chars` characters, taken from the sources in turn.

    Round robin over `names` (one document from each source per round, in
    `iter_documents` order) so that a mix is balanced; deterministic.
    """
    names = [names] if isinstance(names, str) else list(names)
    streams = [iter_documents([name], cache_dir, min_chars, install) for name in names]
    picked: list[Document] = []
    seen: set[bytes] = set()
    while streams and len(picked) < limit:
        for stream in list(streams):
            document = next(stream, None)
            if document is None:
                streams.remove(stream)
            elif _text_digest(document.text) not in seen and len(picked) < limit:
                seen.add(_text_digest(document.text))
                picked.append(document)
    return picked
