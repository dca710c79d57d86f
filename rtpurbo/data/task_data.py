"""Task data: long-context task samples and perplexity windows of one split, as one ``.npz`` file.

    data = build_task_data(tokenizer, lengths=[4096, 8192], tasks=TASKS, samples=20, split="tune",
                           ppl_windows=8, ppl_length=8192)
    save_task_data(data, "tune_data.npz");  data = load_task_data("tune_data.npz", tokenizer)

Splits: ``eval`` is what results are reported on (the eval suite); ``tune`` (other task seeds,
perplexity windows from later documents) feeds head profiling by knockout and plan search,
so choosing a plan never looks at an evaluation item. Both come from the dev pool.

The file holds token ids (packed, smallest unsigned dtype) and a JSON header with each
sample's fields and a tokenizer probe; loading with another tokenizer is refused.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .sources import long_documents
from .tasks import PromptFormat, TaskCorpus, TaskSample, load_dev_corpus, make_task_sample
from .user import UserDataError

PPL_SOURCES = ("shakespeare", "python-docs", "cpython-stdlib")
MAX_EVAL_WINDOWS = 32  # eval perplexity windows come from the first documents, tune windows from later ones
DATA_FORMAT = "rtpurbo.eval_data/1"
_PROBE = "The pass key is 4821. def f(x):\n\treturn x"


@dataclass
class TaskData:
    """Task samples of every (task, length) and perplexity windows, with their provenance."""

    samples: list[TaskSample]
    windows: list[list[int]]
    meta: dict[str, Any]

    def group(self, task: str, length: int, n: int) -> list[TaskSample]:
        """The first ``n`` samples of ``task`` at ``length``; error if the data holds fewer."""
        found = [s for s in self.samples if s.task == task and s.length == length][:n]
        if len(found) < n:
            raise TooFewSamples(f"the eval data holds {len(found)} samples of {task} at {length}, {n} requested "
                                "(--samples)")
        return found


class TooFewSamples(ValueError):
    """Eval data holding fewer samples of a task and length than a run asks for."""


class TaskDataError(UserDataError):
    """An eval or tune data file that is missing, unreadable, not rtpurbo's, made with another tokenizer, or of the
    wrong split; the message names it."""


def tokenizer_probe(tokenizer: Any) -> list[int]:
    return tokenizer.encode(_PROBE, add_special_tokens=False) + [len(tokenizer)]


def perplexity_windows(tokenizer: Any, n: int, length: int, install: bool = True,
                       sources: tuple[str, ...] = PPL_SOURCES, skip: int = 0) -> list[list[int]]:
    """``n`` windows of ``length`` tokens from the middle of long dev-pool documents, sources in turn
    (the middle skips title pages, licences and dramatis personae), after the first ``skip`` windows."""
    docs = long_documents(list(sources), min_chars=5 * length, limit=4 * (n + skip) + 8, install=install)
    windows = []
    for doc in docs:
        ids = tokenizer.encode(doc.text, add_special_tokens=False)
        if len(ids) >= length:
            start = (len(ids) - length) // 2
            windows.append(ids[start : start + length])
        if len(windows) == n + skip:
            return windows[skip:]
    raise RuntimeError(f"found {len(windows)} dev documents of {length} tokens in {sources}, {n + skip} wanted")


def build_task_data(tokenizer: Any, lengths: list[int], tasks: list[str], samples: int, split: str = "eval",
                    ppl_windows: int = 0, ppl_length: int = 8192, chat: bool = True, workers: int = 1,
                    corpus: TaskCorpus | None = None, windows: list[list[int]] | None = None,
                    progress: bool = True, install: bool = True, first_sample: int = 0) -> TaskData:
    """Samples ``first_sample`` .. ``first_sample + samples - 1`` of every task at every length, and
    ``ppl_windows`` windows (deterministic). A later ``first_sample`` adds new samples to an earlier file's:
    evaluate them separately and merge the rows (``rtpurbo eval --report-only --merge``).

    ``corpus``: the task text (default: the installed dev pool); ``windows``: perplexity
    windows to use instead of reading the dev pool (e.g. from an earlier data file).
    """
    if split == "eval" and ppl_windows > MAX_EVAL_WINDOWS:
        raise ValueError(f"eval data takes at most {MAX_EVAL_WINDOWS} perplexity windows (later documents are "
                         f"the tune split's), {ppl_windows} asked for")
    corpus = corpus or load_dev_corpus(install=install)
    if corpus.pool != "dev":
        raise ValueError(f"eval and tune data come from the dev pool, this corpus is from the {corpus.pool!r} pool")
    fmt = PromptFormat.for_tokenizer(tokenizer, chat=chat)
    if first_sample < 0:
        raise ValueError(f"first_sample must be >= 0, got {first_sample}")
    jobs = [(t, length, i) for length in lengths for t in tasks for i in range(first_sample, first_sample + samples)]
    built = _build_jobs(jobs, tokenizer, corpus, fmt, split, workers, progress)
    if windows is None:
        windows = []
        if ppl_windows:
            skip = MAX_EVAL_WINDOWS if split == "tune" else 0
            windows = perplexity_windows(tokenizer, ppl_windows, ppl_length, install, skip=skip)
    meta = {"probe": tokenizer_probe(tokenizer), "chat_template": fmt.chat, "corpus_files": len(corpus.paths),
            "split": split, "first_sample": first_sample,
            "task_sources": ["python-docs", "shakespeare", "cpython-stdlib"], "perplexity_sources": list(PPL_SOURCES)}
    return TaskData(built, windows[:ppl_windows], meta)


def _build_jobs(jobs: list[tuple[str, int, int]], tokenizer: Any, corpus: TaskCorpus, fmt: PromptFormat, split: str,
                workers: int, progress: bool) -> list[TaskSample]:
    """Task samples of ``jobs`` (task, length, index), in order; ``workers`` processes (fork) when > 1."""
    bar = tqdm(total=len(jobs), desc="building task samples", disable=not progress)
    if workers <= 1:
        samples = []
        for task, length, i in jobs:
            samples.append(make_task_sample(task, tokenizer, corpus, length, i, fmt, split))
            bar.update(1)
        bar.close()
        return samples
    global _WORKER_STATE
    _WORKER_STATE = (tokenizer, corpus, fmt, split)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # fork after the Rust tokenizer has run
    chunks = [jobs[i : i + 16] for i in range(0, len(jobs), 16)]
    samples = []
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for part in pool.imap(_build_chunk, chunks):
            samples += part
            bar.update(len(part))
    bar.close()
    return samples


_WORKER_STATE: tuple | None = None  # (tokenizer, corpus, prompt format, split), inherited by forked workers


def _build_chunk(jobs: list[tuple[str, int, int]]) -> list[TaskSample]:
    tokenizer, corpus, fmt, split = _WORKER_STATE
    return [make_task_sample(task, tokenizer, corpus, length, i, fmt, split) for task, length, i in jobs]


def check_tune_split(data: TaskData, source: Any = "the data") -> None:
    """Raise unless ``data`` is tune-split data: choosing heads or plans must not see evaluation items."""
    if data.meta.get("split") != "tune":
        raise TaskDataError(f"{source} holds {data.meta.get('split', 'eval')!r}-split data; head and plan selection "
                            "must not see evaluation items (rtpurbo eval --prepare-only --split tune)")


# --- the file --------------------------------------------------------------------------------------
# what numpy raises for a file that is missing, a directory, not an .npz archive, truncated, or lacks an array
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def _pack(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    flat = [t for r in rows for t in r]
    dtype = np.uint16 if max(flat, default=0) < 2**16 else np.uint32
    return np.asarray(flat, dtype=dtype), np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)


def _unpack(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [flat[a:b].astype(np.int64).tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def save_task_data(data: TaskData, path: str | Path) -> None:
    """Write ``data`` as a compressed ``.npz`` (token ids + a JSON header); carry it to other machines."""
    heads = [{k: v for k, v in asdict(s).items() if k not in ("prompt_ids", "answer_ids")} for s in data.samples]
    arrays = {}
    columns = {"prompt": [s.prompt_ids for s in data.samples], "answer": [s.answer_ids for s in data.samples],
               "windows": data.windows}
    for name, rows in columns.items():
        arrays[name], arrays[name + "_offsets"] = _pack(rows)
    header = json.dumps({"format": DATA_FORMAT, "meta": data.meta, "samples": heads})
    np.savez_compressed(path, header=np.array(header), **arrays)


def load_task_data(path: str | Path, tokenizer: Any) -> TaskData:
    """Read :func:`save_task_data` output; the tokenizer must tokenise exactly like the one that wrote it.
    Raises :class:`TaskDataError` naming the file and what is wrong with it."""
    not_ours = f"{path} is not rtpurbo eval data (rtpurbo eval --prepare-only writes it)"
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise TaskDataError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise TaskDataError(f"{path} is a directory, not an eval data file") from err
    except _UNREADABLE as err:
        raise TaskDataError(f"{not_ours}: {type(err).__name__}: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TaskDataError(f"{not_ours}: it holds one array, not an .npz archive")
    try:
        with archive as f:
            header = json.loads(str(f["header"]))
            prompts, answers = _unpack(f["prompt"], f["prompt_offsets"]), _unpack(f["answer"], f["answer_offsets"])
            windows = _unpack(f["windows"], f["windows_offsets"])
    except _UNREADABLE as err:
        raise TaskDataError(f"{not_ours}: {type(err).__name__}: {err}") from err
    if not isinstance(header, dict) or header.get("format") != DATA_FORMAT:
        raise TaskDataError(not_ours)
    meta = header.get("meta")
    if not isinstance(meta, dict) or "probe" not in meta or not isinstance(header.get("samples"), list):
        raise TaskDataError(f"{path}: its header lacks the tokenizer probe or the samples")
    if meta["probe"] != tokenizer_probe(tokenizer):
        raise TaskDataError(f"{path} was made with a different tokenizer than this model's: make it again with "
                            "this model (rtpurbo eval --prepare-only --model ...)")
    try:
        samples = [TaskSample(prompt_ids=p, answer_ids=a, **{**h, "spans": [tuple(s) for s in h["spans"]]})
                   for h, p, a in zip(header["samples"], prompts, answers)]
    except (KeyError, TypeError) as err:
        raise TaskDataError(f"{path}: a sample of its header is malformed ({type(err).__name__}: {err})") from err
    return TaskData(samples, windows, meta)
