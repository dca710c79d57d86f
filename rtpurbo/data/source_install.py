"""Installing a source into the cache folder and finding its text files on disk.

`ensure_source` installs a source (apt packages, a pip sdist, an archive unpacked
into `{cache}/sources/<name>/`), or raises `SourceUnavailable` with the exact
commands to run, and returns the files its patterns match.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from .source_table import Source, get_source, is_reserved_path

# Generated files that DATA.md asks to skip (AMD GPU register headers).
SKIPPED_PATH_MARKERS = ("drivers/gpu/drm/amd/include/asic_reg",)


class SourceUnavailable(RuntimeError):
    """A source is not installed (or could not be installed); the message says how to get it."""


def default_cache_dir() -> Path:
    """`$RTPURBO_CACHE`, else `~/.cache/rtpurbo`."""
    return Path(os.environ.get("RTPURBO_CACHE", "~/.cache/rtpurbo")).expanduser()


def _folders(name: str, cache_dir: Path) -> dict[str, str]:
    """Values for the `{stdlib}`, `{download}` and `{unpacked}` placeholders of source `name`."""
    root = Path(cache_dir) / "sources" / name
    return {
        "stdlib": sysconfig.get_paths()["stdlib"],
        "download": str(root / "download"),
        "unpacked": str(root / "unpacked"),
    }


def install_commands(name: str, cache_dir: Path | None = None) -> list[str]:
    """Shell commands that install source `name` (apt needs root); `ensure_source` runs exactly these."""
    source = get_source(name)
    folders = _folders(name, cache_dir or default_cache_dir())
    python = shlex.quote(sys.executable)
    commands = []
    if source.apt_packages:
        commands.append("apt-get update")
        commands.append(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends " + " ".join(source.apt_packages)
        )
    if source.pip_requirement:
        commands.append(
            f"{python} -m pip download --no-deps --no-binary :all: {shlex.quote(source.pip_requirement)}"
            f" -d {shlex.quote(folders['download'])}"
        )
    if source.archive:
        archive = shlex.quote(source.archive.format(**folders))
        partial, unpacked = shlex.quote(folders["unpacked"] + ".partial"), shlex.quote(folders["unpacked"])
        module = "zipfile" if source.archive.endswith(".zip") else "tarfile"
        commands.append(
            f"rm -rf {partial} && {python} -m {module} -e {archive} {partial} && mv {partial} {unpacked}"
        )
    return commands


def _apt_installed(packages: Iterable[str]) -> bool:
    packages = list(packages)
    try:
        query = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\n", *packages], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:  # not a Debian system
        return False
    statuses = query.stdout.splitlines()
    return len(statuses) == len(packages) and all(status == "install ok installed" for status in statuses)


def _is_installed(source: Source, folders: dict[str, str]) -> bool:
    if source.apt_packages and not _apt_installed(source.apt_packages):
        return False
    return not source.archive or Path(folders["unpacked"]).is_dir()


def _dpkg_owned_files(packages: Iterable[str]) -> list[str]:
    listing = subprocess.run(["dpkg-query", "-L", *packages], capture_output=True, text=True, check=True)
    return listing.stdout.splitlines()


def _static_root(pattern: str) -> str:
    """The folder a pattern starts in: the folder part of everything before its first wildcard."""
    first_wildcard = min((pattern.index(c) for c in "*?[" if c in pattern), default=len(pattern))
    return os.path.dirname(pattern[:first_wildcard]) or "/"


def _walk_files(root: str, exclude: tuple[str, ...]) -> Iterator[str]:
    """Files under `root`, not descending into excluded or reserved folders."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [sub for sub in subfolders if not _is_skipped(os.path.join(folder, sub) + "/", exclude)]
        yield from (os.path.join(folder, file) for file in files)


def _is_skipped(path: str, exclude: tuple[str, ...]) -> bool:
    return (
        is_reserved_path(path)
        or any(marker in path for marker in SKIPPED_PATH_MARKERS)
        or any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)
    )


def _matching_files(source: Source, folders: dict[str, str]) -> list[Path]:
    """Sorted regular files of `source` that match its patterns and none of its exclusions."""
    patterns = [pattern.format(**folders) for pattern in source.patterns]
    if source.apt_packages and not source.archive:
        candidates: Iterable[str] = _dpkg_owned_files(source.apt_packages)
    else:
        roots = sorted({_static_root(pattern) for pattern in patterns})
        candidates = (path for root in roots for path in _walk_files(root, source.exclude))
    matched = {
        path
        for path in candidates
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns) and not _is_skipped(path, source.exclude)
    }
    return [Path(path) for path in sorted(matched) if os.path.isfile(path)]


def _run_install(name: str, commands: list[str]) -> None:
    for command in tqdm(commands, desc=f"installing {name}", unit="step"):
        try:
            subprocess.run(command, shell=True, check=True, stdout=2)  # stderr: stdout may be --json
        except subprocess.CalledProcessError as error:
            raise SourceUnavailable(
                f"installing source {name!r} failed (exit {error.returncode}) at:\n  {command}\n"
                "apt-get needs root; pip needs the package index"
            ) from error


def ensure_source(name: str, cache_dir: Path | None = None, install: bool = True) -> list[Path]:
    """Sorted text files of source `name`, installing it first if needed and `install` is true.

    Raises SourceUnavailable (with the commands to run) when the source is missing and
    `install` is false, when installing fails, or when no file matches.
    """
    source = get_source(name)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folders = _folders(name, cache_dir)
    if not _is_installed(source, folders):
        commands = install_commands(name, cache_dir)
        if not install:
            raise SourceUnavailable(f"source {name!r} is not installed; run:\n  " + "\n  ".join(commands))
        _run_install(name, commands)
    files = _matching_files(source, folders)
    if not files:
        raise SourceUnavailable(f"source {name!r} is installed but no file matches {source.patterns}")
    return files
