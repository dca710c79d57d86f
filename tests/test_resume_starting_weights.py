"""--resume continues a run only from the weights it started from: another --model artifact (same base, plan and
settings, other weights) is refused with CheckpointMismatch, as is a checkpoint that never recorded its starting
weights; the run's own earlier output (--model A --out A) still resumes."""
import json

import pytest
import torch

from rtpurbo import io
from rtpurbo.cli import main

from . import test_train_data
from .test_train_data import make_tiny_shards
from .test_train_io import converted_from_disk

one_thread = test_train_data.one_thread  # autouse: tiny models gain nothing from threads


@pytest.fixture
def two_artifacts(tmp_path):
    """(A, B): one converted model saved twice, B with one indexer value moved (another stage-1 result, say)."""
    model, _ = converted_from_disk(tmp_path)
    io.save(model, tmp_path / "a")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if ".indexer." in n).add_(0.1)
    io.save(model, tmp_path / "b")
    make_tiny_shards(tmp_path / "shards", seq_len=64, sequences=8)
    return tmp_path / "a", tmp_path / "b"


def stage1(tmp_path, model, out, *extra):
    return main(["train-indexer", "--model", str(model), "--data", str(tmp_path / "shards"), "--device", "cpu",
                 "--eval-sequences", "2", "--steps", "3", "--warmup", "0", "--out", str(out),
                 "--checkpoint-dir", str(tmp_path / "checkpoints"), *extra])


def stopped_after_one_step(tmp_path, model, out):
    assert stage1(tmp_path, model, out, "--time-budget", "0") == 0  # one step, checkpointed


def test_resume_from_other_starting_weights_is_refused(two_artifacts, tmp_path, capsys):
    a, b = two_artifacts
    stopped_after_one_step(tmp_path, a, tmp_path / "out")
    capsys.readouterr()
    assert stage1(tmp_path, b, tmp_path / "out", "--resume") == 2
    err = capsys.readouterr().err
    assert "differs in ['start_weights']" in err and "started from other weights" in err, err
    assert "Traceback" not in err
    assert stage1(tmp_path, a, tmp_path / "out", "--resume") == 0  # the run's own start resumes


def test_a_checkpoint_without_starting_weights_is_refused_with_why(two_artifacts, tmp_path, capsys):
    a, _ = two_artifacts
    stopped_after_one_step(tmp_path, a, tmp_path / "out")
    state_file = tmp_path / "checkpoints" / "indexer" / "latest" / "state.json"
    state = json.loads(state_file.read_text())
    del state["identity"]["start_weights"]  # as written before runs recorded it
    state_file.write_text(json.dumps(state))
    capsys.readouterr()
    assert stage1(tmp_path, a, tmp_path / "out", "--resume") == 2
    assert "written before checkpoints recorded the weights" in capsys.readouterr().err


def test_a_run_resumed_into_its_own_earlier_output_continues(two_artifacts, tmp_path):
    a, _ = two_artifacts
    stopped_after_one_step(tmp_path, a, a)  # --model A --out A: A now holds the run's first step
    assert io.read_config(a)["history"][-1]["steps_done"] == 1
    assert stage1(tmp_path, a, a, "--resume") == 0
    assert io.read_config(a)["history"][-1]["steps_done"] == 3
