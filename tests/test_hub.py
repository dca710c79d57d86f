"""Hub ids: a tiny model served from a cache in the Hub's own layout, with the Hub offline."""
import pytest
import torch

from rtpurbo import io
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.hub import is_hub_id
from rtpurbo.models import ModelNotFound, load_base, resolve_model
from rtpurbo.testing import save_hub_cache, save_tiny_checkpoint, tiny_model, tiny_tokenizer

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


def test_a_folder_named_like_the_id_does_not_shadow_it(hub, tmp_path, monkeypatch):
    """A folder of other files named org/name in the current directory leaves the Hub id working; an artifact of a
    Hub base loads its recorded commit even where a local *model* of that name sits in the current directory."""
    home, commit, _ = hub
    model, _ = load_base(REPO)
    convert(model, HeadPlan(*geometry(model.config)[:3], [[0], []]), SparseConfig(window=8, sinks=2))
    ids = random_ids(1, 20)
    want = logits(model, ids)
    artifact = io.save(model, tmp_path / "artifact")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-org" / "tiny-qwen3").mkdir(parents=True)
    (tmp_path / "tiny-org" / "tiny-qwen3" / "notes.md").write_text("mine")
    assert is_hub_id(REPO) and resolve_model(REPO).commit == commit
    save_tiny_checkpoint("qwen3", tmp_path / "tiny-org" / "tiny-qwen3", seed=5, num_key_value_heads=2)
    assert not is_hub_id(REPO)  # now a local model of that name: the plain spec means the folder
    loaded, _ = io.load(artifact)
    assert loaded.rtpurbo_source.commit == commit and torch.equal(logits(loaded, ids), want)


def test_duplicate_weights_are_not_fetched():
    """huggingface_hub's own filter over the files of a Mistral repository (sharded weights, the consolidated copy
    mistral-inference reads, .bin duplicates, ONNX exports): only what transformers loads is downloaded."""
    from huggingface_hub.utils import filter_repo_objects

    from rtpurbo.hub import ALLOW_PATTERNS, IGNORE_PATTERNS

    files = ["config.json", "generation_config.json", "params.json", "tokenizer.json", "tokenizer_config.json",
             "tokenizer.model", "tekken.json", "special_tokens_map.json", "chat_template.jinja", "README.md",
             "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
             "model-00003-of-00003.safetensors", "model.safetensors.index.json", "consolidated.safetensors",
             "consolidated.00.pth", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
             "original/consolidated.00.pth", "original/params.json", "onnx/model.safetensors", "model.gguf"]
    kept = set(filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    assert kept == {"config.json", "generation_config.json", "params.json", "tokenizer.json", "tokenizer_config.json",
                    "tokenizer.model", "tekken.json", "special_tokens_map.json", "chat_template.jinja",
                    "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                    "model-00003-of-00003.safetensors", "model.safetensors.index.json",
                    "pytorch_model.bin.index.json"}


def test_an_incomplete_sharded_snapshot_names_the_missing_shard(tmp_path, monkeypatch):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    shards = sorted(p.name for p in (tmp_path / "src").glob("model-*.safetensors"))
    assert len(shards) > 2
    commit = save_hub_cache(tmp_path / "src", tmp_path / "hf", "tiny-org/sharded")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    snapshot = tmp_path / "hf" / "hub" / "models--tiny-org--sharded" / "snapshots" / commit
    (snapshot / shards[1]).resolve().unlink()  # the blob is gone, its link stays (an interrupted download)
    with pytest.raises(ModelNotFound, match=f"incomplete in the cache.*1 of the {len(shards)} shards.*{shards[1]}"):
        load_base("tiny-org/sharded")


def test_an_unreachable_hub_is_called_a_network_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ModelNotFound) as err:
        resolve_model("tiny-org/absent")
    assert "could not be reached (network error ConnectError" in str(err.value)
    assert "found neither on the Hub" not in str(err.value)


def test_plan_search_loads_the_revision_asked_for(hub, tmp_path, monkeypatch):
    from rtpurbo.cli import main
    from rtpurbo.plan import commands as plan_commands

    home, commit, _ = hub
    (home / "hub" / "models--tiny-org--tiny-qwen3" / "refs" / "v1").write_text(commit)
    newer = save_tiny_checkpoint("qwen3", tmp_path / "newer", seed=1, num_key_value_heads=2)
    assert save_hub_cache(newer, home, REPO) != commit  # main moves on; v1 stays
    seen = []

    def stop(spec, **kwargs):
        seen.append(resolve_model(spec, kwargs.get("revision")).commit)
        raise KeyboardInterrupt

    monkeypatch.setattr(plan_commands, "load_base", stop)
    # the CLI turns the interrupt into its one-line exit (130)
    assert main(["plan", "search", "--model", REPO, "--revision", "v1", "--data", "x.npz",
                 "--out", str(tmp_path / "o")]) == 130
    assert seen == [commit]
