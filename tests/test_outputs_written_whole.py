"""plan search, plan compare and lm-eval-task write their --out whole: a write that fails part-way (here a writer
made to raise after the first files are written) leaves the earlier output exactly as it was, and nothing beside it."""
import json
from pathlib import Path

import numpy as np
import pytest

import rtpurbo.export.lm_eval_task
import rtpurbo.plan.commands
import rtpurbo.plan.compare
from rtpurbo.cli import main
from rtpurbo.data.task_data import save_task_data
from rtpurbo.data.tasks import TaskSample
from rtpurbo.export.lm_eval_task import TASK_NAME, write_task
from rtpurbo.plan.compare import write_comparison
from rtpurbo.testing import save_tiny_checkpoint, tiny_tokenizer

from .test_plan_search import tune_data


def contents(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path: what an output holds."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_comparison_that_fails_part_way_leaves_the_earlier_one(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    copy = {"criterion": "copy", "ranking": rng.random((2, 2)).tolist(), "num_q_heads": 6}
    knockout = {"criterion": "knockout", "ranking": rng.random((2, 2)).tolist(), "num_q_heads": 6}
    write_comparison(tmp_path / "cmp", copy, knockout, [0.25], 0.25)
    before = contents(tmp_path / "cmp")
    monkeypatch.setattr(rtpurbo.plan.compare, "scores_scatter", interrupted)  # after both plans are written
    with pytest.raises(KeyboardInterrupt):
        write_comparison(tmp_path / "cmp", copy, knockout, [0.5], 0.75)
    assert contents(tmp_path / "cmp") == before
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]


def _samples(first_token: int) -> list[TaskSample]:
    return [TaskSample("niah_single", 8, i, None, [first_token + i] * 8, [7], "w1", ["w1"], "text") for i in range(2)]


def test_an_lm_eval_task_that_fails_part_way_leaves_the_earlier_one(tmp_path, monkeypatch):
    tokenizer = tiny_tokenizer()
    write_task(_samples(5), tokenizer, tmp_path / "task")
    before = contents(tmp_path / "task")
    jsonl = (tmp_path / "task" / f"{TASK_NAME}.jsonl").resolve()
    assert f"test: {json.dumps(str(jsonl))}" in before[f"{TASK_NAME}.yaml"].decode()  # where it is, not where written
    monkeypatch.setattr(rtpurbo.export.lm_eval_task, "save_task_data", interrupted)  # after the JSONL is written
    with pytest.raises(KeyboardInterrupt):
        write_task(_samples(9), tokenizer, tmp_path / "task")
    assert contents(tmp_path / "task") == before
    assert [p.name for p in tmp_path.iterdir()] == ["task"]


@pytest.fixture
def search_argv(tmp_path):
    """``rtpurbo plan search`` on a tiny model with a given ranking (no profiling), short of ``--out``."""
    base = save_tiny_checkpoint("llama", tmp_path / "base", num_layers=3)
    save_task_data(tune_data(), tmp_path / "tune.npz")
    scores = {"criterion": "knockout", "num_q_heads": 6,
              "ranking": np.random.default_rng(1).random((3, 2)).tolist()}
    (tmp_path / "head_scores.json").write_text(json.dumps(scores))
    return ["plan", "search", "--model", str(base), "--device", "cpu", "--data", str(tmp_path / "tune.npz"),
            "--ratios", "0.5", "--windows", "8", "--sinks", "2", "--json"]


def test_a_search_that_fails_part_way_leaves_the_earlier_one(search_argv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs" / "plan"
    assert main(search_argv + ["--scores", str(tmp_path / "head_scores.json"), "--out", str(out)]) == 0
    before = contents(out)
    monkeypatch.setattr(rtpurbo.plan.commands, "pareto_plot", interrupted)  # after search.json and the plans
    assert main(search_argv + ["--scores", str(tmp_path / "head_scores.json"), "--tolerance", "3",
                               "--out", str(out)]) == 130
    assert contents(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["plan"]


def test_a_search_again_on_a_ranking_inside_its_out_keeps_that_ranking(search_argv, tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(search_argv + ["--scores", str(tmp_path / "head_scores.json"), "--out", str(out)]) == 0
    (out / "profile").mkdir()  # as a search that profiled leaves it
    (out / "profile" / "head_scores.json").write_bytes((tmp_path / "head_scores.json").read_bytes())
    capsys.readouterr()
    assert main(search_argv + ["--scores", str(out / "profile" / "head_scores.json"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["scores"] == str(out / "profile" / "head_scores.json")
    assert (out / "profile" / "head_scores.json").read_bytes() == (tmp_path / "head_scores.json").read_bytes()


def test_ctrl_c_in_plan_compare_says_out_is_unchanged(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    paths = []
    for name in ("copy", "knockout"):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps({"criterion": name, "ranking": rng.random((2, 2)).tolist(), "num_q_heads": 6}))
    argv = ["plan", "compare", "--scores", *map(str, paths), "--ratio", "0.25", "--out", str(tmp_path / "cmp")]
    assert main(argv) == 0
    monkeypatch.setattr(rtpurbo.plan.compare, "scores_scatter", interrupted)
    capsys.readouterr()
    assert main(argv) == 130
    assert f"interrupted (Ctrl-C); {tmp_path / 'cmp'} is unchanged" in capsys.readouterr().err
