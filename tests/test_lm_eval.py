"""lm-evaluation-harness scores an exported model on rtpurbo eval's items with rtpurbo's metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rtpurbo import io
from rtpurbo.eval.scoring import score_batch
from rtpurbo.data.task_data import load_task_data
from rtpurbo.data.tasks import TaskSample
from rtpurbo.export.lm_eval_task import TASK_NAME, first_line_cut, write_task
from rtpurbo.models import stop_token_ids

from .exported import exported, trained_artifact

ANSWER_TOKENS = 4  # the same for every item: one generation budget (4 + GEN_MARGIN) for the whole file


def _samples(model, tokenizer) -> list[TaskSample]:
    """Three items over the model's own greedy output: exact match, half the items found, nothing found."""
    prompts = [[5 + 7 * i + j for j in range(16)] for i in range(3)]
    samples = []
    for i, prompt in enumerate(prompts):
        sample = TaskSample("synthetic", len(prompt), i, None, prompt, [40] * ANSWER_TOKENS, "", [], "text")
        out = model.generate(torch.tensor([prompt]), max_new_tokens=sample.max_new_tokens, do_sample=False)
        greedy = tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        if i == 0:
            sample.answer_text, sample.answers = greedy, [greedy]
        elif i == 1:
            sample.answers, sample.match = [greedy.split()[0], "w250"], "set"
        else:
            sample.answer_text, sample.answers = "w251", ["w251"]
        samples.append(sample)
    return samples


def test_lm_eval_matches_rtpurbo_scoring(tmp_path):
    artifact, _ = trained_artifact(tmp_path, "llama", [[1], []])
    directory = exported(tmp_path, artifact)
    reference, tokenizer = io.load(artifact)
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    samples = _samples(model, tokenizer)
    summary = write_task(samples, tokenizer, tmp_path / "task")
    assert summary["items"] == 3 and summary["prompts_reencoded_differently"] == 0
    assert summary["max_length"] == max(len(s.prompt_ids) for s in samples) + summary["max_gen_toks"]
    assert [s.prompt_ids for s in load_task_data(tmp_path / "task" / "eval_data.npz", tokenizer).samples] == \
        [s.prompt_ids for s in samples]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
               f"pretrained={directory},trust_remote_code=True,max_length={summary['max_length']}", "--tasks",
               TASK_NAME, "--include_path",
               str(tmp_path / "task"), "--device", "cpu", "--batch_size", "1", "--output_path",
               str(tmp_path / "results"), "--log_samples"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())["results"][TASK_NAME]
    logged = [json.loads(line) for line in next((tmp_path / "results").rglob("samples_*.jsonl")).open()]

    rtpurbo = [score_batch(reference, tokenizer, [s], stop_token_ids(reference, tokenizer))[0][0] for s in samples]
    assert [s.exact for s in rtpurbo] == [1.0, 0.0, 0.0] and [s.partial for s in rtpurbo] == [1.0, 0.5, 0.0]
    assert results["exact,none"] == sum(s.exact for s in rtpurbo) / 3
    assert results["partial,none"] == sum(s.partial for s in rtpurbo) / 3
    # item by item: the harness saw rtpurbo's prompt and generated rtpurbo's greedy text
    by_seed = {entry["doc"]["seed"]: entry for entry in logged}
    for sample, score in zip(samples, rtpurbo):
        entry = by_seed[sample.seed]
        assert entry["arguments"]["gen_args_0"]["arg_0"] == tokenizer.decode(sample.prompt_ids)
        assert first_line_cut(entry["resps"][0][0]) == score.prediction


def test_rtpurbo_eval_gets_the_prompt_ids_the_harness_sees(tmp_path, smollm_tokenizer):
    """rtpurbo eval assembles prompts from separately tokenised pieces; the harness encodes the text."""
    pieces = smollm_tokenizer.encode("pass", add_special_tokens=False) + \
        smollm_tokenizer.encode("word", add_special_tokens=False)
    whole = smollm_tokenizer.encode("password", add_special_tokens=False)
    assert pieces != whole
    sample = TaskSample("synthetic", len(pieces), 0, 0.5, pieces, whole[:1], "x", ["x"], "text", spans=[(0, 1)])
    summary = write_task([sample], smollm_tokenizer, tmp_path)
    assert summary["prompts_reencoded_differently"] == 1
    assert json.loads((tmp_path / f"{TASK_NAME}.jsonl").read_text())["prompt"] == "password"
    saved = load_task_data(tmp_path / "eval_data.npz", smollm_tokenizer).samples[0]
    assert saved.prompt_ids == whole and saved.answer_ids == sample.answer_ids and saved.spans == []


def test_cli_writes_the_task_of_eval_data(tmp_path, capsys):
    from rtpurbo.cli import main
    from rtpurbo.data.task_data import TaskData, save_task_data, tokenizer_probe
    from rtpurbo.testing import save_tiny_checkpoint, tiny_tokenizer

    base = save_tiny_checkpoint("llama", tmp_path / "base")
    tokenizer = tiny_tokenizer()
    samples = [TaskSample(task, 8, i, None, [5 + i] * 8, [7], "w1", ["w1"], "text")
               for i, task in enumerate(["niah_single", "niah_multikey"])]
    save_task_data(TaskData(samples, [], {"probe": tokenizer_probe(tokenizer)}), tmp_path / "eval_data.npz")
    assert main(["lm-eval-task", "--model", str(base), "--data", str(tmp_path / "eval_data.npz"), "--tasks",
                 "niah_multikey", "--out", str(tmp_path / "task"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 1
    lines = (tmp_path / "task" / f"{TASK_NAME}.jsonl").read_text().splitlines()
    assert [json.loads(line)["task"] for line in lines] == ["niah_multikey"]
    assert "process_results: !function rtpurbo_tasks_metrics.process_results" in \
        (tmp_path / "task" / f"{TASK_NAME}.yaml").read_text()
