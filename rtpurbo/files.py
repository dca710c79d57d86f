"""Directories written whole or not at all (artifacts, exports, data shards, training checkpoints)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def written_whole(target: str | Path) -> Iterator[Path]:
    """A fresh directory beside ``target`` to write into. When the block ends without an error it becomes
    ``target`` (an existing ``target`` is replaced only then, with the modes a plain ``mkdir`` / ``open`` would
    give); on any error, Ctrl-C included, it is removed and ``target`` stays as it was."""
    target = Path(target)
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


def usual_permissions(directory: Path) -> None:
    """Modes as a plain ``mkdir`` / ``open`` would give them (``mkdtemp`` and some writers use 0700 / 0600), so
    that a server or a job running as another user can read the directory."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
