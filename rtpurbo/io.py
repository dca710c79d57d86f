"""Save and load converted models as small artifacts.

An artifact directory holds:

* ``rtpurbo_config.json`` – format tag, versions, the base model's identity and content
  fingerprint, the head plan, the sparse config, per-file sha256, training history;
* ``rtpurbo_weights.safetensors`` – only what rtpurbo adds or changes (indexers, adapters,
  weights a training stage modified); base weights are referenced, not copied;
* ``headwise_config.json`` – the per-query-head export read by the authors' engine.

Loading rebuilds base -> convert -> load state dict. Writes go to a temporary
directory renamed into place at the end, so a failed save leaves nothing half-written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import HeadPlan, PlanMismatch, SparseConfig, dumps
from .convert import convert, is_converted
from .files import written_whole
from .lora import LoraSettings, attach_lora, merge_lora
from .models import (EMBEDDED_ADAPTERS, ModelNotFound, ModelSource, fingerprint, load_base,
                     model_fingerprint, resolve_model, resolve_recorded, source_record)

FORMAT = "rtpurbo/1"
CONFIG_NAME = "rtpurbo_config.json"
WEIGHTS_NAME = "rtpurbo_weights.safetensors"
HEADWISE_NAME = "headwise_config.json"


class ArtifactError(ValueError):
    """An artifact directory is missing, corrupt, or does not match its base model."""


def added_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors rtpurbo adds to the base model (indexers, adapters) plus base tensors a
    training stage marked as modified (``model.rtpurbo_modified``)."""
    modified = set(getattr(model, "rtpurbo_modified", ()))
    state = model.state_dict()
    keep = {k for k in state if ".indexer." in k or "lora_" in k or k in modified}
    return {k: state[k].detach().to("cpu").contiguous() for k in sorted(keep)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(model: nn.Module, out_dir: str | Path, history: list[dict[str, Any]] | None = None) -> Path:
    """Write the artifact of a converted model to ``out_dir`` atomically. Returns the path."""
    if not is_converted(model):
        raise ArtifactError("model is not converted; run rtpurbo.convert.convert first")
    source: ModelSource | None = getattr(model, "rtpurbo_source", None)
    if source is None:
        raise ArtifactError("model has no recorded base source; load it with rtpurbo.models.load_base")
    out_dir = Path(out_dir)
    plan: HeadPlan = model.rtpurbo_plan
    sparse: SparseConfig = model.rtpurbo_sparse
    with written_whole(out_dir, CONFIG_NAME) as tmp:
        tensors = added_state_dict(model)
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
        (tmp / HEADWISE_NAME).write_text(dumps(plan.to_headwise_config(sparse.sinks, sparse.window, sparse.seqlen_threshold)))
        config = {
            "format": FORMAT,
            "versions": {"rtpurbo": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
            "base_model": {
                **source_record(source),
                "model_type": model.config.model_type,
                "fingerprint": model_fingerprint(model),
            },
            "plan": plan.to_dict(),
            "sparse": sparse.to_dict(),
            "modified_base_tensors": sorted(getattr(model, "rtpurbo_modified", ())),
            "lora": getattr(model, "rtpurbo_lora", None),
            "history": list(history if history is not None else getattr(model, "rtpurbo_history", [])),
            "files": {name: _sha256(tmp / name) for name in (WEIGHTS_NAME, HEADWISE_NAME)},
        }
        (tmp / CONFIG_NAME).write_text(dumps(config))
    return out_dir


def artifact_path(spec: str | Path) -> Path | None:
    """The artifact directory ``spec`` names (a shipped adapter's name or a directory), else None."""
    if str(spec) in EMBEDDED_ADAPTERS:
        return EMBEDDED_ADAPTERS[str(spec)]
    path = Path(spec).expanduser()
    return path if (path / CONFIG_NAME).is_file() else None


def base_spec(path: str | Path, base: str | None = None, revision: str | None = None) -> tuple[str, str | None]:
    """(spec, revision) of an artifact's base model: ``base`` at ``revision`` where given (the base has moved),
    else the recorded spec at the recorded commit (which pins a Hub id's revision; None otherwise)."""
    if base:
        return base, revision
    recorded = read_config(path)["base_model"]
    return recorded["spec"], recorded.get("commit")


def recorded_description(base_info: dict[str, Any]) -> str:
    """An artifact's recorded base in words: ``org/name at commit C`` or its spec."""
    if base_info.get("repo_id"):
        return f"{base_info['repo_id']} at commit {base_info.get('commit')}"
    return str(base_info["spec"])


def recorded_base(path: str | Path) -> ModelSource:
    """The base model an artifact (or shipped adapter) was converted from, resolved as :func:`load` resolves it."""
    return resolve_recorded(read_config(path)["base_model"])


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and validate an artifact's config and file hashes (no model loaded); ``path`` may
    also name a shipped adapter."""
    return _read_artifact(path)[0]


def _read_artifact(path: str | Path) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """(config, its plan / sparse / LoRA settings as :func:`artifact_settings` parses them) of the artifact at
    ``path``, validated as :func:`read_config` says: the settings parsed once, for checking and for use."""
    path = artifact_path(path) or Path(path)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise ArtifactError(f"{path} is not an rtpurbo artifact: {CONFIG_NAME} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise ArtifactError(f"{config_path} is corrupt: {err}") from err
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_path} is corrupt: it holds a JSON {type(config).__name__}, not an object")
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    _check_fields(config, config_path)
    settings = artifact_settings(config, config_path)
    for name, want in config["files"].items():
        file_path = path / name
        if not file_path.is_file():
            raise ArtifactError(f"{file_path} is missing")
        if _sha256(file_path) != want:
            raise ArtifactError(f"{file_path} is corrupt (sha256 does not match {CONFIG_NAME})")
    return config, settings


def _check_fields(config: dict[str, Any], where: Path) -> None:
    """Raise ArtifactError naming the first field of an artifact config that is missing or of the wrong type (the
    plan, sparse and LoRA settings are checked by :func:`artifact_settings`)."""
    for key in ("base_model", "plan", "sparse", "files"):
        if not isinstance(config.get(key), dict):
            found = "is missing" if key not in config else f"must be an object, not {type(config[key]).__name__}"
            raise ArtifactError(f"{where}: '{key}' {found}")
    base = config["base_model"]
    for key in ("spec", "fingerprint"):
        if not isinstance(base.get(key), str):
            found = "is missing" if key not in base else f"must be text, got {base[key]!r}"
            raise ArtifactError(f"{where}: base_model.{key} {found}")
    for key in ("directory", "gguf_file", "repo_id", "revision", "commit"):
        if not isinstance(base.get(key), (str, type(None))):
            raise ArtifactError(f"{where}: base_model.{key} must be text or null, got {base[key]!r}")
    if WEIGHTS_NAME not in config["files"]:
        raise ArtifactError(f"{where}: 'files' must give the sha256 of {WEIGHTS_NAME}")
    for name, digest in config["files"].items():
        if Path(name).name != name or not isinstance(digest, str):
            raise ArtifactError(f"{where}: 'files' must map file names of the artifact to their sha256, got "
                                f"{name!r}: {digest!r}")
    if not isinstance(config.get("lora"), (dict, type(None))):
        raise ArtifactError(f"{where}: 'lora' must be an object or null, not {type(config['lora']).__name__}")
    modified = config.get("modified_base_tensors", [])
    if not isinstance(modified, list) or not all(isinstance(name, str) for name in modified):
        raise ArtifactError(f"{where}: 'modified_base_tensors' must be a list of tensor names")
    history = config.get("history", [])
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise ArtifactError(f"{where}: 'history' must be a list of objects")


def artifact_settings(config: dict[str, Any], where: str | Path = "artifact config") -> tuple[Any, ...]:
    """(plan, sparse config, LoRA settings or None) of an artifact config; ArtifactError names the field and what is
    wrong with it."""
    parsed = []
    for key, parse in (("plan", HeadPlan.from_dict), ("sparse", SparseConfig.from_dict),
                       ("lora", LoraSettings.from_dict)):
        value = config.get(key)
        try:
            parsed.append(None if key == "lora" and not value else parse(value))
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"{where}: '{key}' is invalid: {err}") from err
    return tuple(parsed)


def load(
    path: str | Path,
    base: str | ModelSource | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_base_mismatch: bool = False,
    merge_adapters: bool = False,
    base_revision: str | None = None,
):
    """Rebuild a converted model from an artifact: (model, tokenizer).

    Args:
        base: override where the base model comes from (default: the recorded spec, at the recorded
            commit for a Hub id; a Hub id by its recorded repository whatever the current directory holds):
            a spec, whose Hub revision ``base_revision`` is, or an already resolved source.
        allow_base_mismatch: load even if the base weights' fingerprint differs.
        merge_adapters: fold LoRA adapters into their projections (inference: no adapter matmuls
            per call). Not for training further: the adapters would then apply twice.
    """
    path = artifact_path(path) or Path(path)
    config, settings = _read_artifact(path)
    base_info = config["base_model"]
    try:
        if isinstance(base, ModelSource):
            source = base
        else:
            source = resolve_model(base, base_revision) if base else resolve_recorded(base_info)
    except ModelNotFound as err:
        if base:
            raise
        raise ArtifactError(f"{path} was converted from the base model {base_info['spec']!r}, which is not found "
                            f"from here ({err}); name where it is now with --base (Python: io.load(..., base=...))"
                            ) from err
    found = fingerprint(source)
    if found != base_info["fingerprint"] and not allow_base_mismatch:
        raise ArtifactError(
            f"base model {source.describe()!r} does not match the artifact (weights fingerprint {found[:12]} != "
            f"{base_info['fingerprint'][:12]}): these are not the weights {path} was converted from "
            f"({recorded_description(base_info)}). Point --base at those weights (with --revision for a Hub id); "
            "Python: io.load(..., allow_base_mismatch=True) forces it"
        )
    try:
        tensors = load_file(path / WEIGHTS_NAME, device="cpu")
    except (OSError, SafetensorError) as err:
        raise ArtifactError(f"{path / WEIGHTS_NAME} cannot be read: {err}") from err
    model, tokenizer = load_base(source, dtype=dtype, device=device)
    model.rtpurbo_fingerprint = found
    model.rtpurbo_weights_sha256 = config["files"][WEIGHTS_NAME]  # the weights a training run starts from
    apply_artifact(model, config, tensors, settings)
    if merge_adapters and config.get("lora"):
        merge_lora(model)
    return model, tokenizer


def load_exported(spec: str | ModelSource, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  revision: str | None = None):
    """(model, tokenizer) of a directory (or Hub repository) written by ``rtpurbo export``, made sparse as it was
    exported: its weights (adapters merged) as the base, then its ``headwise_config`` and indexers
    (:func:`rtpurbo.export.runtime.make_sparse`)."""
    from .export.runtime import ExportedModelError, make_sparse

    model, tokenizer = load_base(spec, dtype=dtype, device=device, revision=revision, exported_ok=True)
    try:
        make_sparse(model, str(model.rtpurbo_source.directory))
    except (ExportedModelError, PlanMismatch) as err:
        raise ArtifactError(f"{model.rtpurbo_source.spec}: {err}") from err
    return model, tokenizer


def apply_artifact(model: nn.Module, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                   settings: tuple[Any, ...] | None = None) -> nn.Module:
    """Convert a base model per ``config`` and load the artifact's tensors into it. ``settings``: the config's
    (plan, sparse, LoRA) settings where already parsed (:func:`artifact_settings`), else parsed here."""
    plan, sparse, lora = settings if settings is not None else artifact_settings(config)
    try:
        convert(model, plan, sparse, check_windows=False)  # rebuilt as it was saved
    except PlanMismatch as err:
        raise ArtifactError(f"artifact does not fit this base model: {err}") from err
    if lora is not None:
        attach_lora(model, lora)  # adapters must exist before their tensors load
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise ArtifactError(f"artifact tensors do not exist in the converted model: {unknown[:5]}")
    unknown = sorted(set(config.get("modified_base_tensors", [])) - set(state))
    if unknown:
        raise ArtifactError(f"modified_base_tensors names tensors the converted model does not have: {unknown[:5]}")
    for name, tensor in tensors.items():
        if state[name].shape != tensor.shape:
            raise ArtifactError(f"{name}: artifact shape {tuple(tensor.shape)} != model {tuple(state[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    model.rtpurbo_modified = list(config.get("modified_base_tensors", []))
    model.rtpurbo_history = list(config.get("history", []))
    return model
