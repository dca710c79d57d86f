"""Value parsers of the ``rtpurbo bench`` flags: each returns the value or raises ``argparse.ArgumentTypeError``, so
a bad value is a one-line usage error (exit 2) before anything runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from ..cli_args import path_value
from .model_report import report_path


def tokens(value: str) -> int:
    """'32768', '32K' or '1M' -> a token count >= 1."""
    scale = {"k": 2**10, "m": 2**20}.get(value[-1:].lower(), 1)
    try:
        number = int(value[:-1] if scale > 1 else value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a token count like 32768, 32K or 1M, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value!r}")
    return number


def tokens_or_zero(value: str) -> int:
    """'0' -> 0 (the flag's "off"), else :func:`tokens`."""
    return 0 if value.strip() == "0" else tokens(value)


def comma_list(item: Callable[[str], object], allow_empty: bool = False) -> Callable[[str], list]:
    """A parser of 'a,b,c' whose items ``item`` parses (at least one item, unless ``allow_empty``: then '' is none)."""
    def parse(value: str) -> list:
        items = [item(text.strip()) for text in value.split(",") if text.strip()]
        if not items and not allow_empty:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}")
        return items
    return parse


def one_of(names: list[str] | tuple[str, ...]) -> Callable[[str], str]:
    """A parser of one of ``names``."""
    def parse(value: str) -> str:
        if value not in names:
            raise argparse.ArgumentTypeError(f"unknown {value!r}: choose from {', '.join(names)}")
        return value
    return parse


def out_file(value: str) -> Path:
    """A results file path (``~`` expanded, as every path flag): neither it nor its report
    (:func:`.model_report.report_path`) may be a directory."""
    path = path_value(value)
    for taken in (path, report_path(path)):
        if taken.is_dir():
            raise argparse.ArgumentTypeError(f"{str(taken)!r} is a directory; --out names a file")
    return path
