"""The training subcommands end to end on a tiny model: artifact -> train-indexer -> distill -> artifact."""
import argparse
import json

import pytest
import torch

from rtpurbo import io
from rtpurbo.cli_args import SettingsError
from rtpurbo.train.commands import (add_convert_train_arguments, add_parsers, distill_settings, indexer_settings,
                                    synthetic_mix, train_converted)
from rtpurbo.train.data import LONG_RANGE_KINDS

from .test_train_data import make_tiny_shards, one_thread  # noqa: F401 (autouse fixture)
from .test_train_io import converted_from_disk


def parser():
    root = argparse.ArgumentParser(prog="rtpurbo")
    sub = root.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    convert = sub.add_parser("convert")
    convert.add_argument("--out", required=True)
    add_convert_train_arguments(convert)
    return root


def test_flags_map_to_settings(tmp_path):
    args = parser().parse_args(["convert", "--out", str(tmp_path / "a"), "--train", "--data", "d",
                                "--indexer-steps", "7", "--distill-trainable", "attention", "--distill-lora-rank", "2",
                                "--distill-no-gradient-checkpointing"])
    args.out = tmp_path / "a"
    stage1 = indexer_settings(args, "indexer-", tmp_path / "c")
    stage2 = distill_settings(args, "distill-", tmp_path / "c")
    assert stage1.loop.steps == 7 and stage1.loop.batch_size == 2 and stage1.queries == 256
    assert stage2.loop.steps == 600 and stage2.trainable == "attention" and stage2.lora.r == 2
    assert not stage2.gradient_checkpointing and stage2.loop.lr is None
    args = parser().parse_args(["data", "prepare", "--out", "x", "--pool", "dev"])
    assert args.handler.__name__ == "data" and args.seq_len == 8192 and args.synthetic_kinds == ["passkey", "kv",
                                                                                                "multihop"]
    args = parser().parse_args(["data", "prepare", "--out", "x", "--synthetic-kinds", "kv", "common_words"])
    assert args.synthetic_kinds == ["kv", "common_words"]
    assert synthetic_mix(args, dev=False) == (0.1, ("kv", "common_words"))
    mix = parser().parse_args(["data", "prepare", "--out", "x", "--long-range-mix"])
    assert synthetic_mix(mix, dev=False) == (0.3, LONG_RANGE_KINDS) and "common_words_close" in LONG_RANGE_KINDS
    mix = parser().parse_args(["data", "prepare", "--out", "x", "--long-range-mix", "--synthetic-ratio", "0.5"])
    assert synthetic_mix(mix, dev=False)[0] == 0.5
    with pytest.raises(SettingsError, match="--long-range-mix makes training data"):
        synthetic_mix(mix, dev=True)
    with pytest.raises(SystemExit):  # one or the other
        parser().parse_args(["data", "prepare", "--out", "x", "--long-range-mix", "--synthetic-kinds", "kv"])


def test_train_indexer_then_distill_commands(tmp_path):
    model, tokenizer = converted_from_disk(tmp_path)
    io.save(model, tmp_path / "converted")
    make_tiny_shards(tmp_path / "shards", seq_len=64, sequences=8)
    common = ["--data", str(tmp_path / "shards"), "--device", "cpu", "--steps", "3", "--warmup", "1", "--json"]
    args = parser().parse_args(["train-indexer", "--model", str(tmp_path / "converted"),
                                "--out", str(tmp_path / "indexed"), *common])
    result = args.handler(args)
    assert result["reports"][0]["steps_done"] == 3
    args = parser().parse_args(["distill", "--model", str(tmp_path / "indexed"), "--out", str(tmp_path / "final"),
                                "--batch-size", "2", "--lora-rank", "2", "--keep-checkpoints", "--checkpoint-every", "2",
                                *common])
    args.handler(args)
    kept = sorted(p.name for p in tmp_path.glob("final.distill-step-*"))
    assert kept == ["final.distill-step-00002", "final.distill-step-00003"]  # every checkpoint, the last included
    assert io.read_config(tmp_path / kept[0])["lora"]["r"] == 2
    snapshot_history = io.read_config(tmp_path / kept[0])["history"]  # the stage it was taken in, so far
    assert [h["stage"] for h in snapshot_history] == ["indexer", "distill"] and snapshot_history[-1]["steps_done"] == 2
    config = io.read_config(tmp_path / "final")
    assert [h["stage"] for h in config["history"]] == ["indexer", "distill"]
    assert config["lora"]["r"] == 2
    assert (tmp_path / "final.checkpoints" / "distill" / "latest" / "state.json").is_file()
    report = json.loads((tmp_path / "final.report.json").read_text())
    assert len(report[0]["history"]) == 3
    loaded, _ = io.load(tmp_path / "final")
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(loaded(ids, use_cache=False).logits).all()


def test_convert_train_runs_both_stages_before_save(tmp_path):
    model, tokenizer = converted_from_disk(tmp_path)
    make_tiny_shards(tmp_path / "shards", seq_len=64, sequences=8)
    make_tiny_shards(tmp_path / "mix", seq_len=64, sequences=8, synthetic_ratio=0.5)
    args = parser().parse_args(["convert", "--out", str(tmp_path / "artifact"), "--train", "--data",
                                str(tmp_path / "shards"), "--distill-data", str(tmp_path / "mix"),
                                "--indexer-steps", "2", "--distill-steps", "2",
                                "--indexer-warmup", "0", "--distill-warmup", "0", "--distill-lora-rank", "2",
                                "--distill-keep-checkpoints", "--distill-checkpoint-every", "1"])
    args.out, args.device, args.json = tmp_path / "artifact", "cpu", False
    result = train_converted(args, model, tokenizer)
    snapshot = io.read_config(tmp_path / "artifact.distill-step-00001")["history"]  # stage 1 is done by then
    assert [h["stage"] for h in snapshot] == ["indexer", "distill"] and snapshot[-1].get("snapshot")
    assert result["indexer"]["steps_done"] == 2 and result["distill"]["steps_done"] == 2
    assert result["indexer"]["data"] == str(tmp_path / "shards") and result["distill"]["data"] == str(tmp_path / "mix")
    io.save(model, args.out)
    assert [h["stage"] for h in io.read_config(args.out)["history"]] == ["indexer", "distill"]


def test_convert_train_runs_stage2_only_after_a_finished_stage1(tmp_path):
    """A stage 1 stopped by its time budget leaves stage 2 for the --resume run that finishes stage 1 first."""
    model, tokenizer = converted_from_disk(tmp_path)
    make_tiny_shards(tmp_path / "shards", seq_len=64, sequences=8)
    argv = ["convert", "--out", str(tmp_path / "artifact"), "--train", "--data", str(tmp_path / "shards"),
            "--indexer-steps", "3", "--distill-steps", "2", "--indexer-warmup", "0", "--distill-warmup", "0",
            "--distill-lora-rank", "2"]
    args = parser().parse_args(argv + ["--indexer-time-budget", "0"])
    args.out, args.device, args.json = tmp_path / "artifact", "cpu", True
    first = train_converted(args, model, tokenizer)
    assert first["indexer"]["stopped_early"] and first["distill"] is None
    assert [h["stage"] for h in model.rtpurbo_history] == ["indexer"]
    model, tokenizer = converted_from_disk(tmp_path / "again")
    args = parser().parse_args(argv + ["--resume"])
    args.out, args.device, args.json = tmp_path / "artifact", "cpu", True
    resumed = train_converted(args, model, tokenizer)
    assert resumed["indexer"]["steps_done"] == 3 and resumed["distill"]["steps_done"] == 2


def test_a_run_without_resume_never_writes_over_a_checkpoint(tmp_path, capsys):
    """A run stopped by its time budget keeps its checkpoint; the same command without --resume is refused before
    any work (it would overwrite that checkpoint step by step), and --resume with nothing to resume says so."""
    from rtpurbo.cli import main

    model, _ = converted_from_disk(tmp_path)
    io.save(model, tmp_path / "converted")
    make_tiny_shards(tmp_path / "shards", seq_len=64, sequences=8)
    argv = ["train-indexer", "--model", str(tmp_path / "converted"), "--data", str(tmp_path / "shards"),
            "--device", "cpu", "--steps", "3", "--warmup", "0", "--out", str(tmp_path / "indexed")]
    assert main(argv + ["--time-budget", "0"]) == 0
    out = capsys.readouterr().out
    assert "indexer stopped early after 1 of 3 steps (time budget)" in out and "--resume to finish" in out
    checkpoint = tmp_path / "indexed.checkpoints" / "indexer" / "latest" / "state.json"
    before = checkpoint.read_text()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds the checkpoint of an earlier run (step 1 of 3): pass --resume" in err
    assert checkpoint.read_text() == before
    assert main(argv + ["--resume"]) == 0
    assert json.loads(checkpoint.read_text())["step"] == 3
    assert main(argv + ["--resume", "--checkpoint-dir", str(tmp_path / "typo"), "--out", str(tmp_path / "b")]) == 0
    assert f"--resume: no checkpoint in {tmp_path / 'typo' / 'indexer'}; starting from step 0" in capsys.readouterr().out


def test_training_flags_and_crops_that_cannot_work_are_refused_before_any_work(tmp_path, capsys):
    from rtpurbo.cli import main

    for flag, value in [("--checkpoint-every", "0"), ("--queries", "0"), ("--seq-len", "-8"), ("--warmup", "-1"),
                        ("--eval-sequences", "0"), ("--time-budget", "nan"), ("--lr", "0")]:
        with pytest.raises(SystemExit):
            parser().parse_args(["train-indexer", "--model", "m", "--data", "d", "--out", "o", flag, value])
        assert f"argument {flag}" in capsys.readouterr().err
    model, _ = converted_from_disk(tmp_path)
    io.save(model, tmp_path / "converted")
    make_tiny_shards(tmp_path / "mix", seq_len=64, sequences=8, synthetic_ratio=0.5)
    argv = ["train-indexer", "--model", str(tmp_path / "converted"), "--data", str(tmp_path / "mix"), "--device",
            "cpu", "--steps", "2", "--warmup", "0", "--out", str(tmp_path / "indexed")]
    assert main(argv + ["--seq-len", "32"]) == 2  # the needle rows end with their question and answer
    assert "synthetic rows of 64 tokens, each ending with its question and answer" in capsys.readouterr().err
    assert main(argv + ["--seq-len", "64"]) == 0
