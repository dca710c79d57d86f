"""Directories written whole or not at all (artifacts, exports, data shards, training checkpoints)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class NotAnEarlierOutput(FileExistsError):
    """An output directory that exists and holds something other than an earlier output of the same kind."""


@contextmanager
def written_whole(target: str | Path, marker: str) -> Iterator[Path]:
    """A fresh directory beside ``target`` to write into. When the block ends without an error it becomes
    ``target`` (an existing ``target`` is replaced only then, with the modes a plain ``mkdir`` / ``open`` would
    give); on any error, Ctrl-C included, it is removed and ``target`` stays as it was.

    An existing ``target`` is replaced only if it is empty or an earlier output of the same kind (it holds the
    file ``marker``, e.g. an artifact's config): anything else raises :class:`NotAnEarlierOutput` before a byte
    is written, so a directory of the user's own files is never swept away."""
    target = check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        usual_permissions(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(target: str | Path, marker: str) -> Path:
    """``target`` resolved, if :func:`written_whole` may replace it (missing, empty, or holding ``marker``); else
    :class:`NotAnEarlierOutput`. Commands call it before their long work, not only when they write."""
    target = Path(target).resolve()
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / marker).is_file())):
        raise NotAnEarlierOutput(f"{target} exists and is not an earlier output of this command (no {marker}); "
                                 "the output replaces its directory whole: name a new or empty one")
    return target


def usual_permissions(directory: Path) -> None:
    """Modes as a plain ``mkdir`` / ``open`` would give them (``mkdtemp`` and some writers use 0700 / 0600), so
    that a server or a job running as another user can read the directory."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
