"""Artifacts of trained models (adapters rebuilt on load, trained base tensors saved) and training curves."""
import pytest
import torch
from safetensors.torch import load_file

from rtpurbo import io
from rtpurbo.config import HeadPlan
from rtpurbo.convert import convert
from rtpurbo.models import load_base
from rtpurbo.testing import save_tiny_checkpoint
from rtpurbo.lora import LoraSettings, attach_lora, merge_lora
from rtpurbo.convert import prefill_mode

from .test_train_data import one_thread  # noqa: F401 (autouse fixture)
from .test_train_stage1 import SPARSE


def converted_from_disk(tmp_path):
    model, tokenizer = load_base(str(save_tiny_checkpoint("llama", tmp_path / "base")))
    return convert(model, HeadPlan(2, 2, 6, [[0], [1]]), SPARSE), tokenizer


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_lora_artifact_round_trip(tmp_path):
    model, _ = converted_from_disk(tmp_path)
    attach_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or ".indexer." in name:
                p.normal_(std=0.1)
    io.save(model, tmp_path / "artifact")
    loaded, _ = io.load(tmp_path / "artifact")
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(model, ids), logits(loaded, ids))
    with prefill_mode(model, "topp"), prefill_mode(loaded, "topp"):
        assert torch.equal(logits(model, ids), logits(loaded, ids))
    merged, _ = io.load(tmp_path / "artifact", merge_adapters=True)
    assert all(m.merged for m in merged.modules() if hasattr(m, "lora_A"))
    torch.testing.assert_close(logits(merged, ids), logits(model, ids), rtol=1e-4, atol=1e-4)
    saved = load_file(tmp_path / "artifact" / io.WEIGHTS_NAME)
    assert all("lora_" in k or ".indexer." in k for k in saved)
    assert io.read_config(tmp_path / "artifact")["lora"]["r"] == 4


def test_trained_base_tensors_are_saved(tmp_path):
    model, _ = converted_from_disk(tmp_path)
    name = "model.layers.1.self_attn.o_proj.weight"
    with torch.no_grad():
        model.state_dict()[name].mul_(1.5)
    model.rtpurbo_modified = [name]
    io.save(model, tmp_path / "artifact")
    loaded, _ = io.load(tmp_path / "artifact")
    assert torch.equal(loaded.state_dict()[name], model.state_dict()[name])
    assert io.read_config(tmp_path / "artifact")["lora"] is None


def test_merged_lora_computes_the_same_model(tmp_path):
    model, _ = converted_from_disk(tmp_path)
    attach_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(1))
    before = logits(model, ids)
    weight = next(p for n, p in model.named_parameters() if n.endswith("q_proj.base_layer.weight")).clone()
    assert merge_lora(model) == 4 * 2 and merge_lora(model) == 0  # q/k/v/o of 2 layers, once
    after_weight = next(p for n, p in model.named_parameters() if n.endswith("q_proj.base_layer.weight"))
    assert not torch.equal(weight, after_weight)
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-4, atol=1e-4)


def test_training_curves_png(tmp_path):
    from rtpurbo.train.plot import plot_training, smooth

    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    history = [{"step": i, "loss": 2.0 - i / 50, "recall": 0.8 + i / 500, "tokens_per_s": 1e3} for i in range(50)]
    path = plot_training({"indexer": {"history": history}}, tmp_path / "curves.png", title="t")
    assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no report"):
        plot_training({"distill": {"history": [{"step": 0, "loss": 1.0}]}}, tmp_path / "none.png")
