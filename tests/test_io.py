"""Save -> load round trips and artifact errors."""
import json

import pytest
import torch

from rtpurbo import io
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.models import ModelNotFound, fingerprint, load_base, resolve_model
from rtpurbo.testing import save_tiny_checkpoint, tiny_model

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


def _old_fingerprint(directory):
    """The fingerprint formula of artifacts made before unused weight files stopped counting."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")) + [directory / "config.json"]
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(size - (1 << 20))
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def test_unused_weight_files_do_not_change_the_fingerprint(checkpoint, tmp_path):
    """Only the weights transformers loads count: a .bin copy or a consolidated.safetensors beside them changes
    nothing (the artifact still loads), and a safetensors-only directory keeps the fingerprint it always had."""
    model, _ = converted(checkpoint)
    artifact = io.save(model, tmp_path / "a")
    recorded = io.read_config(artifact)["base_model"]["fingerprint"]
    assert recorded == _old_fingerprint(checkpoint)
    (checkpoint / "pytorch_model.bin").write_bytes(b"an old copy nobody loads")
    (checkpoint / "consolidated.safetensors").write_bytes(b"mistral-inference's copy")
    assert resolve_model(str(checkpoint)).weight_files == [checkpoint / "model.safetensors"]
    assert fingerprint(resolve_model(str(checkpoint))) == recorded
    io.load(artifact)


def test_sharded_weights_count_the_shards_of_the_index(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    source = resolve_model(str(tmp_path / "sharded"))
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and source.weight_files == shards
    before = fingerprint(source)
    assert before == _old_fingerprint(tmp_path / "sharded")
    (tmp_path / "sharded" / "consolidated.safetensors").write_bytes(b"x")
    assert fingerprint(source) == before


def test_a_base_mismatch_says_what_a_cli_user_can_do(checkpoint, tmp_path, capsys):
    from rtpurbo.cli import main

    model, _ = converted(checkpoint)
    artifact = io.save(model, tmp_path / "a")
    other = save_tiny_checkpoint("qwen3", tmp_path / "other", seed=1, num_key_value_heads=2)
    assert main(["generate", "--model", str(artifact), "--base", str(other), "--prompt", "w1", "--json"]) == 2
    err = capsys.readouterr().err
    assert "does not match the artifact" in err and f"converted from ({checkpoint.resolve()})" in err
    assert "Point --base at those weights" in err and "Traceback" not in err


def test_an_exported_directory_loads_as_the_sparse_model_it_is(tmp_path):
    """``rtpurbo export``'s directory: io.load_exported rebuilds the sparse model (same logits as the artifact);
    load_base, which gives dense bases, refuses it."""
    from rtpurbo.export import export
    from rtpurbo.models import NotABaseModel

    from .exported import trained_artifact

    artifact, _ = trained_artifact(tmp_path, "llama", [[0], [1]])
    model, tokenizer = io.load(artifact, merge_adapters=True)
    out = export(model, tokenizer, tmp_path / "exported")
    loaded, _ = io.load_exported(str(out))
    assert loaded.rtpurbo_plan.retrieval == [[0], [1]] and loaded.rtpurbo_sparse.window == model.rtpurbo_sparse.window
    ids = random_ids(1, 24)
    assert torch.allclose(logits(loaded, ids), logits(model, ids), atol=1e-5)
    with pytest.raises(NotABaseModel, match="written by `rtpurbo export`"):
        load_base(str(out))
