"""The user's own corpora as documents: files (plain text, JSONL, JSON, Parquet) and ``datasets``.

    inputs = [file_input("notes/*.md", record_text), dataset_input("my_ds:train", record_text)]
    # each input: .name ("files:notes/*.md"), .documents() (a fresh iterator), .provenance

Records (JSONL lines, JSON array items, Parquet and dataset rows) give their text through
:class:`RecordText`: ``--text-field`` names a column; otherwise ``messages`` /
``conversations`` (chat turns: ``role``/``content`` or ShareGPT ``from``/``value``) are rendered
with the model's own chat template, else ``text``, else ``content``. Any other file is
read as UTF-8 plain text (code, Markdown, prose), one document per file.

Errors (:class:`UserDataError`) name the file (and line or row). A file named exactly must be
usable: empty, binary, undecodable or shorter than ``min_chars`` is an error. Files a wildcard
matched are skipped for those reasons and counted in the provenance; a wildcard whose files
are all skipped is an error. A malformed record (bad JSON, no text field) is always an error.
Paths and dataset names of the reserved evaluation sources are refused (DATA.md).
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .source_table import check_not_reserved, is_reserved_path
from .sources import Document

CHAT_FIELDS = ("messages", "conversations")
TEXT_FIELDS = ("text", "content")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool"}
JSON_LINES = (".jsonl", ".ndjson")
DATASET_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text",
                    ".arrow": "arrow"}


class UserDataError(ValueError):
    """A user file or dataset that cannot be read or gives no usable text; the message names it."""


class NotText(UserDataError):
    """A file that is binary or not UTF-8 (skipped where a wildcard matched it)."""


# --- records -> text ---------------------------------------------------------------------------------
def chat_renderer(tokenizer: Any, model_name: str) -> Callable[[list[dict[str, str]]], str]:
    """Chat turns -> text through ``tokenizer``'s chat template (an error if it has none)."""

    def render(messages: list[dict[str, str]]) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise UserDataError(f"the tokenizer of {model_name} has no chat template")
        return tokenizer.apply_chat_template(messages, tokenize=False)

    return render


@dataclass
class RecordText:
    """How a record (dict) becomes one document's text."""

    render_chat: Callable[[list[dict[str, str]]], str]
    text_field: str | None = None

    def __call__(self, record: dict[str, Any], where: str) -> str:
        if not isinstance(record, dict):
            raise UserDataError(f"{where}: expected an object with a text field, got {type(record).__name__}")
        if self.text_field is not None:
            if self.text_field not in record:
                raise UserDataError(f"{where}: no field {self.text_field!r} (fields: {sorted(record)})")
            return self._value(record[self.text_field], where)
        for name in CHAT_FIELDS + TEXT_FIELDS:
            if record.get(name) is not None:
                return self._value(record[name], where)
        raise UserDataError(f"{where}: none of the fields {CHAT_FIELDS + TEXT_FIELDS} (fields: {sorted(record)}); "
                            "name the text column with --text-field")

    def _value(self, value: Any, where: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(turn, dict) for turn in value):
            try:
                return self.render_chat([_turn(turn, where) for turn in value])
            except UserDataError as err:
                raise UserDataError(f"{where}: chat messages, but {err}; name a plain-text field with "
                                    "--text-field") from err
        raise UserDataError(f"{where}: the text field holds {type(value).__name__}, not text or chat messages")


def _turn(turn: dict[str, Any], where: str) -> dict[str, str]:
    """One chat turn as ``{"role", "content"}`` (ShareGPT ``from``/``value`` mapped)."""
    if "role" in turn and "content" in turn:
        return {"role": str(turn["role"]), "content": str(turn["content"] or "")}
    if "from" in turn and "value" in turn:
        return {"role": SHAREGPT_ROLES.get(str(turn["from"]).lower(), str(turn["from"])), "content": str(turn["value"])}
    raise UserDataError(f"{where}: a chat turn needs role/content or from/value, got {sorted(turn)}")


# --- files -------------------------------------------------------------------------------------------
def expand(patterns: list[str]) -> list[tuple[str, list[Path]]]:
    """Each pattern with its sorted matching files (``**`` recurses); an error if one matches nothing."""
    expanded = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if glob.has_magic(pattern):
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
        elif path.is_dir():
            raise UserDataError(f"{pattern} is a directory; give files or a wildcard such as '{pattern}/**/*.txt'")
        elif path.is_file():
            files = [path]
        else:
            raise UserDataError(f"{pattern}: no such file")
        if not files:
            raise UserDataError(f"{pattern}: no file matches")
        expanded.append((pattern, files))
    return expanded


def _suffixes(path: Path) -> tuple[bool, str]:
    """(gzip-compressed, the format suffix under any .gz)."""
    compressed = path.suffix == ".gz"
    return compressed, (Path(path.stem).suffix if compressed else path.suffix).lower()


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as err:
        raise UserDataError(f"{path}: unreadable ({err})") from err


def _decode(path: Path, raw: bytes) -> str:
    if b"\x00" in raw:
        raise NotText(f"{path}: binary data (NUL bytes), not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NotText(f"{path}: not UTF-8 text (byte {err.start})") from err


def file_texts(path: Path, record_text: RecordText) -> Iterator[tuple[str, str]]:
    """(where, text) of every record of ``path`` (one for a plain-text file)."""
    _, suffix = _suffixes(path)
    if suffix == ".parquet":
        yield from _parquet_texts(path, record_text)
        return
    text = _decode(path, _read_bytes(path))
    if suffix in JSON_LINES:
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
            if line.strip():
                yield f"{path}:{number}", record_text(_json(line, f"{path}:{number}"), f"{path}:{number}")
    elif suffix == ".json":
        records = _json(text, str(path))
        if not isinstance(records, list):
            raise UserDataError(f"{path}: a .json file must hold a list of records (JSON Lines: use .jsonl)")
        for number, record in enumerate(records):
            yield f"{path}[{number}]", record_text(record, f"{path}[{number}]")
    else:
        yield str(path), text


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserDataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from err


def _parquet_texts(path: Path, record_text: RecordText) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield f"{path}[row {row}]", record_text(record, f"{path}[row {row}]")
                row += 1
    except (pa.ArrowException, OSError) as err:
        raise UserDataError(f"{path}: unreadable Parquet ({err})") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class UserInput:
    """One ``--files`` or ``--dataset`` input: a name, its documents (fresh iterator per call) and provenance."""

    name: str
    documents: Callable[[], Iterator[Document]]
    provenance: dict[str, Any] = field(default_factory=dict)


def file_input(pattern: str, record_text: RecordText, min_chars: int = 1) -> UserInput:
    """Documents of the files ``pattern`` matches (a path or a wildcard), in path order.

    The provenance (filled as documents are read) lists each file read with its size, sha256
    and the records it gave, the files skipped (by reason), and how many matched files were not read
    (``not_read``: packing had enough windows before it reached them).
    """
    ((_, files),) = expand([pattern])
    for path in files:
        if is_reserved_path(path.resolve()):
            raise UserDataError(f"refusing to read {path}: it belongs to a source reserved for independent "
                                "evaluation (DATA.md)")
    name = f"files:{pattern}"
    provenance: dict[str, Any] = {"description": "user files (rtpurbo data prepare --files)", "pattern": pattern,
                                  "matched": len(files), "files": [], "skipped": {}, "not_read": len(files)}

    def documents() -> Iterator[Document]:
        provenance["files"], provenance["skipped"] = [], {}
        for number, path in enumerate(files):
            provenance["not_read"] = len(files) - number - 1
            texts, reason = _usable_texts(path, record_text, min_chars, exact=not glob.has_magic(pattern))
            if reason:
                provenance["skipped"][reason] = provenance["skipped"].get(reason, 0) + 1
                continue
            provenance["files"].append({"path": str(path), "bytes": path.stat().st_size, "sha256": _sha256(path),
                                        "records": len(texts)})
            for where, text in texts:
                yield Document(name, where, text)
        if not provenance["files"]:
            raise UserDataError(f"{pattern}: all {len(files)} matching files are empty, binary, not UTF-8 or "
                                f"shorter than {min_chars} characters (e.g. {files[0]})")

    return UserInput(name, documents, provenance)


def _usable_texts(path: Path, record_text: RecordText, min_chars: int, exact: bool
                  ) -> tuple[list[tuple[str, str]], str | None]:
    """(records, None) or ([], reason skipped); for a file named exactly the reason is an error."""
    try:
        texts = [(where, text) for where, text in file_texts(path, record_text) if len(text.strip()) >= min_chars]
    except NotText:
        if exact:
            raise
        return [], "binary or not UTF-8"
    if texts:
        return texts, None
    if exact:
        raise UserDataError(f"{path}: empty, or no record reaches {min_chars} characters (--min-doc-chars)")
    return [], f"empty or shorter than {min_chars} characters"


# --- datasets ----------------------------------------------------------------------------------------
def dataset_input(spec: str, record_text: RecordText) -> UserInput:
    """``NAME_OR_PATH[:split]`` through the ``datasets`` library.

    A directory written by ``save_to_disk`` is read with ``load_from_disk``; a data file (or
    wildcard) with ``load_dataset("json" | "parquet" | "csv" | "text", data_files=...)``; any
    other directory with ``load_dataset(DIR)``; anything else is a Hub dataset, streamed
    (``HF_HUB_OFFLINE=1``: only what the datasets cache holds). The split defaults to ``train``.
    """
    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        check_not_reserved(name)
    except ValueError as err:
        raise UserDataError(str(err)) from err
    if is_reserved_path(Path(name).expanduser().resolve()):
        raise UserDataError(f"refusing to read {name}: it belongs to a source reserved for independent evaluation")
    dataset, loader = _load_dataset(name, split)
    provenance = {"description": "user dataset (rtpurbo data prepare --dataset)", "dataset": name, "split": split,
                  "loader": loader, "fingerprint": getattr(dataset, "_fingerprint", None),
                  "rows": len(dataset) if hasattr(dataset, "__len__") else None}

    def documents() -> Iterator[Document]:
        for row, record in enumerate(dataset):
            where = f"{name}:{split}[row {row}]"
            yield Document(f"dataset:{spec}", where, record_text(record, where))

    return UserInput(f"dataset:{spec}", documents, provenance)


def _load_dataset(name: str, split: str) -> tuple[Any, str]:
    """(dataset of ``split``, how it was loaded)."""
    import datasets

    path = Path(name).expanduser()
    cache_dir = str(_datasets_cache())
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise UserDataError(f"{name} has no split {split!r} (splits: {sorted(loaded)}); use {name}:SPLIT")
                loaded = loaded[split]
            return loaded, "load_from_disk"
        builder = DATASET_BUILDERS.get(path.suffix.lower())
        if builder and (path.is_file() or glob.has_magic(name)):
            whole_files = {"sample_by": "document"} if builder == "text" else {}  # a text file is one document
            return datasets.load_dataset(builder, data_files=str(path), split=split, cache_dir=cache_dir,
                                         **whole_files), f"load_dataset({builder!r}, data_files=...)"
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split, cache_dir=cache_dir), "load_dataset(directory)"
        return datasets.load_dataset(name, split=split, streaming=True), "load_dataset(Hub, streaming)"
    except UserDataError:
        raise
    except Exception as err:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError...)
        raise UserDataError(f"dataset {name!r} (split {split!r}) could not be loaded: {_first_cause(err)}") from err


def _first_cause(err: BaseException) -> str:
    """``Type: first line`` of the innermost error of a chain (``datasets`` wraps the one that names the file)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _datasets_cache() -> Path:
    """``$HF_DATASETS_CACHE``, else ``HF_HOME/datasets`` (read at call time)."""
    from ..hub import hub_home

    explicit = os.environ.get("HF_DATASETS_CACHE")
    return Path(explicit).expanduser() if explicit else hub_home() / "datasets"
