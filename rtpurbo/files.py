"""Directories written whole or not at all (artifacts, exports, data shards, training checkpoints), and the checks
that an output directory may be written."""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class NotAnEarlierOutput(FileExistsError):
    """An output directory that exists and holds something other than an earlier output of the same kind."""


class OutputNotWritable(OSError):
    """An output directory that cannot be made or written here: a read-only filesystem, ``/proc``, no permission."""


@contextmanager
def written_whole(target: str | Path, marker: str) -> Iterator[Path]:
    """A fresh directory beside ``target`` to write into. When the block ends without an error it becomes
    ``target`` (an existing ``target`` is replaced only then, with the modes a plain ``mkdir`` / ``open`` would
    give); on any error, Ctrl-C included, it is removed and ``target`` stays as it was, also when the error
    comes between moving the old ``target`` aside and moving the new one in.

    An existing ``target`` is replaced only if it is empty or an earlier output of the same kind (it holds the
    file ``marker``, e.g. an artifact's config): anything else raises :class:`NotAnEarlierOutput` before a byte
    is written, so a directory of the user's own files is never swept away. What an earlier run on this host
    left behind when it was killed (:func:`recover_stale`) is put right first."""
    target = Path(target).resolve()
    recover_stale(target)
    target = check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{owner}-", dir=target.parent))
    old = target.with_name(f".{target.name}.old-{owner}")
    try:
        yield tmp
        usual_permissions(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)  # interrupted, what is left is removed by the next recover_stale


def _owner() -> str:
    """This process in the names of the hidden directories beside a target: ``HOST-PID``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _dead(host: str, pid: int) -> bool:
    """Whether the process that named a hidden directory is gone: one of this host, not running (or this very
    process, whose earlier block has ended). Another host's process cannot be told apart, so it counts as alive."""
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process
        return False
    return False


def recover_stale(target: str | Path) -> None:
    """Put right what :func:`written_whole` runs on this host left beside ``target`` when they were killed: a
    ``.NAME.old-HOST-PID`` comes back as ``NAME`` where ``NAME`` is missing (the run died between its two renames)
    and is removed otherwise; a ``.NAME.tmp-HOST-PID-XXXX`` (a half-written output) is removed. Only directories
    of that naming whose process is gone are touched."""
    target = Path(target).resolve()
    if not target.parent.is_dir():
        return
    name = re.escape(target.name)
    old_name = re.compile(rf"\.{name}\.old-(?P<host>.+)-(?P<pid>\d+)")
    tmp_name = re.compile(rf"\.{name}\.tmp-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")
    stale = [(path, found) for path in target.parent.iterdir()
             for found in [old_name.fullmatch(path.name) or tmp_name.fullmatch(path.name)]
             if found and path.is_dir() and not path.is_symlink() and _dead(found["host"], int(found["pid"]))]
    for path, found in sorted(stale, key=lambda item: item[0].stat().st_mtime, reverse=True):  # newest first
        if found.re is old_name and not target.exists():
            os.replace(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)


def check_output(target: str | Path, *markers: str) -> Path:
    """``target`` resolved, if a command may write its files into it: missing, empty, or an earlier output of the
    command (it holds one of ``markers``, files or folders); else :class:`NotAnEarlierOutput`. Commands call it
    before their long work, not only when they write."""
    target = Path(target).resolve()
    above = next(p for p in target.parents if p.exists())
    if not above.is_dir():
        raise NotAnEarlierOutput(f"{target} cannot be made: {above} is a file, not a directory")
    if target.exists() and (not target.is_dir() or (any(target.iterdir())
                                                    and not any((target / m).exists() for m in markers))):
        raise NotAnEarlierOutput(f"{target} exists and is not an earlier output of this command (no "
                                 f"{' or '.join(markers)}): name a new or empty directory")
    check_writable(target if target.is_dir() else above, target)  # where the command makes its files or folders
    return target


def check_writable(directory: Path, target: Path) -> None:
    """:class:`OutputNotWritable` unless a folder can be made in the existing ``directory`` (where the output
    ``target`` is made). Tried, not read from permission bits, which say nothing of a read-only filesystem or
    ``/proc``, nor for root; the folder is removed at once."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rtpurbo-write-check-", dir=directory))
    except OSError as err:
        raise OutputNotWritable(f"{target} cannot be written: {directory} takes no new files "
                                f"({err.strerror or err}); name a directory you can write") from None


def check_replaceable(target: str | Path, marker: str) -> Path:
    """``target`` resolved, if :func:`written_whole` may replace it: as :func:`check_output` allows (missing, empty,
    or holding ``marker``), and not the current directory or one that holds it (replacing it would leave the
    shell in a deleted directory); else :class:`NotAnEarlierOutput`."""
    target = check_output(target, marker)
    if target.exists():  # replaced from beside it
        check_writable(target.parent, target)
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise NotAnEarlierOutput(f"{target} is the current directory or holds it; the output replaces its directory "
                                 "whole: name one outside the current directory")
    return target


def usual_permissions(directory: Path) -> None:
    """Modes as a plain ``mkdir`` / ``open`` would give them (``mkdtemp`` and some writers use 0700 / 0600), so
    that a server or a job running as another user can read the directory."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
