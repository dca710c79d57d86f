"""``rtpurbo eval --ppl-data DIR``: perplexity by position on the user's own text.

DIR holds dev-pool shards (``rtpurbo data prepare --pool dev --files ...``): windows that never
span two documents. They replace the built-in perplexity windows; such a run scores perplexity
only (no tasks, no timing) unless ``--tasks`` or ``--speed-repeats`` ask for more.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..cli_args import SettingsError
from ..train.data import fingerprint_shards, load_shards
from ..data.task_data import TaskData
from .suite import SuiteSettings, build_data


def user_windows(path: Path, tokenizer: Any, count: int | None, length: int | None, max_positions: int
                 ) -> tuple[list[list[int]], dict[str, Any]]:
    """``count`` rows (default all) of the dev shards at ``path``, spread evenly over them and cut to ``length``
    tokens; and their provenance."""
    shards = load_shards(path, tokenizer, pool="dev")
    length = min(length or shards.seq_len, shards.seq_len)
    if length > max_positions:
        raise SettingsError(f"--ppl-data {path} holds windows of {length} tokens, more than the model's "
                            f"{max_positions} positions; pass --ppl-length")
    total = len(shards.sequences)
    count = total if count is None else min(count, total)
    if count < 1:
        raise SettingsError(f"--ppl-data {path}: no window to score (--ppl-windows {count})")
    picked = sorted({round(k * (total - 1) / max(1, count - 1)) for k in range(count)})
    rows = shards.sequences[picked, :length].tolist()
    meta = {"perplexity_data": str(path), "perplexity_shards": fingerprint_shards(shards), "perplexity_rows": picked,
            "perplexity_sources": sorted(shards.manifest["sources"])}
    return rows, meta


def with_user_windows(args: argparse.Namespace, tokenizer: Any, settings: SuiteSettings, data: TaskData | None,
                      max_positions: int, progress: bool) -> tuple[TaskData, SuiteSettings]:
    """(data with the ``--ppl-data`` windows, settings of a perplexity-first run)."""
    windows, meta = user_windows(args.ppl_data, tokenizer, args.ppl_windows, args.ppl_length, max_positions)
    tasks = args.tasks or []
    settings = replace(settings, tasks=tasks, samples=settings.samples if tasks else 0, ppl_windows=len(windows),
                       ppl_length=len(windows[0]), speed_repeats=args.speed_repeats or 0)
    if data is None and settings.tasks:
        data = build_data(tokenizer, replace(settings, ppl_windows=0), progress=progress)
    samples, base_meta = (data.samples, data.meta) if data is not None else ([], {})
    return TaskData(samples, windows, {**base_meta, **meta}), settings
