"""The evaluation suite: its data (task samples + perplexity windows, :mod:`rtpurbo.data.task_data`),
its rows (model variants) and the loop that scores each row, resumably.

Rows on the base model share one loaded, converted model and switch plans in place:

* ``dense``: every KV head retrieval, ``top_p = 1`` (computes exactly the base model);
* ``streaming``: every KV head local (window ``W`` + ``S`` sinks), StreamingLLM-style;
* ``split``: the training-free head split (profiled or given plan), the CLI's ``top_p``;
* further named splits (``--plans NAME=PLAN``), each with its own plan and, from a
  ``headwise_config`` file, its own window.

Trained stages are rtpurbo artifact directories, each loaded on its own.

Every row's retrieval heads select at every length (``seqlen_threshold = 0``): the suite measures
the method's fidelity, indexer included, at lengths where a deployed model (default threshold
256K) would still decode over all keys. The speed unit times each model as it runs instead, at its own
threshold (the shared converted model's, or the artifact's after its ``@`` settings).

Results go to ``OUT/rows/<row>.json`` unit by unit (perplexity, speed, one unit per task and
length, with per-sample scores). A unit whose samples' digest and the row's identity
(base weights, plan, sparse config, artifact weights, dtype, batch) match what is stored is not run again, so an
interrupted run resumes, and runs over different lengths into one directory add up.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn
from tqdm.auto import tqdm

from ..selection_stats import recording_prefill
from ..config import HeadPlan, dumps
from ..convert import apply_plan
from ..converted import kv_geometry
from ..data.task_data import TaskData, build_task_data
from ..data.tasks import TASKS, TaskCorpus, TaskSample
from ..models import model_fingerprint
from .perplexity import perplexity
from ..models import stop_token_ids
from .scoring import score_batch
from .speed import measure_speed

BASE_ROWS = ("dense", "streaming", "split")


@dataclass
class SuiteSettings:
    """What is evaluated and how (the CLI's flags, resolved)."""

    lengths: list[int]
    samples: int
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    ppl_windows: int = 12
    ppl_length: int = 8192
    batch_size: int = 1
    prefill_chunk: int | None = None
    decode: str = "eager"  # answer decode steps: eager or graph (rtpurbo.eval.scoring)
    speed_length: int = 8192
    speed_repeats: int = 3
    speed_warmup: int = 1
    speed_steps: int = 16
    chat: bool = True
    split: str = "eval"
    workers: int = 1
    first_sample: int = 0  # data preparation: index of the first sample of every (task, length)


# --- data -------------------------------------------------------------------------------------------
def build_data(tokenizer: Any, settings: SuiteSettings, corpus: TaskCorpus | None = None,
               progress: bool = True, install: bool = True, windows: list[list[int]] | None = None) -> TaskData:
    """Every sample and window ``settings`` ask for (:func:`rtpurbo.data.task_data.build_task_data`)."""
    return build_task_data(tokenizer, settings.lengths, settings.tasks, settings.samples, settings.split,
                           settings.ppl_windows, settings.ppl_length, settings.chat, settings.workers, corpus,
                           windows, progress, install, settings.first_sample)


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- rows -------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One model variant of the table: a base row (``plan``, ``top_p``) or an artifact (path, optional top-p)."""

    name: str
    kind: str
    plan: HeadPlan | None = None
    top_p: float | None = None
    artifact: Path | None = None
    window: int | None = None  # a base row's own W (None: the converted model's)
    sinks: int | None = None  # a base row's own S (None: the converted model's)
    settings: dict[str, Any] = field(default_factory=dict)  # an artifact row's sparse settings changed (top_p, ...)


def base_rows(names: list[str], split_plan: HeadPlan | None, top_p: float,
              geometry_qkv: tuple[int, int, int]) -> list[Row]:
    """The dense / streaming / split rows asked for, in table order."""
    layers, kv, q = geometry_qkv
    unknown = sorted(set(names) - set(BASE_ROWS))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; base rows are {BASE_ROWS} (trained stages: --artifacts)")
    plans = {"dense": HeadPlan.uniform(layers, kv, q, retrieval=True),
             "streaming": HeadPlan.uniform(layers, kv, q, retrieval=False), "split": split_plan}
    top_ps = {"dense": 1.0, "streaming": 1.0, "split": top_p}
    return [Row(n, n, plans[n], top_ps[n]) for n in BASE_ROWS if n in names]


def configure(model: nn.Module, row: Row, window: int | None = None, sinks: int | None = None) -> None:
    """Switch the shared converted model to ``row``'s plan, top-p, window and sinks (the row's own, else
    ``window`` / ``sinks``, else unchanged); fresh indexers."""
    apply_plan(model, row.plan)
    model.rtpurbo_sparse.top_p = row.top_p
    model.rtpurbo_sparse.seqlen_threshold = 0  # measure the selection at every length (module docstring)
    model.rtpurbo_sparse.window = row.window or window or model.rtpurbo_sparse.window
    own_sinks = row.sinks if row.sinks is not None else sinks
    model.rtpurbo_sparse.sinks = model.rtpurbo_sparse.sinks if own_sinks is None else own_sinks


def kv_bytes_per_token(model: nn.Module, kind: str, context: int, bytes_per_value: int = 2) -> float:
    """KV-cache bytes per token at ``context`` (bf16 by default): dense for the dense row, else head-wise."""
    geo = kv_geometry(model, bytes_per_value)
    total = geo.dense_bytes(context) if kind == "dense" else geo.sparse_bytes(context)
    return total / context


def row_identity(model: nn.Module, row: Row, settings: SuiteSettings) -> dict[str, Any]:
    """What a row's stored results depend on (besides each unit's own samples)."""
    weights = None
    if row.artifact is not None:
        weights = json.loads((Path(row.artifact) / "rtpurbo_config.json").read_text()).get("files")
    return {
        "kind": row.kind, "base_model": model_fingerprint(model), "plan": model.rtpurbo_plan.retrieval,
        "sparse": model.rtpurbo_sparse.to_dict(), "artifact_files": weights, "dtype": str(next(model.parameters()).dtype),
        "device": next(model.parameters()).device.type, "batch_size": settings.batch_size,
        "prefill_chunk": settings.prefill_chunk, "decode": settings.decode,
    }


# --- results store ----------------------------------------------------------------------------------
class RowStore:
    """``OUT/rows/<name>.json``: a row's identity and its finished units, rewritten atomically."""

    def __init__(self, out: Path, name: str, identity: dict[str, Any]):
        self.path = out / "rows" / f"{name}.json"
        self.data: dict[str, Any] = {"row": name, "identity": identity, "units": {}}
        if self.path.is_file():
            stored = json.loads(self.path.read_text())
            if stored.get("identity") == identity:
                self.data = stored

    def get(self, key: str, unit_digest: str) -> dict[str, Any] | None:
        unit = self.data["units"].get(key)
        return unit if unit is not None and unit.get("digest") == unit_digest else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data["units"][key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(dumps(self.data))
        os.replace(tmp, self.path)


# --- evaluating one row -----------------------------------------------------------------------------
def bucket_edges(length: int) -> tuple[int, ...]:
    """0, 1K, 2K, 4K, ... doubling, closed by ``length``."""
    edges = [0, 1024]
    while edges[-1] * 2 < length:
        edges.append(edges[-1] * 2)
    return tuple(edges + [length]) if length > 1024 else (0, length)


def run_perplexity(model: nn.Module, windows: list[list[int]], progress: bool) -> dict[str, Any]:
    """Per window: total and per-bucket [nll_sum, tokens] (bootstrap over windows in the report); with a
    sparse retrieval prefill, also the fraction of visible key blocks it kept over all windows."""
    per_window = []
    with recording_prefill(model) as stats:
        for window in tqdm(windows, desc="perplexity", disable=not progress, leave=False):
            result = perplexity(model, [window], bucket_edges(len(window)), progress=False)
            per_window.append({"all": [result.nll_sum, result.tokens], "buckets": result.buckets})
    fraction = stats.summary().get("prefill_block_fraction")
    return {"windows": per_window, **({} if fraction is None else {"prefill_block_fraction": fraction})}


def run_task_unit(model: nn.Module, tokenizer: Any, samples: list[TaskSample], settings: SuiteSettings,
                  bar: tqdm) -> dict[str, Any]:
    """Scores of one (task, length) group, batch by batch, with the pooled top-p selection."""
    stops = stop_token_ids(model, tokenizer)
    rows, selected, fractions, prefill_blocks = [], 0, [], []
    for start in range(0, len(samples), settings.batch_size):
        batch = samples[start : start + settings.batch_size]
        scores, selection = score_batch(model, tokenizer, batch, stops, settings.prefill_chunk, settings.decode)
        for sample, score in zip(batch, scores):
            rows.append({"seed": sample.seed, "ids": digest(sample.prompt_ids, sample.answer_ids), "depth": sample.depth,
                         **asdict(score)})
        if selection["samples"]:
            selected += selection["samples"]
            fractions.append((selection["mean_fraction"], selection["samples"]))
        if "prefill_block_fraction" in selection:
            prefill_blocks.append((selection["prefill_block_fraction"], len(batch)))
        bar.update(len(batch))
    mean_fraction = sum(f * n for f, n in fractions) / selected if selected else None
    prefill_fraction = (sum(f * n for f, n in prefill_blocks) / sum(n for _, n in prefill_blocks)
                        if prefill_blocks else None)
    return {"samples": rows, "selection_mean_fraction": mean_fraction, "prefill_block_fraction": prefill_fraction}


def evaluate_row(model: nn.Module, tokenizer: Any, row: Row, data: TaskData, settings: SuiteSettings,
                 out: Path, progress: bool = True, speed_threshold: int | None = None) -> dict[str, Any]:
    """Run every unit of ``row`` that is not stored yet; returns the row's stored data. ``speed_threshold``: the
    ``seqlen_threshold`` the speed unit runs at (the model as it runs; default: the model's current one)."""
    store = RowStore(out, row.name, row_identity(model, row, settings))
    # what describes the row goes in first: a run cut off mid-row still leaves a row the report can read
    store.data["kv_bytes_per_token"] = {str(c): kv_bytes_per_token(model, row.kind, c)
                                        for c in sorted({max(settings.lengths), 131072})}
    store.data.update(kind=row.kind, plan=model.rtpurbo_plan.to_dict(), sparse=model.rtpurbo_sparse.to_dict())
    store.save()
    windows_digest = digest(data.windows)
    if data.windows and store.get("perplexity", windows_digest) is None:
        store.put("perplexity", {"digest": windows_digest, **run_perplexity(model, data.windows, progress)})
    speed_key = {k: getattr(settings, k) for k in ("speed_length", "speed_repeats", "speed_warmup", "speed_steps")}
    selecting = model.rtpurbo_sparse.seqlen_threshold
    speed_key["seqlen_threshold"] = selecting if speed_threshold is None else speed_threshold
    if settings.speed_repeats and store.get("speed", digest(speed_key)) is None:
        model.rtpurbo_sparse.seqlen_threshold = speed_key["seqlen_threshold"]
        try:
            timing = measure_speed(model, settings.speed_length, settings.speed_steps, settings.speed_repeats,
                                   settings.speed_warmup)
        finally:
            model.rtpurbo_sparse.seqlen_threshold = selecting
        store.put("speed", {"digest": digest(speed_key), "seqlen_threshold": speed_key["seqlen_threshold"], **timing})
    groups = {(t, length): data.group(t, length, settings.samples)
              for length in settings.lengths for t in settings.tasks}
    digests = {key: digest([(s.prompt_ids, s.answer_ids) for s in group]) for key, group in groups.items()}
    todo = [key for key in groups if store.get(f"task:{key[0]}@{key[1]}", digests[key]) is None]
    with tqdm(total=sum(len(groups[key]) for key in todo), desc=f"tasks ({row.name})", disable=not progress) as bar:
        for task, length in todo:
            bar.set_postfix_str(f"{task}@{length}")
            unit = run_task_unit(model, tokenizer, groups[task, length], settings, bar)
            store.put(f"task:{task}@{length}", {"digest": digests[task, length], **unit})
    return store.data


def run_suite(model: nn.Module, tokenizer: Any, rows: list[Row], data: TaskData, settings: SuiteSettings, out: Path,
              load_artifact: Any, progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate base rows on the shared converted ``model``, then each artifact row on its own model.

    ``load_artifact(path) -> (model, tokenizer)`` loads a trained stage. Returns the rows' stored data.
    """
    results: dict[str, dict[str, Any]] = {}
    window, sinks = model.rtpurbo_sparse.window, model.rtpurbo_sparse.sinks
    deployed = model.rtpurbo_sparse.seqlen_threshold  # the shared model's, before configure() sets 0
    for row in rows:
        if row.artifact is None:
            configure(model, row, window, sinks)
            results[row.name] = evaluate_row(model, tokenizer, row, data, settings, out, progress, deployed)
    for row in rows:
        if row.artifact is not None:
            trained, trained_tokenizer = load_artifact(row.artifact)
            for key, value in row.settings.items():
                setattr(trained.rtpurbo_sparse, key, value)
            if row.top_p is not None:
                trained.rtpurbo_sparse.top_p = row.top_p
            deployed = trained.rtpurbo_sparse.seqlen_threshold  # the artifact's, after the row's own settings
            trained.rtpurbo_sparse.seqlen_threshold = 0
            results[row.name] = evaluate_row(trained, trained_tokenizer, row, data, settings, out, progress, deployed)
            del trained
    return [results[row.name] for row in rows]
