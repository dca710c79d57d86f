"""Outputs the CLI never loses: --out checks before any work, atomic writes under interrupts, Ctrl-C / SIGTERM
as one line, no duplicate history on a finished --resume, ~ in path flags, numeric flags checked by the parser."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtpurbo import io
from rtpurbo.cli import build_parser, main, sigterm_as_interrupt
from rtpurbo.cli_args import SettingsError, beside
from rtpurbo.config import HeadPlan, dumps
from rtpurbo.files import NotAnEarlierOutput, check_output, recover_stale, written_whole
from rtpurbo.testing import save_tiny_checkpoint

from .test_train_data import make_tiny_shards, one_thread  # noqa: F401 (autouse fixture)
from .test_train_io import converted_from_disk


@pytest.fixture
def base(tmp_path):
    return save_tiny_checkpoint("llama", tmp_path / "base")


@pytest.fixture
def plan_file(tmp_path):
    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    return tmp_path / "plan.json"


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: the refusals under test come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    import rtpurbo.commands
    import rtpurbo.eval.commands
    import rtpurbo.plan.commands

    for module in (rtpurbo.commands, rtpurbo.eval.commands, rtpurbo.plan.commands):
        monkeypatch.setattr(module, "load_base", refuse)
    monkeypatch.setattr(rtpurbo.commands, "load_model", refuse)
    monkeypatch.setattr(rtpurbo.commands, "load_tokenizer", refuse)
    monkeypatch.setattr(rtpurbo.plan.commands, "read_scores", refuse)
    return refuse


def one_line_error(capsys, needle):
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    return err


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- 1: eval --out ---------------------------------------------------------------------------------------------
def test_eval_refuses_a_model_folder_before_loading(base, tmp_path, capsys, no_loading):
    config = (base / "config.json").read_text()
    assert main(["eval", "--model", str(base), "--device", "cpu", "--rows", "dense", "--out", str(base)]) == 2
    one_line_error(capsys, "holds a config.json that rtpurbo eval did not write")
    assert main(["eval", "--report-only", "--merge", str(tmp_path / "run1"), "--out", str(base)]) == 2
    one_line_error(capsys, "holds a config.json that rtpurbo eval did not write")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep me")
    assert main(["eval", "--model", str(base), "--device", "cpu", "--out", str(tmp_path / "mine")]) == 2
    one_line_error(capsys, "is not an earlier output of this command")
    assert (base / "config.json").read_text() == config and not (base / "rows").exists()


def test_eval_resumes_into_its_own_earlier_output(tmp_path):
    from rtpurbo.eval.commands import check_eval_out

    check_eval_out(tmp_path / "new")
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "eval_data.npz").write_bytes(b"")
    check_eval_out(tmp_path / "prepared")  # --prepare-only's output
    run = tmp_path / "run"
    (run / "rows").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"rows": [], "settings": {}}))
    (run / "log.txt").write_text("the user's own notes beside the results")
    check_eval_out(run)
    (run / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(NotAnEarlierOutput):
        check_eval_out(run)


# --- 2: written_whole under interrupts, stale leftovers, SIGTERM -------------------------------------------------
def _earlier_output(target):
    target.mkdir()
    (target / "marker").write_text("old")


def test_an_interrupt_between_the_two_renames_restores_the_old_output(tmp_path, monkeypatch):
    import rtpurbo.files

    target = tmp_path / "out"
    _earlier_output(target)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old output is aside, the new one not yet in
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(rtpurbo.files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with written_whole(target, "marker") as tmp:
            (tmp / "marker").write_text("new")
    monkeypatch.setattr(rtpurbo.files.os, "replace", real)
    assert (target / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_a_killed_run_are_put_right_and_nothing_else_is_touched(tmp_path):
    host, dead, alive = socket.gethostname(), dead_pid(), os.getppid()
    target = tmp_path / "out"
    stale_old = tmp_path / f".out.old-{host}-{dead}"  # killed between its two renames: out is missing
    _earlier_output(stale_old)
    stale_tmp = tmp_path / f".out.tmp-{host}-{dead}-ab12_x9z"
    live_tmp = tmp_path / f".out.tmp-{host}-{alive}-ab12_x9z"
    other_host = tmp_path / f".out.tmp-elsewhere-{dead}-ab12_x9z"
    others = [tmp_path / ".out.tmp-ab12_x9z", tmp_path / ".out.old-notes", tmp_path / f".outer.old-{host}-{dead}"]
    for path in [stale_tmp, live_tmp, other_host, *others]:
        path.mkdir()
    recover_stale(target)
    assert (target / "marker").read_text() == "old" and not stale_old.exists() and not stale_tmp.exists()
    assert live_tmp.exists() and other_host.exists() and all(p.exists() for p in others)
    _earlier_output(stale_old)  # the old output of a run killed after its second rename
    with written_whole(target, "marker") as tmp:
        (tmp / "marker").write_text("new")
    assert (target / "marker").read_text() == "new" and not stale_old.exists()


def test_sigterm_runs_the_clean_up_of_ctrl_c(tmp_path, monkeypatch, capsys):
    target, handler = tmp_path / "out", signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt(), written_whole(target, "marker") as tmp:
            (tmp / "marker").write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) == handler

    import rtpurbo.commands

    monkeypatch.setattr(rtpurbo.commands, "info", lambda args: os.kill(os.getpid(), signal.SIGTERM))
    assert main(["info", "--layers", "2", "--kv-heads", "2", "--head-dim", "16"]) == 143
    assert "rtpurbo info: terminated (SIGTERM)" in capsys.readouterr().err


# --- 3: profile, convert's OUT-profile, plan search / compare, lm-eval-task ---------------------------------------
def test_profile_out_is_checked_before_loading(base, tmp_path, capsys, no_loading):
    assert main(["profile", "--model", str(base), "--out", str(base)]) == 2
    one_line_error(capsys, "is not an earlier output of this command (no head_plan.json)")
    (tmp_path / "afile").write_text("hi")
    assert main(["profile", "--model", str(base), "--out", str(tmp_path / "afile" / "sub")]) == 2
    one_line_error(capsys, "afile is a file, not a directory")
    (tmp_path / "a-profile").mkdir()
    (tmp_path / "a-profile" / "notes.md").write_text("keep me")
    assert main(["convert", "--model", str(base), "--out", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "a-profile exists and is not an earlier output")


def test_a_profile_is_written_whole(tmp_path, monkeypatch):
    import rtpurbo.pipeline
    from rtpurbo.pipeline import ProfileSettings, write_profile
    from rtpurbo.profile.run import HeadScores

    scores = HeadScores(kv={"copy": torch.rand(2, 2), "needle_mass": torch.rand(2, 2)}, per_query_head={},
                        num_q_heads=6, window=8, sinks=2, num_prompts=1)
    plan = HeadPlan(2, 2, 6, [[1], []])
    write_profile(tmp_path / "p", scores, plan, ProfileSettings(), {"stable": True})
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["domain_stability.json", "head_plan.json",
                                                                  "head_plan.png", "head_scores.json"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}

    def interrupted_plot(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rtpurbo.pipeline, "plot_plan", interrupted_plot)
    with pytest.raises(KeyboardInterrupt):
        write_profile(tmp_path / "p", scores, HeadPlan(2, 2, 6, [[0, 1], []]), ProfileSettings())
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


@pytest.mark.parametrize("argv, marker", [
    (["plan", "search", "--data", "d.npz"], "search.json"),
    (["plan", "compare", "--scores", "a.json", "b.json"], "compare.json"),
    (["lm-eval-task", "--data", "d.npz"], "rtpurbo_tasks.yaml"),
])
def test_plan_and_lm_eval_task_refuse_a_foreign_out_before_work(argv, marker, base, tmp_path, capsys, no_loading):
    model = [] if argv[1] == "compare" else ["--model", str(base)]
    assert main(argv + model + ["--out", str(base)]) == 2
    one_line_error(capsys, f"is not an earlier output of this command (no {marker})")
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / marker).write_text("{}")
    assert check_output(tmp_path / "again", marker) == (tmp_path / "again").resolve()


# --- 4: --out . and names without a name ---------------------------------------------------------------------------
def test_out_dot_is_refused_in_one_line_and_siblings_resolve(base, plan_file, tmp_path, capsys, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (".", "missing/.."):
        assert main(["convert", "--model", str(base), "--plan", str(plan_file), "--out", out]) == 2
        one_line_error(capsys, "is the current directory or holds it")
    assert beside(Path("."), ".checkpoints") == tmp_path / "work.checkpoints"
    assert beside(Path("sub/.."), "-profile") == tmp_path / "work-profile"
    with pytest.raises(SettingsError):
        beside(Path("/"), ".report.json")


# --- 9: numeric flags, --index-dim, warm-up ------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["data", "prepare", "--out", "x", "--shard-mb", "nan"],
    ["data", "prepare", "--out", "x", "--shard-mb", "0"],
    ["data", "prepare", "--out", "x", "--shard-mb", "-1"],
    ["data", "prepare", "--out", "x", "--seq-len", "1"],
    ["data", "prepare", "--out", "x", "--min-doc-chars", "-5"],
    ["profile", "--out", "x", "--sinks", "-5"],
    ["info", "--sinks", "-5"],
    ["plan", "search", "--data", "d", "--out", "x", "--sinks", "-1"],
])
def test_numeric_flags_out_of_range_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "error: argument" in capsys.readouterr().err


def test_index_dim_beyond_head_dim_is_one_line_before_loading(base, plan_file, tmp_path, capsys, no_loading):
    for dim in ("1000", "3"):
        assert main(["convert", "--model", str(base), "--plan", str(plan_file), "--index-dim", dim,
                     "--out", str(tmp_path / "a")]) == 2
        one_line_error(capsys, f"--index-dim {dim}: index_dim must be even and in [2, head_dim=16], got {dim}")
    assert main(["eval", "--model", str(base), "--device", "cpu", "--rows", "dense", "--index-dim", "1000",
                 "--out", str(tmp_path / "e")]) == 2
    one_line_error(capsys, "--index-dim 1000: index_dim must be even and in [2, head_dim=16], got 1000")


def _trained_setup(tmp_path):
    model, _ = converted_from_disk(tmp_path)
    io.save(model, tmp_path / "converted")
    make_tiny_shards(tmp_path / "shards", seq_len=64, sequences=8)
    return ["train-indexer", "--model", str(tmp_path / "converted"), "--data", str(tmp_path / "shards"),
            "--device", "cpu", "--eval-sequences", "2"]


def test_a_warm_up_as_long_as_the_run_is_told_on_the_cli(tmp_path):
    argv = _trained_setup(tmp_path)
    with pytest.warns(UserWarning, match="a warm-up of 5 steps in a run of 1"):
        assert main(argv + ["--steps", "1", "--warmup", "5", "--out", str(tmp_path / "a")]) == 0


# --- 10: Ctrl-C ------------------------------------------------------------------------------------------------------
def test_ctrl_c_is_one_line_saying_out_is_unchanged(base, plan_file, tmp_path, capsys, monkeypatch):
    import rtpurbo.commands

    out = tmp_path / "a"
    argv = ["convert", "--model", str(base), "--plan", str(plan_file), "--out", str(out)]
    assert main(argv) == 0
    before = (out / io.CONFIG_NAME).read_text()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rtpurbo.commands, "convert_model", interrupt)
    capsys.readouterr()
    assert main(argv) == 130
    one_line_error(capsys, f"rtpurbo convert: interrupted (Ctrl-C); {out} is unchanged\n")
    assert (out / io.CONFIG_NAME).read_text() == before
    assert main(argv[:-1] + [str(tmp_path / "b")]) == 130
    one_line_error(capsys, f"nothing was written to {tmp_path / 'b'}")


def test_ctrl_c_in_training_says_where_the_checkpoints_are(tmp_path, capsys, monkeypatch):
    import rtpurbo.train.commands

    argv = _trained_setup(tmp_path) + ["--steps", "3", "--warmup", "0", "--out", str(tmp_path / "a")]
    real = rtpurbo.train.commands.run_stage1

    def stopped_after_a_checkpoint(model, shards, settings, *rest):
        settings.loop.steps, settings.loop.checkpoint_every = 1, 1  # one step, checkpointed, then Ctrl-C
        real(model, shards, settings, *rest)
        raise KeyboardInterrupt

    monkeypatch.setattr(rtpurbo.train.commands, "run_stage1", stopped_after_a_checkpoint)
    assert main(argv) == 130
    one_line_error(capsys, f"nothing was written to {tmp_path / 'a'}; checkpoints are in "
                           f"{tmp_path / 'a.checkpoints'}: the same command with --resume continues from them")


# --- 11: a finished run resumed --------------------------------------------------------------------------------------
def test_a_finished_run_resumed_adds_no_second_history_entry(tmp_path):
    argv = _trained_setup(tmp_path) + ["--steps", "2", "--warmup", "0"]
    own, checkpoints = tmp_path / "own", ["--checkpoint-dir", str(tmp_path / "own.checkpoints")]
    assert main(argv + ["--out", str(own)]) == 0

    def history(path):
        return [(h["stage"], h["steps_done"]) for h in io.read_config(path)["history"]]

    assert history(own) == [("indexer", 2)]
    resumed = [a if a != str(tmp_path / "converted") else str(own) for a in argv]  # --model own
    assert main(resumed + ["--out", str(own), "--resume"] + checkpoints) == 0
    assert history(own) == [("indexer", 2)]
    # the same finished checkpoint into another output, from the untrained model: that output records the run
    assert main(argv + ["--out", str(tmp_path / "other"), "--resume"] + checkpoints) == 0
    assert history(tmp_path / "other") == [("indexer", 2)]


# --- 12: ~ in path flags ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, dest", [
    (["convert", "--out", "~/x"], "out"),
    (["convert", "--out", "o", "--data", "~/x"], "data"),
    (["convert", "--out", "o", "--checkpoint-dir", "~/x"], "checkpoint_dir"),
    (["profile", "--out", "~/x"], "out"),
    (["eval", "--out", "~/x"], "out"),
    (["eval", "--ppl-data", "~/x"], "ppl_data"),
    (["data", "prepare", "--out", "~/x"], "out"),
    (["train-indexer", "--model", "~/x", "--data", "d", "--out", "o"], "model"),
    (["distill", "--model", "m", "--data", "~/x", "--out", "o"], "data"),
    (["plan", "search", "--data", "~/x", "--out", "o"], "data"),
    (["plan", "compare", "--scores", "~/x", "b", "--out", "o"], "scores"),
    (["lm-eval-task", "--data", "d", "--out", "~/x"], "out"),
    (["quickstart", "--out", "~/x"], "out"),
    (["bench", "model", "--out", "~/x"], "out"),
])
def test_tilde_in_path_flags_is_the_home_folder(argv, dest):
    value = getattr(build_parser().parse_args(argv), dest)
    assert (value[0] if isinstance(value, list) else value) == Path.home() / "x"
