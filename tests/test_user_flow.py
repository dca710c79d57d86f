"""A new user's path end to end on the command line: a Hub model (tiny, served from a Hub-layout cache with
the Hub offline) and the user's own files -> data prepare -> convert --train -> eval --ppl-data -> generate."""
import json
import random

from rtpurbo import io
from rtpurbo.cli import main
from rtpurbo.testing import save_hub_cache, save_tiny_checkpoint, tiny_tokenizer

from .test_train_data import one_thread  # noqa: F401 (autouse fixture)

REPO = "tiny-org/tiny-llama"


def words(n, seed):
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(200)}" for _ in range(n))


def write_corpus(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    (folder / "notes.txt").write_text(words(1500, 0))
    records = [{"text": words(150, i)} for i in range(10)]
    records += [{"messages": [{"role": "user", "content": words(20, 100 + i)},
                              {"role": "assistant", "content": words(40, 200 + i)}]} for i in range(10)]
    (folder / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.table({"text": [words(200, 300 + i) for i in range(8)]}), folder / "pages.parquet")
    (folder / "held-out.txt").write_text(words(1200, 999))


def run(*argv):
    assert main([*argv, "--json"]) == 0


def test_hub_model_on_user_files_end_to_end(tmp_path, monkeypatch, capsys):
    source = save_tiny_checkpoint("llama", tmp_path / "src")
    chat_tokenizer = tiny_tokenizer()
    chat_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} </s> {% endfor %}"
    chat_tokenizer.save_pretrained(source)
    commit = save_hub_cache(source, tmp_path / "hf", REPO)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "corpus")

    run("data", "prepare", "--model", REPO, "--files", "corpus/notes.txt", "corpus/chats.jsonl", "corpus/*.parquet",
        "--seq-len", "64", "--sequences", "60", "--out", "train")
    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert sorted(manifest["sources"]) == ["files:corpus/*.parquet", "files:corpus/chats.jsonl",
                                           "files:corpus/notes.txt"]
    assert all(entry["documents"] > 0 for entry in manifest["sources"].values())
    assert manifest["synthetic"]["sequences"] == 6 and manifest["model"]["commit"] == commit
    run("data", "prepare", "--model", REPO, "--pool", "dev", "--files", "corpus/held-out.txt", "--seq-len", "256",
        "--sequences", "3", "--out", "dev")
    capsys.readouterr()

    run("convert", "--model", REPO, "--device", "cpu", "--train", "--data", "train", "--haystacks", "data",
        "--profile-length", "128", "--profile-samples", "1", "--retrieval-ratio", "0.5", "--window", "32",
        "--indexer-steps", "2", "--distill-steps", "2", "--indexer-warmup", "0", "--distill-warmup", "0",
        "--indexer-eval-sequences", "2", "--distill-eval-sequences", "2", "--distill-lora-rank", "2",
        "--out", "artifact")
    converted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert converted["training"]["distill"]["steps_done"] == 2
    config = io.read_config(tmp_path / "artifact")
    assert config["base_model"]["repo_id"] == REPO and config["base_model"]["commit"] == commit
    assert [h["stage"] for h in config["history"]] == ["indexer", "distill"]
    reports = json.loads((tmp_path / "artifact.report.json").read_text())  # per-step histories, as train-indexer's
    assert [len(r["history"]) for r in reports] == [2, 2] and "reports" not in converted["training"]

    run("eval", "--model", "artifact", "--device", "cpu", "--rows", "dense", "--ppl-data", "dev", "--out", "eval")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    perplexity = {row["row"]: row["perplexity"] for row in result["rows"]}
    assert sorted(perplexity) == ["artifact", "dense"]
    assert all(p["all"]["windows"] == 3 and p["0-256"]["ppl"] > 1 for p in perplexity.values())
    assert all(row["tasks"] == {} for row in result["rows"])

    run("generate", "--model", "artifact", "--device", "cpu", "--prompt", "w1 w2 w3", "--max-new-tokens", "4",
        "--no-chat-template")
    generated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert generated["new_tokens"] == 4 and generated["kv_cache"]["allocated_bytes"] > 0
