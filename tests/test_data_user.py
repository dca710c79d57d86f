"""User corpora: files (text, JSONL, JSON, Parquet), datasets, chat templates, and the errors that name the file."""
import gzip
import json
import random

import pytest

from rtpurbo.data.user import RecordText, UserDataError, chat_renderer, dataset_input, file_input
from rtpurbo.testing import tiny_tokenizer
from rtpurbo.train.data import NotEnoughData, PrepareSettings, load_shards, prepare_shards, round_robin_documents

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"


def words(n, seed=0):
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(200)}" for _ in range(n))


@pytest.fixture
def tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture
def record_text(tokenizer):
    return RecordText(chat_renderer(tokenizer, "tiny"))


def texts(item):
    return [doc.text for doc in item.documents()]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_file_format_gives_its_records(tmp_path, record_text):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("plain w1 w2")
    (tmp_path / "b.py.gz").write_bytes(gzip.compress(b"def f(): return 1"))
    write_jsonl(tmp_path / "c.jsonl", [{"text": "w3 w4"}, {"content": "w5"},
                                       {"messages": [{"role": "user", "content": "w6"},
                                                     {"role": "assistant", "content": "w7"}]},
                                       {"conversations": [{"from": "human", "value": "w8"}]}])
    (tmp_path / "d.json").write_text(json.dumps([{"text": "w9"}]))
    pq.write_table(pa.table({"body": ["w10", "w11"], "text": ["x", "y"]}), tmp_path / "e.parquet")
    assert texts(file_input(str(tmp_path / "a.txt"), record_text)) == ["plain w1 w2"]
    assert texts(file_input(str(tmp_path / "b.py.gz"), record_text)) == ["def f(): return 1"]
    assert texts(file_input(str(tmp_path / "c.jsonl"), record_text)) == [
        "w3 w4", "w5", "<user> w6 </s> <assistant> w7 </s> ", "<user> w8 </s> "]
    assert texts(file_input(str(tmp_path / "d.json"), record_text)) == ["w9"]
    by_field = RecordText(record_text.render_chat, text_field="body")
    parquet = file_input(str(tmp_path / "e.parquet"), by_field)
    assert [doc.path for doc in parquet.documents()][1].endswith("e.parquet[row 1]")
    assert texts(parquet) == ["w10", "w11"]
    assert parquet.provenance["files"][0]["records"] == 2 and len(parquet.provenance["files"][0]["sha256"]) == 64


def test_json_lines_split_on_newlines_only(tmp_path, record_text):
    """JSON strings may hold U+2028 / U+2029 / U+0085 unescaped (json.dumps(ensure_ascii=False) of web text): they
    are not line ends of a JSON Lines file."""
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in ("a\u2028b", "c\u2029d\u0085e", "f")]
    (tmp_path / "web.jsonl").write_text("\n".join(lines) + "\r\n", encoding="utf-8")
    assert texts(file_input(str(tmp_path / "web.jsonl"), record_text)) == ["a\u2028b", "c\u2029d\u0085e", "f"]


def test_prepare_leaves_an_earlier_set_intact_when_it_fails(tmp_path, tokenizer, monkeypatch):
    import rtpurbo.train.data as data

    docs = [data.Document("fake", f"d{i}", words(300, seed=i)) for i in range(12)]
    settings = PrepareSettings(seq_len=64, sequences=20, synthetic_ratio=0.0, min_doc_chars=100, shard_bytes=700)
    prepare_shards(docs, tokenizer, tmp_path / "shards", settings)
    before = load_shards(tmp_path / "shards", tokenizer).sequences.clone()
    real = data.write_shards

    def interrupted(sequences, out_dir, shard_bytes):
        real(sequences[:3], out_dir, shard_bytes)  # part of the new set written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "write_shards", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(docs[::-1], tokenizer, tmp_path / "shards", settings)
    assert load_shards(tmp_path / "shards", tokenizer).sequences.equal(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no temporary directory left behind
    with pytest.raises(data.NotEnoughData):  # a run that fails early creates nothing
        prepare_shards(docs[:1], tokenizer, tmp_path / "new", settings)
    assert not (tmp_path / "new").exists()
    # a directory of the user's own files (e.g. the inputs) is never taken for the output
    from rtpurbo.files import NotAnEarlierOutput

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text(words(300))
    with pytest.raises(NotAnEarlierOutput, match="not an earlier output"):
        prepare_shards(docs, tokenizer, tmp_path / "corpus", settings)
    assert [p.name for p in (tmp_path / "corpus").iterdir()] == ["a.txt"]


def test_errors_name_the_file_and_line(tmp_path, record_text):
    (tmp_path / "empty.txt").write_text("  \n")
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "w1"}]).open("a").write("{oops\n")
    write_jsonl(tmp_path / "nofield.jsonl", [{"title": "w1"}])
    (tmp_path / "binary.txt").write_bytes(b"w1\x00w2")
    (tmp_path / "notutf8.txt").write_bytes(b"caf\xe9")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    cases = {"empty.txt": "empty", "bad.jsonl": "bad.jsonl:2: invalid JSON", "nofield.jsonl": "nofield.jsonl:1: none of",
             "binary.txt": "binary", "notutf8.txt": "not UTF-8", "broken.parquet": "unreadable Parquet"}
    for name, message in cases.items():
        with pytest.raises(UserDataError, match=message.replace(".", r"\.")):
            texts(file_input(str(tmp_path / name), record_text))
    with pytest.raises(UserDataError, match="no file matches"):
        file_input(str(tmp_path / "*.md"), record_text)
    with pytest.raises(UserDataError, match="no such file"):
        file_input(str(tmp_path / "missing.txt"), record_text)
    with pytest.raises(UserDataError, match="is a directory"):
        file_input(str(tmp_path), record_text)
    with pytest.raises(UserDataError, match="short.txt: empty, or no record reaches 50"):
        (tmp_path / "short.txt").write_text("w1 w2")
        texts(file_input(str(tmp_path / "short.txt"), record_text, min_chars=50))


def test_wildcards_skip_unusable_files_but_not_all_of_them(tmp_path, record_text):
    (tmp_path / "a.txt").write_text("w1 w2")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_bytes(b"\x00\x01")
    item = file_input(str(tmp_path / "*.txt"), record_text)
    assert texts(item) == ["w1 w2"]
    assert item.provenance["skipped"] == {"empty or shorter than 1 characters": 1, "binary or not UTF-8": 1}
    with pytest.raises(UserDataError, match=r"all 2 matching files are empty"):
        texts(file_input(str(tmp_path / "[bc].txt"), record_text))


def test_chat_records_need_a_chat_template(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "w1"}]}])
    plain = RecordText(chat_renderer(tiny_tokenizer(), "tiny-org/model"))
    with pytest.raises(UserDataError, match="chat.jsonl:1: chat messages, but the tokenizer of tiny-org/model has no"):
        texts(file_input(str(tmp_path / "chat.jsonl"), plain))


def test_datasets_from_disk_and_from_data_files(tmp_path, record_text, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["w1", "w2"]}),
                          "test": datasets.Dataset.from_dict({"text": ["w3"]})}).save_to_disk(tmp_path / "saved")
    assert texts(dataset_input(str(tmp_path / "saved"), record_text)) == ["w1", "w2"]
    item = dataset_input(f"{tmp_path / 'saved'}:test", record_text)
    assert texts(item) == ["w3"] and item.provenance["loader"] == "load_from_disk" and item.provenance["rows"] == 1
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "w4"}]}])
    assert texts(dataset_input(str(tmp_path / "chat.jsonl"), record_text)) == ["<user> w4 </s> "]
    assert (tmp_path / "hf" / "datasets").is_dir()  # the datasets cache follows HF_HOME
    (tmp_path / "book.txt").write_text("line w5\nline w6\n")
    assert texts(dataset_input(str(tmp_path / "book.txt"), record_text)) == ["line w5\nline w6\n"]
    with pytest.raises(UserDataError, match="has no split 'validation'"):
        dataset_input(f"{tmp_path / 'saved'}:validation", record_text)
    with pytest.raises(UserDataError, match="reserved"):
        dataset_input("someone/django-code", record_text)


def test_short_records_pack_with_a_synthetic_share_from_joined_haystacks(tmp_path, tokenizer, record_text):
    """Chat-sized records: no document is long enough to be a needle haystack alone, joined ones are."""
    write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": words(40, i)}]}
                                           for i in range(80)])
    (tmp_path / "notes.txt").write_text(words(600, 99))
    inputs = [file_input(str(tmp_path / name), record_text) for name in ("chats.jsonl", "notes.txt")]
    settings = PrepareSettings(seq_len=64, sequences=40, synthetic_ratio=0.25, min_doc_chars=1)
    documents = round_robin_documents([], "train", extra=[item.documents() for item in inputs])
    manifest = prepare_shards(documents, tokenizer, tmp_path / "shards", settings,
                              provenance={item.name: item.provenance for item in inputs})
    shards = load_shards(tmp_path / "shards", tokenizer)
    assert shards.sequences.shape == (40, 64) and manifest["synthetic"]["sequences"] == 10
    chats = manifest["sources"][f"files:{tmp_path / 'chats.jsonl'}"]
    assert chats["documents"] > 20 and chats["provenance"]["files"][0]["records"] == 80
    assert manifest["sources"][f"files:{tmp_path / 'notes.txt'}"]["documents"] == 1
    with pytest.raises(NotEnoughData, match=r"files:.*notes.txt: 1 documents"):
        prepare_shards(inputs[1].documents(), tokenizer, tmp_path / "few", PrepareSettings(
            seq_len=64, sequences=40, synthetic_ratio=0.0, min_doc_chars=1))
