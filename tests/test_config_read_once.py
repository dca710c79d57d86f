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
