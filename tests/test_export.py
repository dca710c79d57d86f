"""rtpurbo export: a converted model as a Hugging Face directory, loaded back three ways."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from rtpurbo import io
from rtpurbo.cli import main
from rtpurbo.config import HeadPlan, PlanMismatch, SparseConfig
from rtpurbo.export import ExportError, export
from rtpurbo.headwise import plan_from_rtp_llm, rtp_llm_headwise_config
from rtpurbo.export.runtime import ExportedModelError, sparse_settings
from rtpurbo.generate import generate
from rtpurbo.pipeline import read_plan
from rtpurbo.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer

from .exported import exported, trained_artifact

PROMPT = torch.tensor([[5, 17, 40, 99, 3, 120, 77, 41, 8, 200, 13, 66, 150, 31, 90, 22, 7, 180, 55, 61]])


@pytest.mark.parametrize("family,retrieval,reorder", [
    ("llama", [[1], []], False),  # LoRA folded in; a layer without retrieval heads
    ("qwen2", [[2, 0], [3]], True),  # q/k/v biases; head-reordered weights go back to the base order
])
def test_export_loads_as_the_artifact(tmp_path, family, retrieval, reorder):
    artifact, _ = trained_artifact(tmp_path, family, retrieval, reorder)
    out = exported(tmp_path, artifact)
    reference, tokenizer = io.load(artifact)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert model.rtpurbo_plan.retrieval == reference.rtpurbo_plan.retrieval
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, reference(PROMPT, use_cache=False).logits,
                                   atol=1e-4, rtol=1e-4)
    # the last prompt token is decoded too, as generate() of the exported model does
    want = generate(reference, tokenizer, PROMPT, max_new_tokens=10, prefill_chunk=PROMPT.shape[1] - 1).sequences
    got = model.generate(PROMPT, max_new_tokens=10, do_sample=False)
    assert torch.equal(got, want)
    full = model.generate(PROMPT, max_new_tokens=10, do_sample=False, use_cache=False)
    assert not torch.equal(full, want)  # without the head-wise cache the retrieval heads see every key


def _left_padded(prompts: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) (B, max len) of prompts (1, L_b), padded on the left."""
    width = max(p.shape[1] for p in prompts)
    ids = torch.cat([torch.cat([torch.full((1, width - p.shape[1]), pad), p], 1) for p in prompts])
    mask = torch.cat([torch.cat([torch.zeros(1, width - p.shape[1], dtype=torch.long),
                                 torch.ones_like(p)], 1) for p in prompts])
    return ids, mask


def test_exported_generate_of_a_left_padded_batch_is_each_prompt_alone(tmp_path):
    """transformers' generate() counts positions along the attention mask only for a forward that declares
    ``position_ids``: the exported class keeps the base class's signature, so padding shifts neither RoPE nor
    the sinks."""
    artifact, _ = trained_artifact(tmp_path, "llama", [[1], []], lora=False)
    model = AutoModelForCausalLM.from_pretrained(exported(tmp_path, artifact), trust_remote_code=True)
    prompts = [PROMPT, PROMPT[:, 3:15], PROMPT[:, 10:16]]
    ids, mask = _left_padded(prompts, pad=0)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)[:, ids.shape[1]:]
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt, max_new_tokens=8, do_sample=False)[:, prompt.shape[1]:]
        assert torch.equal(batched[row:row + 1], alone), row


def test_left_padded_forward_without_position_ids_is_the_prompt_alone(tmp_path):
    """A forward given only the attention mask (as transformers users and harnesses call it) counts positions
    along the mask: the padded row's sinks are its first real tokens."""
    artifact, _ = trained_artifact(tmp_path, "llama", [[1], []], lora=False)
    reference, _ = io.load(artifact)
    ids, mask = _left_padded([PROMPT[:, 7:], PROMPT], pad=0)
    with torch.no_grad():
        alone = reference(PROMPT[:, 7:], use_cache=False).logits[0, -1]
        padded = reference(ids, attention_mask=mask, use_cache=False).logits[0, -1]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


def test_exported_directory_is_the_base_layout(tmp_path):
    artifact, base = trained_artifact(tmp_path, "llama", [[0], [1]])
    out = exported(tmp_path, artifact)
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
    assert {k for k in keys if ".indexer." not in k} == set(tiny_model("llama").state_dict())
    assert {k for k in keys if ".indexer." in k} == {f"model.layers.{i}.self_attn.indexer.{w}"
                                                       for i in (0, 1) for w in ("wq", "wk")}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    # without trust_remote_code, and with the custom code removed: the dense base model, LoRA folded in
    merged, _ = io.load(artifact, merge_adapters=True)
    folded = {k.replace(".base_layer.", "."): v for k, v in merged.state_dict().items() if "lora_" not in k}
    for directory in (out, _without_code(out, tmp_path / "plain")):
        dense = AutoModelForCausalLM.from_pretrained(directory)
        assert type(dense).__name__ == "LlamaForCausalLM" and not hasattr(dense, "rtpurbo_plan")
        for name, tensor in dense.state_dict().items():
            assert torch.equal(tensor, folded[name]), name


def _without_code(out, target):
    shutil.copytree(out, target)
    (target / "modeling_rtpurbo.py").unlink()
    shutil.rmtree(target / "custom_generate")
    config = json.loads((target / "config.json").read_text())
    del config["auto_map"]
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_sharded_export_loads(tmp_path):
    artifact, _ = trained_artifact(tmp_path, "llama", [[0], [1]], lora=False)
    out = exported(tmp_path, artifact, max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    reference, _ = io.load(artifact)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    for name, tensor in reference.state_dict().items():
        if ".indexer." in name:
            assert torch.equal(model.state_dict()[name], tensor)


def test_indexers_come_from_the_file_transformers_loads(tmp_path):
    """A directory holding both model.safetensors and a stale shard index (an earlier sharded save): transformers
    loads the single file, and so must the indexers."""
    from safetensors.torch import save_file

    artifact, _ = trained_artifact(tmp_path, "llama", [[0], [1]], lora=False)
    out = exported(tmp_path, artifact)
    stale = {key: torch.zeros(1) for key in ("model.layers.0.self_attn.indexer.wq", "model.layers.0.self_attn.indexer.wk")}
    save_file(stale, out / "model-00001-of-00001.safetensors")
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {key: "model-00001-of-00001.safetensors" for key in stale}}))
    reference, _ = io.load(artifact)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    for name, tensor in reference.state_dict().items():
        if ".indexer." in name:
            assert torch.equal(model.state_dict()[name], tensor)


def test_forward_and_generate_start_a_headwise_cache(tmp_path):
    artifact, _ = trained_artifact(tmp_path, "llama", [[1], []], lora=False)
    model = AutoModelForCausalLM.from_pretrained(exported(tmp_path, artifact), trust_remote_code=True)
    out = model(PROMPT)  # use_cache defaults on: a head-wise cache, as the base model would start a DynamicCache
    assert type(out.past_key_values).__name__ == "HeadwiseCache"
    # beam search: the cache's rows repeated, then reordered; decoding without selection (a threshold past the
    # prompt), it is the beam search that recomputes the whole sequence at every step
    model.rtpurbo_sparse = dataclasses.replace(model.rtpurbo_sparse, seqlen_threshold=10**6)
    beams = dict(max_new_tokens=4, num_beams=2, num_return_sequences=2, do_sample=False)
    cached = model.generate(PROMPT, **beams)
    assert cached.shape == (2, PROMPT.shape[1] + 4)
    assert torch.equal(cached, model.generate(PROMPT, use_cache=False, **beams))


def test_export_rejects_a_dense_model(tmp_path, capsys):
    with pytest.raises(ExportError, match="converted model"):
        export(tiny_model("llama"), tiny_tokenizer(), tmp_path / "hf")
    base = save_tiny_checkpoint("llama", tmp_path / "base")
    assert main(["export", "--model", str(base), "--out", str(tmp_path / "hf")]) == 2
    assert "not an rtpurbo artifact" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_rtp_llm_headwise_config_round_trip(tmp_path):
    plan = HeadPlan(3, 2, 4, [[1], [], [0, 1]])
    block = rtp_llm_headwise_config(plan, SparseConfig(window=512, sinks=4, seqlen_threshold=65536))
    # RTP-LLM's seqlen_threshold is the prefill length from which it splits heads: rtpurbo splits them always;
    # its window counts the keys before the current one (i - j <= swa_token_num), rtpurbo's W counts it too
    assert block == {"sink_token_num": 4, "swa_token_num": 511, "seqlen_threshold": 0,
                     "0": [0, 0, 1, 1], "1": [0, 0, 0, 0], "2": [1, 1, 1, 1]}
    back, settings = plan_from_rtp_llm(block, 3, 2)
    assert back.retrieval == plan.retrieval and settings == {"sinks": 4, "window": 512}
    with pytest.raises(PlanMismatch, match="missing \\['2'\\]"):
        plan_from_rtp_llm({k: v for k, v in block.items() if k != "2"}, 3, 2)
    # `rtpurbo convert --plan config.json` reads an exported config
    config = tiny_model("llama").config
    (tmp_path / "config.json").write_text(json.dumps({"headwise_config": rtp_llm_headwise_config(
        HeadPlan(2, 2, 6, [[0], [1]]), SparseConfig(window=64, sinks=2, seqlen_threshold=0))}))
    read, found = read_plan(tmp_path / "config.json", config)
    assert read.retrieval == [[0], [1]] and found == {"sinks": 2, "window": 64}
    # RTP-LLM's own block with only the rows: what RTP-LLM runs then (S 4, swa_token_num 8192)
    rows_only = {k: v for k, v in block.items() if k.isdigit()}
    assert plan_from_rtp_llm(rows_only, 3, 2)[1] == {"sinks": 4, "window": 8193}


def test_exported_config_errors_name_the_field():
    config = tiny_model("llama").config
    with pytest.raises(ExportedModelError, match="'rtpurbo' must be a dict"):
        sparse_settings(config)
    config.rtpurbo = {"format": "rtpurbo.export/1", "sparse": {}}
    with pytest.raises(ExportedModelError, match="'headwise_config' must be a dict"):
        sparse_settings(config)


def test_cli_export_writes_a_loadable_directory(tmp_path, capsys):
    artifact, _ = trained_artifact(tmp_path, "llama", [[0], []], lora=False)
    assert main(["export", "--model", str(artifact), "--out", str(tmp_path / "hf"), "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "hf" / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert {"config.json", "model.safetensors", "modeling_rtpurbo.py", "custom_generate/generate.py",
            "generation_config.json", "tokenizer.json"} <= set(files)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert model.rtpurbo_plan.retrieval == [[0], []]
    assert model.rtpurbo_sparse.seqlen_threshold == 0  # the artifact's (tests/exported.py)
    assert main(["export", "--model", str(artifact), "--out", str(tmp_path / "hf2"), "--seqlen-threshold", "4096"]) == 0
    config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert config["rtpurbo"]["sparse"]["seqlen_threshold"] == 4096 and config["headwise_config"]["seqlen_threshold"] == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", trust_remote_code=True
                                                ).rtpurbo_sparse.seqlen_threshold == 4096
    assert read_plan(tmp_path / "hf2" / "config.json", model.config)[1]["seqlen_threshold"] == 4096
    assert model.rtpurbo_sparse.window == 4 and config["headwise_config"]["swa_token_num"] == 3  # tests/exported.py
    # the first export format: its headwise block held rtpurbo's own W and decode threshold
    del config["rtpurbo"]["sparse"]["seqlen_threshold"]
    config["rtpurbo"]["format"] = "rtpurbo.export/1"
    config["headwise_config"].update(seqlen_threshold=2048, swa_token_num=4)
    (tmp_path / "hf2" / "config.json").write_text(json.dumps(config))
    legacy = AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", trust_remote_code=True).rtpurbo_sparse
    assert (legacy.seqlen_threshold, legacy.window) == (2048, 4)
    assert read_plan(tmp_path / "hf2" / "config.json", model.config)[1] == {"sinks": 1, "window": 4,
                                                                            "seqlen_threshold": 2048}
