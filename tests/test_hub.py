"""Hub ids: a tiny model served from a cache in the Hub's own layout, with the Hub offline."""
import pytest
import torch

from rtpurbo import io
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.hub import is_hub_id
from rtpurbo.models import ModelNotFound, load_base, resolve_model
from rtpurbo.testing import save_hub_cache, save_tiny_checkpoint

from .conftest import random_ids

REPO = "tiny-org/tiny-qwen3"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """HF_HOME with REPO cached at refs/main, Hub offline; returns (HF_HOME, commit, source directory)."""
    source = save_tiny_checkpoint("qwen3", tmp_path / "src", num_key_value_heads=2)
    home = tmp_path / "hf"
    commit = save_hub_cache(source, home, REPO)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return home, commit, source


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_hub_id_loads_from_the_offline_cache(hub):
    home, commit, source = hub
    resolved = resolve_model(REPO)
    assert (resolved.repo_id, resolved.revision, resolved.commit) == (REPO, None, commit)
    assert resolved.directory == home / "hub" / "models--tiny-org--tiny-qwen3" / "snapshots" / commit
    assert (resolved.directory / "model.safetensors").is_symlink()
    from_hub, _ = load_base(REPO)
    from_dir, _ = load_base(str(source))
    ids = random_ids(1, 24)
    assert torch.equal(logits(from_hub, ids), logits(from_dir, ids))


def test_revision_by_tag_and_by_commit(hub):
    home, commit, _ = hub
    (home / "hub" / "models--tiny-org--tiny-qwen3" / "refs" / "v1").write_text(commit)
    assert resolve_model(REPO, revision="v1").commit == commit
    assert resolve_model(REPO, revision=commit).directory.name == commit


def test_one_clear_error_when_the_cache_lacks_it(hub):
    home, _, source = hub
    for spec, revision in (("tiny-org/absent", None), (REPO, "v9")):
        with pytest.raises(ModelNotFound) as err:
            resolve_model(spec, revision)
        message = str(err.value)
        assert spec in message and (revision or "main") in message and str(home) in message
        assert "HF_HUB_OFFLINE" in message
    with pytest.raises(ModelNotFound, match="applies to Hugging Face ids"):
        resolve_model(str(source), revision="v1")
    assert not is_hub_id(str(source)) and not is_hub_id("a/b/c") and is_hub_id("org/name-1.5B")


def test_artifact_records_repo_and_commit_and_stays_pinned(hub, tmp_path):
    home, commit, _ = hub
    model, _ = load_base(REPO)
    layers, n_kv, n_q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, n_kv, n_q, [[0], []]), SparseConfig(window=8, sinks=2))
    ids = random_ids(1, 30)
    want = logits(model, ids)
    config = io.read_config(io.save(model, tmp_path / "artifact"))
    assert config["base_model"]["repo_id"] == REPO and config["base_model"]["commit"] == commit
    # the default branch moves on to other weights: the artifact still loads the commit it was made from
    newer = save_tiny_checkpoint("qwen3", tmp_path / "newer", seed=1, num_key_value_heads=2)
    assert save_hub_cache(newer, home, REPO) != commit
    assert resolve_model(REPO).commit != commit
    loaded, _ = io.load(tmp_path / "artifact")
    assert loaded.rtpurbo_source.commit == commit
    assert torch.equal(logits(loaded, ids), want)
