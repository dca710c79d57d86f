"""``save_pretrained`` of a converted model writes the exported directory (without the tokenizer)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.export import export, writer
from rtpurbo.testing import tiny_model, tiny_tokenizer
from rtpurbo.lora import LoraSettings, attach_lora, merge_lora

from .exported import SPARSE, exported, trained_artifact

CODE_FILES = {"config.json", "generation_config.json", "modeling_rtpurbo.py", "custom_generate/generate.py",
              "custom_generate/requirements.txt"}


def converted(family: str, retrieval: list[list[int]], lora: str = "trained", reorder: bool = True,
              dtype: torch.dtype = torch.float32):
    """A tiny model converted in process (top-p 0.5, seqlen_threshold 0) with perturbed indexers and LoRA
    adapters on the attention projections: ``lora`` "trained" (B perturbed), "zero" (as attached) or "none"."""
    model = tiny_model(family, dtype=dtype)
    config = model.config
    plan = HeadPlan(config.num_hidden_layers, config.num_key_value_heads, config.num_attention_heads, retrieval)
    convert(model, plan, SparseConfig(reorder_heads=reorder, **SPARSE))
    if lora != "none":
        attach_lora(model, LoraSettings(r=4))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".indexer." in name or ("lora_B" in name and lora == "trained"):
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) (2, 24): the second row has 7 pad tokens on the left."""
    ids = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[1, :7], mask[1, :7] = 0, 0
    return ids, mask


def logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The logits (n real tokens, V) of ``model`` at the unpadded positions of the batch."""
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits[mask.bool()]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in ``directory``."""
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.mark.parametrize("family,retrieval", [
    ("llama", [[1], [0]]),  # G = 3: reordered KV heads carry 3 query heads each
    ("qwen2", [[2, 0], [3]]),  # q/k/v biases
])
def test_saved_model_loads_as_the_sparse_model_and_the_model_is_unchanged(tmp_path, family, retrieval):
    model = converted(family, retrieval)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path / "saved")

    after = model.state_dict()
    assert list(after) == list(before) and any("lora_" in name for name in after)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    assert not any(getattr(module, "merged", False) for module in model.modules())

    assert files(tmp_path / "saved") == CODE_FILES | {"model.safetensors"}  # no tokenizer files
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert loaded.rtpurbo_plan.retrieval == [sorted(heads) for heads in retrieval]
    assert loaded.rtpurbo_sparse.top_p == SPARSE["top_p"] and loaded.rtpurbo_sparse.seqlen_threshold == 0
    ids, mask = left_padded_batch()
    want = logits(model, ids, mask)
    # fp32 rounding only (up to 2.3e-5 on logits up to 9): the heads in the base order and LoRA folded into the
    # weights sum in another order than the reordered model with its adapters
    torch.testing.assert_close(logits(loaded, ids, mask), want, atol=5e-5, rtol=1e-5)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert (logits(dense, ids, mask) - want).abs().max() > 1e-2  # the sparse attention is what was compared
    # decoding: the retrieval heads attend over their indexer's top-p selection
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(loaded.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False), generated)
    model.train()  # training goes on: the adapters still take gradients
    model(ids, attention_mask=mask, use_cache=False).logits.sum().backward()
    assert all(param.grad is not None for name, param in model.named_parameters() if "lora_A" in name)


def test_plain_from_pretrained_loads_the_dense_base(tmp_path):
    """Zero-initialised LoRA on a head-reordered model: the weights written are exactly the base model's."""
    model = converted("llama", [[1], [0]], lora="zero")
    model.save_pretrained(tmp_path / "saved")
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert type(dense).__name__ == "LlamaForCausalLM" and not hasattr(dense, "rtpurbo_plan")
    base = tiny_model("llama")
    assert_same_tensors(dense.state_dict(), base.state_dict())
    ids, mask = left_padded_batch()
    torch.testing.assert_close(logits(dense, ids, mask), logits(base, ids, mask), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_weights_are_the_exported_ones(tmp_path, dtype):
    """save_pretrained and export write the same tensors, and export folding LoRA into the written tensors
    writes what it wrote when it merged the adapters into the model first (bit for bit, bf16 included)."""
    model = converted("qwen2", [[2, 0], [3]], dtype=dtype)
    model.save_pretrained(tmp_path / "saved")
    export(model, tiny_tokenizer(), tmp_path / "exported")
    assert not any(getattr(module, "merged", False) for module in model.modules())
    merged = converted("qwen2", [[2, 0], [3]], dtype=dtype)
    merge_lora(merged)
    export(merged, tiny_tokenizer(), tmp_path / "merged")
    saved = weights(tmp_path / "saved")
    assert_same_tensors(saved, weights(tmp_path / "exported"))
    assert_same_tensors(saved, weights(tmp_path / "merged"))
    assert {name for name in saved if ".indexer." in name} == {f"model.layers.{i}.self_attn.indexer.{w}"
                                                              for i in (0, 1) for w in ("wq", "wk")}
    assert files(tmp_path / "exported") - files(tmp_path / "saved") >= {"tokenizer.json"}
    for name in CODE_FILES:
        assert (tmp_path / "saved" / name).read_bytes() == (tmp_path / "exported" / name).read_bytes(), name


def test_exported_model_saves_to_the_same_model(tmp_path):
    artifact, _ = trained_artifact(tmp_path, "qwen2", [[2, 0], [3]], reorder=True)
    first = AutoModelForCausalLM.from_pretrained(exported(tmp_path, artifact), trust_remote_code=True)
    first.save_pretrained(tmp_path / "again")
    # the exported directory but the tokenizer: RTP-LLM, vLLM and servers pick the base class from
    # architectures, and find custom_generate
    assert files(tmp_path / "again") == CODE_FILES | {"model.safetensors"}
    for name in CODE_FILES:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name
    second = AutoModelForCausalLM.from_pretrained(tmp_path / "again", trust_remote_code=True)
    assert type(second).__name__ == "RtpurboForCausalLM"
    assert second.rtpurbo_plan.retrieval == first.rtpurbo_plan.retrieval
    assert second.rtpurbo_sparse.to_dict() == first.rtpurbo_sparse.to_dict()
    assert_same_tensors(weights(tmp_path / "again"), weights(tmp_path / "hf"))
    ids, mask = left_padded_batch()
    torch.testing.assert_close(logits(second, ids, mask), logits(first, ids, mask), atol=1e-5, rtol=1.3e-6)


def test_refusals_and_other_processes(tmp_path):
    model = converted("llama", [[1], []], lora="none")
    out = tmp_path / "saved"
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(out, safe_serialization=False)
    with pytest.raises(ValueError, match="without state_dict"):
        model.save_pretrained(out, state_dict=model.state_dict())
    with pytest.raises(ValueError, match="huggingface_hub.upload_folder"):
        model.save_pretrained(out, push_to_hub=True, repo_id="someone/model")
    with pytest.raises(ValueError, match="variant"):
        model.save_pretrained(out, variant="fp16")
    model.save_pretrained(out, is_main_process=False)
    assert not out.exists()
    # what transformers and its callers pass besides
    model.save_pretrained(out, safe_serialization=True, token=None, save_peft_format=True,
                          save_original_format=True, distributed_checkpoint=False, commit_message="unused")
    assert files(out) == CODE_FILES | {"model.safetensors"}


def test_saving_inside_the_teacher_swap_is_refused(tmp_path):
    """Inside original_attention the sparse modules and indexers are swapped out: a save then would write a model
    that does not load; save_pretrained and export refuse and write nothing."""
    from rtpurbo.train.teacher import original_attention

    model = converted("llama", [[1], []], lora="none")
    with original_attention(model):
        with pytest.raises(ValueError, match="original attention"):
            model.save_pretrained(tmp_path / "saved")
        with pytest.raises(ValueError, match="original attention"):
            export(model, tiny_tokenizer(), tmp_path / "exported")
    assert not (tmp_path / "saved").exists() and not (tmp_path / "exported").exists()


def test_push_to_hub_uploads_the_sparse_directory(tmp_path, monkeypatch):
    """``model.push_to_hub`` saves through save_pretrained (the hub calls are replaced here)."""
    import transformers.utils.hub as hub

    class Repo:
        repo_id = "someone/model"

    class Api:
        def create_repo(self, repo_id, **kwargs):
            return Repo()

    class Card:
        def save(self, path):
            Path(path).write_text("card\n")

    uploaded = {}

    def upload(self, folder, repo_id, **kwargs):
        uploaded.update(files=files(Path(folder)), config=json.loads((Path(folder) / "config.json").read_text()))

    monkeypatch.setattr(hub, "hf_api", lambda: Api())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *args, **kwargs: Card())
    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", upload)
    converted("llama", [[1], []]).push_to_hub("someone/model")
    assert uploaded["files"] == CODE_FILES | {"model.safetensors", "README.md"}
    assert uploaded["config"]["headwise_config"]["0"] == [0, 0, 0, 1, 1, 1]


def test_save_into_an_existing_directory(tmp_path, monkeypatch):
    """As transformers does: other files stay, stale weight files go; a save that stops midway never leaves a
    directory that loads as another model."""
    out = tmp_path / "checkpoint"
    out.mkdir()
    (out / "trainer_state.json").write_text("{}")
    sharded = converted("llama", [[1], [0]], lora="none")
    sharded.save_pretrained(out, max_shard_size="20KB")
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 2 and (out / "model.safetensors.index.json").exists()

    model = converted("llama", [[0], []])
    model.save_pretrained(out)
    assert files(out) == CODE_FILES | {"model.safetensors", "trainer_state.json"}
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert loaded.rtpurbo_plan.retrieval == [[0], []]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary directory left

    before = {name: (out / name).read_bytes() for name in files(out)}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:  # stopped while writing: the directory is as it was
        patch.setattr(writer, "export_config", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            sharded.save_pretrained(out, max_shard_size="20KB")
    assert {name: (out / name).read_bytes() for name in files(out)} == before

    replace, calls = os.replace, []

    def stops_on_the_second(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError("killed")
        replace(source, target)

    with monkeypatch.context() as patch:  # stopped while moving the files in: the directory does not load
        patch.setattr(writer.os, "replace", stops_on_the_second)
        with pytest.raises(OSError, match="killed"):
            sharded.save_pretrained(out, max_shard_size="20KB")
    assert not (out / "config.json").exists()
    with pytest.raises((OSError, ValueError)):
        AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    sharded.save_pretrained(out)  # and the next save puts it right
    assert AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).rtpurbo_plan.retrieval == [[1], [0]]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]

    with monkeypatch.context() as patch:  # a parent it cannot write to: the temporary directory goes inside
        patch.setattr(writer.os, "access", lambda *args, **kwargs: False)
        model.save_pretrained(out)
    assert files(out) == CODE_FILES | {"model.safetensors", "trainer_state.json"}
    assert AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).rtpurbo_plan.retrieval == [[0], []]
