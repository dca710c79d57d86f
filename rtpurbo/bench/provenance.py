"""Where a benchmark result comes from: when it ran, the command line, the rtpurbo checkout, the library versions.

Both benchmarks (:mod:`rtpurbo.bench.end_to_end`, :mod:`rtpurbo.bench.attention`) put this into their
environment record; nothing here fails (what cannot be found is ``None``).
"""
from __future__ import annotations

import importlib
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from .. import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../rtpurbo


def _git(directory: Path, *args: str) -> str | None:
    """stdout of ``git args`` run in ``directory``, or None on any failure (no git, not a checkout, timeout)."""
    try:
        done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_checkout(directory: Path = PACKAGE_DIR) -> dict[str, Any]:
    """{"git_commit": HEAD, "git_dirty": tracked files changed since} of the git checkout ``directory`` (the rtpurbo
    package) is the top folder of, or both None: not such a checkout (e.g. installed into site-packages, even
    inside someone else's repository), no git, any failure."""
    none = {"git_commit": None, "git_dirty": None}
    out = _git(directory, "rev-parse", "--show-toplevel", "HEAD")
    lines = out.splitlines() if out else []
    if len(lines) != 2 or Path(lines[0]).resolve() != directory.resolve().parent:
        return none
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return {"git_commit": lines[1], "git_dirty": None if status is None else bool(status.strip())}


def _triton_version() -> str | None:
    try:
        return importlib.import_module("triton").__version__
    except Exception:  # noqa: BLE001 (absent, or broken without a GPU: either way no version to report)
        return None


def command_line(argv: list[str]) -> str:
    """``argv`` as a shell line; ``python -m rtpurbo.cli`` for the path that ``-m`` puts in ``argv[0]``."""
    head = ["python", "-m", "rtpurbo.cli"] if argv and Path(argv[0]).resolve() == PACKAGE_DIR / "cli.py" else argv[:1]
    return shlex.join(head + argv[1:])


def provenance() -> dict[str, Any]:
    """UTC date, command line (``sys.argv``), rtpurbo checkout and versions of the libraries that ran."""
    return {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command_line(sys.argv),
            **git_checkout(), "rtpurbo": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "triton": _triton_version(),
            "python": platform.python_version()}


def footer(env: dict[str, Any]) -> str:
    """One Markdown line: versions, checkout and date of ``env`` (an environment record with :func:`provenance`)."""
    commit = env.get("git_commit")
    checkout = "not a git checkout" if commit is None else f"git {commit[:12]}" + (
        " + uncommitted changes" if env.get("git_dirty") else "")
    triton = f", triton {env['triton']}" if env.get("triton") else ""
    return (f"rtpurbo {env.get('rtpurbo')} ({checkout}), torch {env.get('torch')}, transformers "
            f"{env.get('transformers')}{triton}; {env.get('date_utc')}")
