"""Hugging Face Hub model ids (``org/name``, optional revision) resolved to a local snapshot.

Resolution goes through ``huggingface_hub.snapshot_download``, so it uses the hub's own
cache layout (``$HF_HOME/hub/models--org--name/{blobs,refs,snapshots}``), its tokens
(``HF_TOKEN``, ``hf auth login``) and its download when online. Offline
(``HF_HUB_OFFLINE=1``) or with the Hub unreachable, a populated cache is enough. The
cache location and offline switch are read from the environment at call time (the
variables ``huggingface_hub`` reads at import), so a process may point them elsewhere
before loading.

Only what a model load needs is fetched: configs, tokenizer files, chat templates and
``.safetensors`` weights (no ``.bin``/``.pth`` duplicates, no GGUF files, no ``original/``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
IGNORE_PATTERNS = ["original/*"]
_TRUE = {"1", "on", "yes", "true"}


class ModelNotFound(FileNotFoundError):
    """A ``--model`` value that names nothing loadable (a Hub id, or a local name or path: :mod:`rtpurbo.models`)."""


@dataclass(frozen=True)
class HubSnapshot:
    """A model id resolved to its snapshot directory and the commit it holds."""

    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    commit: str
    directory: Path


def is_hub_id(spec: str) -> bool:
    """``org/name`` that is not an existing local path."""
    return bool(HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


def hub_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface"
    return Path(os.environ.get("HF_HOME", default)).expanduser()


def hub_cache_dir() -> Path:
    """Where model snapshots live: ``$HF_HUB_CACHE`` (or the legacy ``$HUGGINGFACE_HUB_CACHE``), else ``HF_HOME/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(explicit).expanduser() if explicit else hub_home() / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def snapshot(repo_id: str, revision: str | None = None) -> HubSnapshot:
    """Download (online) or find in the cache (offline) the files of ``repo_id`` at ``revision``.

    Raises rtpurbo's ModelNotFound naming the id, the revision, the cache directory and why.
    """
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    cache = hub_cache_dir()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                   allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
    except (OSError, ValueError) as err:  # the hub's not-found, gated, offline and HTTP errors are all OSError
        asked = f"Hugging Face model {repo_id!r} (revision {revision or 'main'}; no local path of that name exists)"
        where = f"cache searched: {cache} (HF_HOME={hub_home()})"
        if offline:
            raise ModelNotFound(f"{asked} is not in the local cache and the Hub was not asked (HF_HUB_OFFLINE is "
                                f"set); {where}. Download it once online, or check the id and revision") from err
        raise ModelNotFound(f"{asked} was found neither on the Hub nor in the local cache; {where}. The Hub said "
                            f"{type(err).__name__}: {_first_line(err)} Check the id and revision; gated or private "
                            "models need a token (HF_TOKEN or `hf auth login`)") from err
    directory = Path(folder)
    if not (directory / "config.json").is_file():
        raise ModelNotFound(f"Hugging Face model {repo_id!r} ({directory}) has no config.json")
    if not any(directory.glob("*.safetensors")):
        raise ModelNotFound(f"Hugging Face model {repo_id!r} ({directory}) has no .safetensors weights; "
                               "rtpurbo loads safetensors only")
    return HubSnapshot(repo_id, revision, directory.name, directory)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
