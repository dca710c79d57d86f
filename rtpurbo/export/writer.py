"""``rtpurbo export``: a converted model as a self-contained Hugging Face model directory.

What the directory holds::

    config.json                      the base model's config, plus
                                       headwise_config  per-layer 0/1 roles per query head + W, S and
                                                        seqlen_threshold, in the form RTP-LLM reads
                                                        (rtpurbo/headwise.py)
                                       rtpurbo          format tag, versions, the other sparse settings
                                       auto_map         AutoModelForCausalLM -> modeling_rtpurbo.RtpurboForCausalLM
    model.safetensors                base weights in the base layout (LoRA folded in, head order of the
      (or model-0000i-of-0000n       base model), plus model.layers.N.self_attn.indexer.{wq,wk} of the
       .safetensors + index json)    layers with retrieval heads; sharded past ``max_shard_size``
    generation_config.json, tokenizer files and chat template
    modeling_rtpurbo.py              the class auto_map names (the code is rtpurbo's)
    custom_generate/generate.py      transformers' custom-generate hook: generate() through the
                                     head-wise cache, also for servers that load the base class

Plain transformers without ``trust_remote_code`` loads the directory as the dense base model (the
indexer tensors are reported as unused). ``AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True)`` returns the sparse model (:mod:`rtpurbo.export.runtime`).

``model.save_pretrained(DIR)`` of a converted model (in process, or loaded from such a directory) writes the
same directory without the tokenizer files (:func:`save_directory`), so that transformers' own flows
(``push_to_hub``, Trainer checkpoints) keep the sparse model.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import transformers

from .. import __version__
from ..converted import base_class, is_converted, kv_order, runs_sparse
from ..families import geometry
from ..files import usual_permissions, written_whole
from ..headwise import EXPORT_FORMAT as FORMAT, rtp_llm_headwise_config
from ..lora import folded_lora

MODELING_FILE = "modeling_rtpurbo.py"
MODEL_CLASS = "RtpurboForCausalLM"
CUSTOM_GENERATE = "custom_generate"
TEMPLATES = Path(__file__).parent / "templates"
# sparse settings that headwise_config carries instead of the rtpurbo block (one source for each value; the
# rtpurbo block keeps rtpurbo's seqlen_threshold, which is not RTP-LLM's: rtpurbo/headwise.py)
IN_HEADWISE = ("window", "sinks")
# the weight files of a directory (one file, or shards and their index) that a new save replaces
WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")


class ExportError(ValueError):
    """The model cannot be exported (not converted, unknown class, ...)."""


def export(model: nn.Module, tokenizer: Any, out_dir: str | Path, max_shard_size: str | int = "5GB") -> Path:
    """Write ``model`` (converted by rtpurbo) and ``tokenizer`` as a Hugging Face model directory.

    LoRA adapters are folded into the written weights; the model itself is left as it is. Writes go to a
    temporary directory renamed into place at the end.
    """
    base_class = exportable_base_class(model)
    out_dir = Path(out_dir)
    with written_whole(out_dir, MODELING_FILE) as tmp:
        write_model(model, base_class, tmp, max_shard_size)
        tokenizer.save_pretrained(tmp)
    return out_dir


def save_directory(model: nn.Module, out_dir: str | Path, max_shard_size: str | int = "50GB") -> Path:
    """``model.save_pretrained(out_dir)`` of a converted model: the directory :func:`export` writes, but the
    tokenizer (transformers' ``save_pretrained`` never writes one). The model is left as it is.

    ``out_dir`` may exist and hold other files (a Trainer checkpoint's optimizer state, a tokenizer); they are
    kept, as transformers keeps them. The files are written to a temporary directory beside ``out_dir`` (or in
    it: :func:`_scratch_parent`), then moved in with ``config.json`` removed first and moved in last: a save
    stopped midway leaves a directory without a config, which does not load, rather than one mixing two models.
    Weight files of an earlier save that the new one does not overwrite (shards, index, single file) are deleted
    before the config comes in.
    """
    base_class = exportable_base_class(model)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file; save_pretrained writes a directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=_scratch_parent(out_dir)))
    try:
        write_model(model, base_class, tmp, max_shard_size)
        usual_permissions(tmp)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
            return out_dir
        _move_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _scratch_parent(out_dir: Path) -> Path:
    """Where :func:`save_directory` makes its temporary directory: beside ``out_dir``, or inside an existing
    ``out_dir`` whose parent is another filesystem (a mount point) or not writable, as the files move in by
    rename."""
    parent = out_dir.parent
    if out_dir.is_dir() and (out_dir.stat().st_dev != parent.stat().st_dev or not os.access(parent, os.W_OK)):
        return out_dir
    return parent


def _move_in(source: Path, target: Path) -> None:
    """Move the entries of ``source`` (a complete save) into the existing directory ``target``, as
    :func:`save_directory` describes: the old config out first, stale weight files removed, the new config last."""
    config = "config.json"
    (target / config).unlink(missing_ok=True)
    written = {path.name for path in source.iterdir()}
    for path in target.iterdir():
        if WEIGHT_FILE.fullmatch(path.name) and path.name not in written and path.is_file():
            path.unlink()
    for name in sorted(written - {config}):
        destination = target / name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(source / name, destination)
    os.replace(source / config, target / config)


def exportable_base_class(model: nn.Module) -> str:
    """The name of the transformers class ``model`` was built on; :class:`ExportError` unless it is converted
    and that class is one of transformers'."""
    if not is_converted(model):
        raise ExportError(
            "rtpurbo export needs a converted model (an rtpurbo artifact such as smollm2-135m-rtpurbo, or a model "
            "passed through rtpurbo.convert.convert); a dense model has no head roles or indexers to export"
        )
    if not runs_sparse(model):
        raise ExportError("the model runs its original attention now (inside rtpurbo.train.teacher."
                          "original_attention, the stage-2 teacher): its sparse modules and indexers are swapped out; "
                          "save or export it after that block")
    name = base_class(model).__name__
    if not isinstance(getattr(transformers, name, None), type):
        raise ExportError(f"{name} is not a transformers class; export needs a transformers causal LM")
    return name


def write_model(model: nn.Module, base_class: str, directory: Path, max_shard_size: str | int) -> None:
    """Write everything of the exported directory but the tokenizer into ``directory`` (which exists)."""
    from huggingface_hub import save_torch_state_dict

    state = base_layout_state(model)
    save_torch_state_dict(state, directory, max_shard_size=max_shard_size)
    export_config(model, base_class, next(iter(state.values())).dtype).save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    template = (TEMPLATES / MODELING_FILE).read_text()
    (directory / MODELING_FILE).write_text(template.replace("LlamaForCausalLM", base_class))
    (directory / CUSTOM_GENERATE).mkdir()
    shutil.copy(TEMPLATES / "custom_generate.py", directory / CUSTOM_GENERATE / "generate.py")
    (directory / CUSTOM_GENERATE / "requirements.txt").write_text("rtpurbo\n")


def export_config(model: nn.Module, base_class: str, dtype: torch.dtype) -> Any:
    """The base config plus ``architectures``, ``auto_map``, ``headwise_config`` and ``rtpurbo``."""
    plan, sparse = model.rtpurbo_plan, model.rtpurbo_sparse
    config = copy.deepcopy(model.config)
    quantization = getattr(config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization,
                                                                                             "quant_method", None)
    if method == "gguf":
        del config.quantization_config  # a GGUF base was dequantized on load: the weights written are plain
    config.architectures = [base_class]  # RTP-LLM, vLLM and `transformers serve` pick the class from this
    config.dtype = dtype
    config.auto_map = {"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{MODEL_CLASS}"}
    config.headwise_config = rtp_llm_headwise_config(plan, sparse)
    settings = {k: v for k, v in sparse.to_dict().items() if k not in IN_HEADWISE}
    settings["reorder_heads"] = False  # the weights are written in the base model's head order
    config.rtpurbo = {
        "format": FORMAT,
        "versions": {"rtpurbo": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "sparse": settings,
    }
    return config


def base_layout_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the base model's names and head order, on the CPU, LoRA folded in
    (:func:`rtpurbo.lora.folded_lora`: the model is left as it is).

    Keys: every base tensor (``...self_attn.q_proj.weight``, ...) once (tied weights keep their first
    name), plus ``...self_attn.indexer.wq`` (Hr, G, D, d_idx) and ``indexer.wk`` (Hr, D, d_idx).
    """
    folded = {name: tensor.to("cpu") for name, tensor in folded_lora(model)}
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:  # a tied weight (lm_head = embed_tokens): the base config re-ties it on load
            continue
        seen.add(key)
        tensor = folded[name] if name in folded else tensor.detach().to("cpu")
        state[name.replace(".base_layer.", ".")] = tensor.contiguous()
    if model.rtpurbo_sparse.reorder_heads:
        _restore_head_order(state, model)
    return state


def _restore_head_order(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Undo :func:`rtpurbo.convert.permute_heads` in ``state``: q/k/v rows and o_proj columns back
    to the base model's head order (the indexer's heads follow the sorted retrieval heads either way)."""
    _, num_kv, num_q, head_dim = geometry(model.config)
    group = num_q // num_kv
    for layer, heads in enumerate(model.rtpurbo_plan.retrieval):
        order = kv_order(heads, num_kv)  # stored KV head i is base KV head order[i]
        back_kv = [order.index(h) for h in range(num_kv)]
        back_q = [back_kv[h // group] * group + h % group for h in range(num_q)]
        kv_rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in back_kv])
        q_rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in back_q])
        prefix = f"model.layers.{layer}.self_attn."
        for proj, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            for kind in ("weight", "bias"):
                if prefix + f"{proj}.{kind}" in state:
                    state[prefix + f"{proj}.{kind}"] = state[prefix + f"{proj}.{kind}"][rows].contiguous()
        state[prefix + "o_proj.weight"] = state[prefix + "o_proj.weight"][:, q_rows].contiguous()


def describe(out_dir: Path) -> dict[str, Any]:
    """Files and sizes of an exported directory (for the CLI's report)."""
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    return {"out": str(out_dir), "files": {str(p.relative_to(out_dir)): p.stat().st_size for p in files}}

