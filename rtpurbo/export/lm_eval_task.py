"""``rtpurbo eval``'s task samples as a local lm-evaluation-harness task (offline: YAML + JSONL + metrics).

    rtpurbo eval --prepare-only --lengths 1024 --samples 2 --out runs/eval          # or any eval_data.npz
    rtpurbo lm-eval-task --data runs/eval/eval_data.npz --out runs/lm-eval-task
    lm_eval --model hf --model_args pretrained=EXPORTED_DIR,trust_remote_code=True \\
        --tasks rtpurbo_tasks --include_path runs/lm-eval-task
    rtpurbo eval --data runs/lm-eval-task/eval_data.npz --rows --artifacts NAME=ARTIFACT   # same prompts

Same items and same metrics as ``rtpurbo eval`` (:mod:`rtpurbo.eval.scoring`):

* the prompt of each item is its chat-formatted prompt ids decoded to text. The harness encodes that
  text again, which need not give the same ids (``rtpurbo eval`` assembles prompts from separately
  tokenised pieces), so the writer also saves ``eval_data.npz`` with the re-encoded prompt ids:
  ``rtpurbo eval --data`` on it scores exactly the token sequences the harness feeds the model;
* the harness generates greedily up to the longest answer budget of the file (gold answer tokens +
  ``GEN_MARGIN``) or an end-of-sequence token; ``process_results`` cuts the text where ``rtpurbo
  eval`` stops (after the first line break that follows some text) and scores it with rtpurbo's
  ``exact_match`` and ``partial_match``. ``rtpurbo eval`` also stops an item at its own budget;
  an answer line longer than that budget is the one case where the two can score differently.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from ..data.task_data import TaskData, save_task_data, tokenizer_probe
from ..data.tasks import TaskSample
from ..data.tasks.matching import exact_match, partial_match
from ..files import written_whole

TASK_NAME = "rtpurbo_tasks"
METRICS = ("exact", "partial")


def first_line_cut(text: str) -> str:
    """``text`` up to and including the first line break after some non-space text (rtpurbo eval's stop)."""
    stripped = text.lstrip()
    end = stripped.find("\n")
    return text if end < 0 else text[: len(text) - len(stripped) + end + 1]


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """The harness's per-item hook: rtpurbo's exact / partial match of the generated text."""
    text = first_line_cut(results[0])
    gold = SimpleNamespace(answers=doc["answers"], answer_text=doc["answer_text"], match=doc["match"])
    return {"exact": float(exact_match(text, gold)), "partial": partial_match(text, gold)}


def _yaml(name: str, jsonl: Path, max_gen_toks: int) -> str:
    metrics = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in METRICS)
    return (
        f"# rtpurbo eval task samples; written by `rtpurbo lm-eval-task` (rtpurbo/export/lm_eval_task.py)\n"
        f"task: {name}\n"
        f"dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(jsonl.resolve()))}\n"
        f"test_split: test\n"
        f"output_type: generate_until\n"
        f'doc_to_text: "{{{{prompt}}}}"\n'
        f'doc_to_target: "{{{{answer_text}}}}"\n'
        f"generation_kwargs:\n  until: []\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n"
        f"process_results: !function {name}_metrics.process_results\n"
        f"metric_list:\n{metrics}"
    )


def write_task(samples: list[TaskSample], tokenizer: Any, out_dir: str | Path, name: str = TASK_NAME
               ) -> dict[str, Any]:
    """Write ``name``.yaml, ``name``.jsonl, ``name``_metrics.py and ``eval_data.npz`` (the same items with
    the prompt ids the harness will see) into ``out_dir``, whole (:func:`rtpurbo.files.written_whole`: a failed or
    interrupted write leaves an earlier task in ``out_dir`` as it was); returns a summary."""
    if not samples:
        raise ValueError("no task samples to write")
    out_dir = Path(out_dir)
    with written_whole(out_dir, f"{name}.yaml") as tmp:
        reencoded, changed = _write_items(samples, tokenizer, tmp / f"{name}.jsonl")
        save_task_data(TaskData(reencoded, [], {"probe": tokenizer_probe(tokenizer), "source": "rtpurbo lm-eval-task"}),
                       tmp / "eval_data.npz")
        max_gen_toks = max(s.max_new_tokens for s in samples)
        # the YAML names the JSONL where it will be, not where it is written first
        (tmp / f"{name}.yaml").write_text(_yaml(name, out_dir / f"{name}.jsonl", max_gen_toks))
        (tmp / f"{name}_metrics.py").write_text(
            '"""Metrics of the rtpurbo task: rtpurbo eval\'s exact and partial match."""\n'
            "from rtpurbo.export.lm_eval_task import process_results\n\n__all__ = [\"process_results\"]\n"
        )
    # the harness keeps at most max_length - max_gen_toks prompt tokens (it cuts the rest from the left): the
    # max_length that keeps every prompt whole
    max_length = max(len(sample.prompt_ids) for sample in reencoded) + max_gen_toks
    return {"out": str(out_dir), "task": name, "items": len(samples), "max_gen_toks": max_gen_toks,
            "max_length": max_length, "prompts_reencoded_differently": changed}


def _write_items(samples: list[TaskSample], tokenizer: Any, jsonl: Path) -> tuple[list[TaskSample], int]:
    """The harness's items, one JSON object a line in ``jsonl``: each prompt as text. Returns (the samples with the
    prompt ids that text encodes to, how many of them differ from the sample's own ids)."""
    reencoded, changed = [], 0
    with open(jsonl, "w") as handle:
        for sample in samples:
            prompt = tokenizer.decode(sample.prompt_ids)
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            changed += ids != sample.prompt_ids
            # needle spans index the original ids; they are dropped where the ids changed
            reencoded.append(dataclasses.replace(sample, prompt_ids=ids,
                                                 spans=sample.spans if ids == sample.prompt_ids else []))
            handle.write(json.dumps({
                "task": sample.task, "length": sample.length, "seed": sample.seed, "prompt": prompt,
                "answer_text": sample.answer_text, "answers": sample.answers, "match": sample.match,
                "max_new_tokens": sample.max_new_tokens,
            }) + "\n")
    return reencoded, changed
