"""Configs read once: rtpurbo eval reads the model's config once (a GGUF's takes seconds) for its lengths and the
--index-dim check, which still comes before any weights load; io.load parses an artifact's settings once."""
import pytest

import rtpurbo.eval.commands
import rtpurbo.io
from rtpurbo import io
from rtpurbo.cli import build_parser
from rtpurbo.cli_args import SettingsError
from rtpurbo.models import load_config

from .test_train_io import converted_from_disk


class WeightsLoaded(Exception):
    """Raised in place of loading a model: what ran before it is what the test looks at."""


@pytest.fixture
def config_reads(monkeypatch):
    """The specs rtpurbo eval reads a config of; loading weights raises :class:`WeightsLoaded`."""
    reads = []

    def counted(spec, revision=None):
        reads.append(spec)
        return load_config(spec, revision)

    def no_weights(*args, **kwargs):
        raise WeightsLoaded

    monkeypatch.setattr(rtpurbo.eval.commands, "load_config", counted)
    monkeypatch.setattr(rtpurbo.eval.commands, "load_base", no_weights)
    return reads


@pytest.mark.parametrize("index_dim, stops_with", [("1000", SettingsError), ("8", WeightsLoaded)])
def test_eval_reads_the_config_once_and_checks_index_dim_before_loading(index_dim, stops_with, config_reads,
                                                                        tmp_path):
    from rtpurbo.testing import save_tiny_checkpoint

    base = save_tiny_checkpoint("llama", tmp_path / "base")
    args = build_parser().parse_args(["eval", "--model", str(base), "--device", "cpu", "--rows", "dense",
                                      "--index-dim", index_dim, "--out", str(tmp_path / "e")])
    with pytest.raises(stops_with):
        rtpurbo.eval.commands.run(args)
    assert config_reads == [str(base)]


def test_load_parses_the_artifact_settings_once(tmp_path, monkeypatch):
    model, _ = converted_from_disk(tmp_path)
    io.save(model, tmp_path / "a")
    calls = []
    real = rtpurbo.io.artifact_settings

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rtpurbo.io, "artifact_settings", counted)
    loaded, _ = io.load(tmp_path / "a")
    assert len(calls) == 1
    assert loaded.rtpurbo_plan.retrieval == model.rtpurbo_plan.retrieval
    assert loaded.rtpurbo_sparse == model.rtpurbo_sparse


def test_a_gguf_config_is_parsed_once_per_file_version_and_each_caller_gets_a_copy(tmp_path, monkeypatch):
    """Parsing a GGUF header takes seconds (3 s for the embedded model): convert's --index-dim check and the load
    after it read it once. A rewritten file is read again; a caller changing its config changes no one else's."""
    from types import SimpleNamespace

    from rtpurbo import models

    models._gguf_config.cache_clear()
    reads = []
    monkeypatch.setattr(models, "_read_config", lambda source: reads.append(source) or SimpleNamespace(layers=[1, 2]))
    (tmp_path / "m.gguf").write_bytes(b"x" * 10)
    source = models.ModelSource("spec", tmp_path, "m.gguf")
    first = models._config(source)
    first.layers.append(3)
    assert models._config(source).layers == [1, 2] and len(reads) == 1
    (tmp_path / "m.gguf").write_bytes(b"y" * 11)
    models._config(source)
    assert len(reads) == 2
    models._config(models.ModelSource("spec", tmp_path, None))  # config.json: read every time (fast)
    models._config(models.ModelSource("spec", tmp_path, None))
    assert len(reads) == 4
    models._gguf_config.cache_clear()
