"""Save -> load round trips and artifact errors."""
import json

import pytest
import torch

from rtpurbo import io
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.models import ModelNotFound, load_base, resolve_model
from rtpurbo.testing import save_tiny_checkpoint

from .conftest import random_ids


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny_checkpoint("qwen3", tmp_path / "base", num_key_value_heads=2)


def converted(checkpoint, reorder=False):
    model, tok = load_base(str(checkpoint))
    layers, n_kv, n_q, _ = geometry(model.config)
    plan = HeadPlan(layers, n_kv, n_q, [[0], []])
    return convert(model, plan, SparseConfig(window=8, sinks=2, reorder_heads=reorder)), tok


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("reorder", [False, True])
def test_save_load_gives_identical_logits(checkpoint, tmp_path, reorder):
    model, _ = converted(checkpoint, reorder)
    ids = random_ids(1, 40)
    want = logits(model, ids)
    out = io.save(model, tmp_path / "artifact")
    assert sorted(p.name for p in out.iterdir()) == sorted([io.CONFIG_NAME, io.WEIGHTS_NAME, io.HEADWISE_NAME])
    loaded, _ = io.load(out)
    assert torch.equal(logits(loaded, ids), want)
    assert loaded.rtpurbo_plan == model.rtpurbo_plan
    headwise = json.loads((out / io.HEADWISE_NAME).read_text())
    assert headwise["headwise_config"][0] == [1, 1, 1, 1, 0, 0, 0, 0] and headwise["swa_token_num"] == 8


def test_config_records_versions_and_base_identity(checkpoint, tmp_path):
    model, _ = converted(checkpoint)
    config = io.read_config(io.save(model, tmp_path / "a"))
    assert set(config["versions"]) == {"rtpurbo", "torch", "transformers"}
    assert config["base_model"]["model_type"] == "qwen3" and len(config["base_model"]["fingerprint"]) == 64
    assert config["sparse"]["window"] == 8


def test_corrupt_missing_and_mismatched_artifacts(checkpoint, tmp_path):
    model, _ = converted(checkpoint)
    out = io.save(model, tmp_path / "a")
    weights = out / io.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-3] + b"xyz")
    with pytest.raises(io.ArtifactError, match="corrupt"):
        io.load(out)
    weights.unlink()
    with pytest.raises(io.ArtifactError, match="missing"):
        io.load(out)
    with pytest.raises(io.ArtifactError, match="not an rtpurbo artifact"):
        io.load(tmp_path / "nowhere")
    (out / io.CONFIG_NAME).write_text("{not json")
    with pytest.raises(io.ArtifactError, match="corrupt"):
        io.load(out)

    good = io.save(model, tmp_path / "b")
    other = save_tiny_checkpoint("qwen3", tmp_path / "other", seed=1, num_key_value_heads=2)
    with pytest.raises(io.ArtifactError, match="does not match"):
        io.load(good, base=str(other))
    wrong_shape = save_tiny_checkpoint("llama", tmp_path / "llama")
    with pytest.raises(io.ArtifactError, match="does not fit"):
        io.load(good, base=str(wrong_shape), allow_base_mismatch=True)


def test_failed_save_leaves_nothing_behind(checkpoint, tmp_path, monkeypatch):
    model, _ = converted(checkpoint)
    out = io.save(model, tmp_path / "a")
    before = (out / io.CONFIG_NAME).read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save(model, tmp_path / "a")
    assert (out / io.CONFIG_NAME).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "base"]


def test_unknown_model_spec_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="neither an embedded model"):
        resolve_model(str(tmp_path / "nope"))
