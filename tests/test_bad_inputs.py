"""Broken user inputs give one clear error, never a traceback: a corrupt base model, an edited or damaged artifact
config, a bad eval data file, a headwise_config with values that are not integers."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from rtpurbo import io
from rtpurbo.cli import main, user_errors
from rtpurbo.config import HeadPlan, PlanMismatch, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.data.task_data import (TaskData, TaskDataError, check_tune_split, load_task_data, save_task_data,
                                    tokenizer_probe)
from rtpurbo.data.tasks import TaskSample
from rtpurbo.families import geometry
from rtpurbo.hub import ModelCorrupt
from rtpurbo.models import load_base, load_config, resolve_model
from rtpurbo.testing import save_tiny_checkpoint, tiny_tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("bad_inputs") / "base")


@pytest.fixture(scope="module")
def artifact(base):
    model, _ = load_base(str(base))
    layers, n_kv, n_q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, n_kv, n_q, [[0]] + [[]] * (layers - 1)), SparseConfig(window=8, sinks=2))
    return io.save(model, base.parent / "artifact")


def one_line_error(capsys, argv):
    """Run the CLI; it must fail as a user error: exit 2 and one line on stderr besides progress bars, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- a corrupt or incomplete base model ------------------------------------------------------------------
def _truncate_weights(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return weights


def _garble_weights(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"\xff" * 5000)
    return weights


def _cut_config(model_dir):
    config = model_dir / "config.json"
    config.write_text(config.read_text()[:40])
    return config


def _drop_weights(model_dir):
    (model_dir / "model.safetensors").unlink()
    return model_dir


@pytest.mark.parametrize("damage, what", [(_truncate_weights, "SafetensorError"), (_garble_weights, "SafetensorError"),
                                          (_cut_config, "config.json"), (_drop_weights, "no file named")])
def test_a_damaged_base_model_is_named_in_one_line(base, tmp_path, capsys, damage, what):
    model_dir = tmp_path / "model"
    shutil.copytree(base, model_dir)
    named = damage(model_dir)
    with pytest.raises(ModelCorrupt, match=what) as raised:
        load_base(str(model_dir))
    assert str(named) in str(raised.value)
    err = one_line_error(capsys, ["generate", "--model", str(model_dir), "--prompt", "w1 w2", "--device", "cpu"])
    assert str(named) in err


def test_a_file_that_is_not_gguf_is_named_in_one_line(tmp_path, capsys):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF garbage\n")
    with pytest.raises(ModelCorrupt, match="fake.gguf is truncated or not a GGUF file"):
        load_config(str(fake))
    err = one_line_error(capsys, ["info", "--model", str(fake)])
    assert "fake.gguf is truncated or not a GGUF file" in err


def test_a_broken_config_fails_info_in_one_line(base, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(base, model_dir)
    _cut_config(model_dir)
    with pytest.raises(ModelCorrupt, match="config.json cannot be read"):
        load_config(str(model_dir))
    assert "config.json cannot be read" in one_line_error(capsys, ["info", "--model", str(model_dir)])


def test_an_unreadable_shard_index_is_named(base, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(base, model_dir)
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00001.safetensors")
    (model_dir / "model.safetensors.index.json").write_text('{"weight_map": ["not", "a", "map"]}')
    with pytest.raises(ModelCorrupt, match="model.safetensors.index.json cannot be read"):
        resolve_model(str(model_dir)).weight_files


# --- an edited or damaged artifact config -------------------------------------------------------------------
def _set(*keys, value):
    def edit(config):
        *parents, last = keys
        for key in parents:
            config = config[key]
        if value is KeyError:
            del config[last]
        else:
            config[last] = value
    return edit


CONFIG_EDITS = {
    "window 0": (_set("sparse", "window", value=0), "'sparse' is invalid: window must be an integer >= 1"),
    "window text": (_set("sparse", "window", value="big"), "'sparse' is invalid: window must be an integer, got 'big'"),
    "recent null": (_set("sparse", "recent", value=None), "'sparse' is invalid: recent must be an integer, got None"),
    "top_p 2": (_set("sparse", "top_p", value=2), "'sparse' is invalid: top_p must be in"),
    "impl bogus": (_set("sparse", "impl", value="bogus"), "'sparse' is invalid: impl must be one of"),
    "unknown sparse key": (_set("sparse", "wat", value=1), "'sparse' is invalid: unknown SparseConfig fields"),
    "sparse missing": (_set("sparse", value=KeyError), "'sparse' is missing"),
    "plan missing": (_set("plan", value=KeyError), "'plan' is missing"),
    "plan geometry text": (_set("plan", "num_kv_heads", value="2"), "'plan' is invalid: .*num_kv_heads must be"),
    "plan kv heads 0": (_set("plan", "num_kv_heads", value=0), "'plan' is invalid: .*num_kv_heads must be"),
    "plan retrieval text": (_set("plan", "retrieval", value="x"), "'plan' is invalid: .*retrieval must be"),
    "lora rank text": (_set("lora", value={"r": "x"}), "'lora' is invalid: LoRA r must be an integer"),
    "lora list": (_set("lora", value=[2]), "'lora' must be an object or null"),
    "base_model missing": (_set("base_model", value=KeyError), "'base_model' is missing"),
    "fingerprint missing": (_set("base_model", "fingerprint", value=KeyError), "base_model.fingerprint is missing"),
    "files missing": (_set("files", value=KeyError), "'files' is missing"),
    "files list": (_set("files", value=[]), "'files' must be an object"),
    "weights unlisted": (_set("files", io.WEIGHTS_NAME, value=KeyError), "'files' must give the sha256"),
    "history text": (_set("history", value="x"), "'history' must be a list of objects"),
    "modified text": (_set("modified_base_tensors", value="x"), "'modified_base_tensors' must be a list"),
}


def _copy(artifact, tmp_path):
    out = tmp_path / "edited"
    shutil.copytree(artifact, out)
    return out


@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_an_edited_artifact_config_names_the_field(artifact, tmp_path, case):
    edit, message = CONFIG_EDITS[case]
    out = _copy(artifact, tmp_path)
    config = json.loads((out / io.CONFIG_NAME).read_text())
    edit(config)
    (out / io.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(io.ArtifactError, match=message) as raised:
        io.read_config(out)
    assert str(out / io.CONFIG_NAME) in str(raised.value)


@pytest.mark.parametrize("text, message", [(b"[1, 2]", "holds a JSON list, not an object"),
                                           (b"\xff\xfe{}", "is corrupt: 'utf-8' codec can't decode")])
def test_an_artifact_config_that_is_no_json_object_is_corrupt(artifact, tmp_path, text, message):
    out = _copy(artifact, tmp_path)
    (out / io.CONFIG_NAME).write_bytes(text)
    with pytest.raises(io.ArtifactError, match=message):
        io.read_config(out)


def test_info_and_generate_of_an_edited_artifact_fail_in_one_line(artifact, tmp_path, capsys):
    out = _copy(artifact, tmp_path)
    config = json.loads((out / io.CONFIG_NAME).read_text())
    config["sparse"]["window"] = 0
    (out / io.CONFIG_NAME).write_text(json.dumps(config))
    for argv in (["info", "--model", str(out)], ["generate", "--model", str(out), "--prompt", "w1", "--device", "cpu"]):
        assert "'sparse' is invalid: window must be an integer >= 1" in one_line_error(capsys, argv)


def test_unreadable_artifact_weights_with_a_matching_sha_are_named(artifact, tmp_path, capsys):
    out = _copy(artifact, tmp_path)
    weights = out / io.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    config = json.loads((out / io.CONFIG_NAME).read_text())
    config["files"][io.WEIGHTS_NAME] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (out / io.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(io.ArtifactError, match=f"{io.WEIGHTS_NAME} cannot be read"):
        io.load(out)
    err = one_line_error(capsys, ["generate", "--model", str(out), "--prompt", "w1", "--device", "cpu"])
    assert str(weights) in err


def test_modified_base_tensors_must_exist(artifact, tmp_path):
    out = _copy(artifact, tmp_path)
    config = json.loads((out / io.CONFIG_NAME).read_text())
    config["modified_base_tensors"] = ["nope.weight"]
    (out / io.CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(io.ArtifactError, match="nope.weight"):
        io.load(out)


# --- eval data files -------------------------------------------------------------------------------------------
def _eval_data(path, probe):
    sample = TaskSample("niah_single", 8, 0, None, [5] * 8, [7], "w1", ["w1"], "text")
    save_task_data(TaskData([sample], [], {"probe": probe}), path)
    return path


def _bad_data_files(tmp_path):
    """name -> (a broken eval data file, what its error says)."""
    np.savez(tmp_path / "pickled.npz", header=np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "shard.npz", tokens=np.zeros(4))
    np.save(tmp_path / "array.npy", np.zeros(4))
    good = _eval_data(tmp_path / "good.npz", tokenizer_probe(tiny_tokenizer()))
    (tmp_path / "truncated.npz").write_bytes(good.read_bytes()[:200])
    (tmp_path / "notes.txt").write_text("plain text\n")
    (tmp_path / "folder").mkdir()
    return {
        "missing": (tmp_path / "missing.npz", "no such file"),
        "directory": (tmp_path / "folder", "is a directory"),
        "pickled": (tmp_path / "pickled.npz", "is not rtpurbo eval data"),
        "no header": (tmp_path / "shard.npz", "is not rtpurbo eval data.*header"),
        "one array": (tmp_path / "array.npy", "holds one array"),
        "truncated": (tmp_path / "truncated.npz", "is not rtpurbo eval data"),
        "text": (tmp_path / "notes.txt", "is not rtpurbo eval data"),
        "other tokenizer": (_eval_data(tmp_path / "other.npz", [1, 2, 3]), "made with a different tokenizer"),
    }


def test_a_bad_eval_data_file_is_a_user_error(tmp_path):
    for name, (path, message) in _bad_data_files(tmp_path).items():
        with pytest.raises(TaskDataError, match=message) as raised:
            load_task_data(path, tiny_tokenizer())
        assert isinstance(raised.value, user_errors()) and str(path) in str(raised.value), name
    assert load_task_data(tmp_path / "good.npz", tiny_tokenizer()).samples[0].answers == ["w1"]


def test_eval_data_of_the_wrong_split_is_a_user_error(tmp_path):
    data = load_task_data(_eval_data(tmp_path / "eval.npz", tokenizer_probe(tiny_tokenizer())), tiny_tokenizer())
    with pytest.raises(TaskDataError, match="'eval'-split data"):
        check_tune_split(data, tmp_path / "eval.npz")


@pytest.mark.parametrize("name", ["missing", "pickled", "no header", "other tokenizer"])
def test_lm_eval_task_with_bad_data_fails_in_one_line(base, tmp_path, capsys, name):
    path, message = _bad_data_files(tmp_path)[name]
    err = one_line_error(capsys, ["lm-eval-task", "--model", str(base), "--data", str(path),
                                  "--out", str(tmp_path / "task")])
    assert str(path) in err


@pytest.mark.parametrize("flags", [["--tasks", "niah_word"], ["--lengths", "4096"]])
def test_lm_eval_task_filters_that_keep_no_sample_fail_in_one_line(base, tmp_path, capsys, flags):
    """--tasks / --lengths that match nothing in --data: one line naming what the data holds, nothing written."""
    data = _eval_data(tmp_path / "eval.npz", tokenizer_probe(tiny_tokenizer()))
    err = one_line_error(capsys, ["lm-eval-task", "--model", str(base), "--data", str(data),
                                  "--out", str(tmp_path / "task")] + flags)
    assert "holds no samples of --tasks / --lengths as given; it holds tasks niah_single at lengths 8" in err
    assert not (tmp_path / "task").exists()


# --- headwise_config values that are not integers ----------------------------------------------------------------
ROWS = [[0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]]


@pytest.mark.parametrize("key, value", [("sink_token_num", "four"), ("swa_token_num", 31.7),
                                        ("swa_token_num", "32"), ("seqlen_threshold", True),
                                        ("sink_token_num", None)])
def test_headwise_settings_must_be_integers(key, value):
    with pytest.raises(PlanMismatch, match=f"{key} must be an integer"):
        HeadPlan.from_headwise_config({"headwise_config": ROWS, key: value}, num_kv_heads=2)


def test_headwise_settings_written_as_whole_floats_are_read():
    _, settings = HeadPlan.from_headwise_config({"headwise_config": ROWS, "swa_token_num": 32.0}, num_kv_heads=2)
    assert settings == {"window": 32} and type(settings["window"]) is int


def test_convert_with_a_bad_headwise_plan_fails_in_one_line(base, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"headwise_config": {"0": ROWS[0], "1": ROWS[1], "sink_token_num": "four",
                                                    "swa_token_num": 31}}))
    err = one_line_error(capsys, ["convert", "--model", str(base), "--device", "cpu", "--plan", str(plan),
                                  "--out", str(tmp_path / "out")])
    assert "sink_token_num must be an integer, got 'four'" in err


def test_errors_that_are_not_the_files_are_not_called_corrupt(tmp_path):
    """A bad argument (dtype) keeps transformers' own error; a config that reads but names a model type transformers
    does not know is UnsupportedModel, not a corrupt file."""
    import json

    import torch

    from rtpurbo.families import UnsupportedModel
    from rtpurbo.hub import ModelCorrupt
    from rtpurbo.models import load_base, load_config
    from rtpurbo.testing import save_tiny_checkpoint

    good = save_tiny_checkpoint("llama", tmp_path / "good")
    with pytest.raises(ValueError) as caught:
        load_base(str(good), dtype=torch.int8)
    assert not isinstance(caught.value, ModelCorrupt)
    config = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    with pytest.raises(UnsupportedModel, match="transformers cannot build this config") as caught:
        load_config(str(good))
    assert not isinstance(caught.value, ModelCorrupt)


@pytest.mark.parametrize("model", ["base", "artifact"])
def test_a_prompt_without_tokens_fails_generate_in_one_line(base, artifact, capsys, model):
    """An empty --prompt sent as raw text (no chat template) is a one-line error for a dense and a converted model
    alike, not a traceback from the embedding; the Python API names the empty input too."""
    import torch

    from rtpurbo.generate import generate

    spec = str(base if model == "base" else artifact)
    err = one_line_error(capsys, ["generate", "--model", spec, "--prompt", "", "--no-chat-template", "--device", "cpu"])
    assert "--prompt '' has no tokens" in err
    converted, tokenizer = io.load(artifact)
    with pytest.raises(ValueError, match="hold no prompt token"):
        generate(converted, tokenizer, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
