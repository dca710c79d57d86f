"""Out-of-memory search: at which context length does the dense model stop fitting, and the sparse one not?

The search is independent of what a "try" does: ``try_length(variant, length)`` either returns a
dict of measurements or raises ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the
same class). Lengths are tried in increasing order; a variant that ran out of memory is not tried
at longer lengths. Memory is released (gc + ``empty_cache``) after every try, outside the
``except`` block so the traceback no longer holds the failed try's tensors.
"""
from __future__ import annotations

import gc
from typing import Any, Callable

import torch

TryLength = Callable[[str, int], dict[str, Any]]


def free_memory() -> None:
    """Drop unreachable tensors and hand cached CUDA blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


OOM_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA and others; the CPU's DefaultCPUAllocator


def is_oom(err: BaseException) -> bool:
    """True for torch's OOM error, and for the RuntimeErrors of failed allocations (the CPU allocator's
    "DefaultCPUAllocator: can't allocate memory", some libraries' "out of memory")."""
    message = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(text in message for text in OOM_MESSAGES)
    )


def attempt(measure: Callable[[], dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    """``row`` updated with ``measure()`` and status ``ok``, or with status ``oom`` / ``error`` and the error.

    Any exception is caught (one failed measurement must not lose the others); call
    :func:`free_memory` afterwards, once the failed call's frames are gone.
    """
    try:
        row.update(measure())
        row["status"] = "ok"
    except Exception as err:  # noqa: BLE001
        first_line = (str(err).splitlines() or [""])[0][:200]
        row.update(status="oom" if is_oom(err) else "error", error=f"{type(err).__name__}: {first_line}")
    return row


def oom_search(
    try_length: TryLength,
    lengths: list[int],
    baseline: str = "dense",
    candidates: tuple[str, ...] = ("sparse",),
    keep_going: bool = False,
    out_of_time: Callable[[], bool] = lambda: False,
    record: Callable[[dict[str, Any]], None] = lambda row: None,
) -> dict[str, Any]:
    """Try ``baseline`` and ``candidates`` at growing ``lengths`` until the baseline runs out of memory.

    Without ``keep_going`` the search ends after the length where the baseline first ran out of
    memory (the candidates are still tried there); with it, it goes on until every variant has run
    out of memory or the lengths end. ``out_of_time()`` is asked before every try; once true, the
    remaining tries are recorded as skipped. A "CUDA error" (a sticky device fault, such as an illegal
    memory access, that fails every later call) ends the search. Every row is passed to ``record``
    as soon as it exists.

    Returns {"rows": [...], "first_oom": {variant: length or None},
    "dense_oom_sparse_fits": the first length where the baseline ran out of memory and every
    candidate ran (None if there is none among the lengths tried)}.
    """
    variants = (baseline, *candidates)
    first_oom: dict[str, int | None] = {v: None for v in variants}
    rows: list[dict[str, Any]] = []
    device_fault = False
    for length in sorted(lengths):
        if device_fault or (first_oom[baseline] is not None and not keep_going):
            break
        for variant in variants:
            if first_oom[variant] is not None:
                continue  # a shorter context already ran out of memory
            if out_of_time():
                row = {"variant": variant, "length": length, "status": "skipped", "error": "deadline"}
            else:
                row = attempt(lambda: try_length(variant, length), {"variant": variant, "length": length})
                free_memory()
            if row["status"] == "oom":
                first_oom[variant] = length
            rows.append(row)
            record(row)
            device_fault = row["status"] == "error" and "CUDA error" in row["error"]
            if device_fault:
                break
        if all(first_oom[v] is not None for v in variants):
            break
    return {"rows": rows, "first_oom": first_oom, "dense_oom_sparse_fits": _first_win(rows, baseline, candidates)}


def _first_win(rows: list[dict[str, Any]], baseline: str, candidates: tuple[str, ...]) -> int | None:
    """First length whose baseline row is ``oom`` while every candidate row at that length is ``ok``."""
    status = {(r["variant"], r["length"]): r["status"] for r in rows}
    for length in sorted({r["length"] for r in rows}):
        if status.get((baseline, length)) == "oom" and all(status.get((c, length)) == "ok" for c in candidates):
            return length
    return None
