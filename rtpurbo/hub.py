"""Hugging Face Hub model ids (``org/name``, optional revision) resolved to a local snapshot.

Resolution goes through ``huggingface_hub.snapshot_download``, so it uses the hub's own
cache layout (``$HF_HOME/hub/models--org--name/{blobs,refs,snapshots}``), its tokens
(``HF_TOKEN``, ``hf auth login``) and its download when online. Offline
(``HF_HUB_OFFLINE=1``) or with the Hub unreachable, a populated cache is enough. The
cache location and offline switch are read from the environment at call time (the
variables ``huggingface_hub`` reads at import), so a process may point them elsewhere
before loading.

Only what a model load needs is fetched: configs, tokenizer files, chat templates and the
top-level ``.safetensors`` weights. Duplicates transformers never loads stay on the Hub:
``.bin``/``.pth`` weights, GGUF files, ``original/`` (Meta's own checkpoint), Mistral's
``consolidated*.safetensors`` (the unsharded weights in mistral-inference's layout, as large as
the model itself) and weights in subfolders (``onnx/``, ``openvino/``, ...: transformers reads a
snapshot's top level only).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
IGNORE_PATTERNS = ["original/*", "consolidated*.safetensors", "*/*.safetensors"]
SHARD_INDEX = "model.safetensors.index.json"
_TRUE = {"1", "on", "yes", "true"}


class ModelNotFound(FileNotFoundError):
    """A ``--model`` value that names nothing loadable (a Hub id, or a local name or path: :mod:`rtpurbo.models`)."""


class ModelCorrupt(ModelNotFound):
    """A model whose files are there but cannot be read (a truncated or garbled config or weights file, no weights
    file, a file that is not GGUF): the message names the file and what is wrong."""


@dataclass(frozen=True)
class HubSnapshot:
    """A model id resolved to its snapshot directory and the commit it holds."""

    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    commit: str
    directory: Path


def is_local_model(path: Path) -> bool:
    """A directory with ``config.json`` or a ``.gguf`` file: what a local ``--model`` path must be."""
    return (path.is_dir() and (path / "config.json").is_file()) or (path.is_file() and path.suffix == ".gguf")


def is_hub_id(spec: str) -> bool:
    """``org/name`` that does not name a local model (a same-named folder of other files does not shadow the id)."""
    return bool(HUB_ID.match(spec)) and not is_local_model(Path(spec).expanduser())


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
        shadow = " (the local folder of that name holds no model)" if Path(repo_id).expanduser().exists() else ""
        asked = f"Hugging Face model {repo_id!r} (revision {revision or 'main'}){shadow}"
        where = f"cache searched: {cache} (HF_HOME={hub_home()})"
        if offline:
            raise ModelNotFound(f"{asked} is not in the local cache and the Hub was not asked (HF_HUB_OFFLINE is "
                                f"set); {where}. Download it once online, or check the id and revision") from err
        network = _network_error(err)
        if network is not None:
            raise ModelNotFound(f"{asked} is not in the local cache and the Hub could not be reached (network error "
                                f"{type(network).__name__}: {_first_line(network)}); {where}. Check the connection "
                                "(HF_ENDPOINT, proxies) and try again") from err
        raise ModelNotFound(f"{asked} was found neither on the Hub nor in the local cache; {where}. The Hub said "
                            f"{type(err).__name__}: {_first_line(err)} Check the id and revision; gated or private "
                            "models need a token (HF_TOKEN or `hf auth login`)") from err
    directory = Path(folder)
    if not (directory / "config.json").is_file():
        raise ModelNotFound(f"Hugging Face model {repo_id!r} ({directory}) has no config.json")
    missing = missing_weights(directory)
    if missing:
        raise ModelNotFound(f"Hugging Face model {repo_id!r} at commit {directory.name} is incomplete in the cache "
                            f"({directory}): {missing}. Download it again online (HF_HUB_OFFLINE unset)")
    return HubSnapshot(repo_id, revision, directory.name, directory)


def missing_weights(directory: Path) -> str | None:
    """What of a snapshot's ``.safetensors`` weights is absent (every shard its index lists, or one file), else None."""
    index = directory / SHARD_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{SHARD_INDEX} is unreadable ({type(err).__name__}: {err})"
        absent = [name for name in shards if not (directory / name).is_file()]  # is_file follows the blob links
        if absent:
            return f"{len(absent)} of the {len(shards)} shards {SHARD_INDEX} lists are missing: {', '.join(absent)}"
        return None
    if not any(path.is_file() for path in directory.glob("*.safetensors")):
        return "no .safetensors weights (rtpurbo loads a Hub model's safetensors only)"
    return None


def _network_error(err: BaseException) -> BaseException | None:
    """The connection or timeout error behind a Hub error (httpx's transport errors: refused, DNS, timeout), or None."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        if any(cls.__name__ == "TransportError" for cls in type(err).__mro__):
            return err
        seen.append(err)
        err = err.__cause__ or err.__context__
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
