"""Eval suite and report: row switching on one model, resume, data files, report files, CLI flags
(tiny random model and tokenizer; nothing downloaded or installed)."""
import argparse
import gzip
import json
from pathlib import Path

import pytest
import torch

from rtpurbo import io
from rtpurbo.cli_args import SettingsError
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.eval import suite
from rtpurbo.eval.commands import QUICK, _artifact_row, add_parsers, settings_from
from rtpurbo.eval.perplexity import perplexity
from rtpurbo.eval import report
from rtpurbo.eval.report import merge_runs, rebuild_report, summarize_row, write_report
from rtpurbo.eval.speed import measure_speed
from rtpurbo.data.task_data import TaskData, load_task_data, save_task_data, tokenizer_probe
from rtpurbo.data.tasks import TaskSample
from rtpurbo.eval.suite import Row, SuiteSettings, base_rows, run_suite
from rtpurbo.families import geometry
from rtpurbo.models import load_base
from rtpurbo.testing import save_tiny_checkpoint, tiny_model, tiny_tokenizer

LENGTHS = [48, 96]
TASK_NAMES = ["niah_number", "variable_tracking"]


def make_data(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    samples = []
    for length in LENGTHS:
        for task in TASK_NAMES:
            for i in range(n):
                prompt = torch.randint(3, 256, (length - 12,), generator=g).tolist()
                answer = torch.randint(3, 256, (4,), generator=g).tolist()
                samples.append(TaskSample(task, length, 1000 + i, (i + 0.5) / n, prompt, answer, "w1", ["w1"], "text",
                                          [(5, 9)]))
    windows = [torch.randint(3, 256, (160,), generator=g).tolist() for _ in range(2)]
    return TaskData(samples, windows, {"probe": tokenizer_probe(tiny_tokenizer()), "chat_template": False})


def settings(**overrides):
    values = dict(lengths=LENGTHS, samples=2, tasks=TASK_NAMES, ppl_windows=2, ppl_length=160, batch_size=2,
                  speed_length=40, speed_repeats=1, speed_warmup=0, speed_steps=4)
    values.update(overrides)
    return SuiteSettings(**values)


@pytest.fixture
def converted():
    model = tiny_model("llama", seed=5)
    layers, kv, q, _ = geometry(model.config)
    convert(model, HeadPlan.uniform(layers, kv, q, retrieval=True), SparseConfig(seqlen_threshold=0, window=16, sinks=2, top_p=0.9))
    return model


def rows_for(model):
    layers, kv, q, _ = geometry(model.config)
    split = HeadPlan(layers, kv, q, [[0], []], scores=[[0.9, 0.1], [0.2, 0.3]])
    return base_rows(["dense", "streaming", "split"], split, 0.9, (layers, kv, q))


def test_dense_row_is_the_base_model_and_rows_switch(converted):
    base = tiny_model("llama", seed=5)
    windows = make_data().windows
    dense, streaming, split = rows_for(converted)
    results = {}
    for row in (dense, streaming, split, dense):
        suite.configure(converted, row)
        results.setdefault(row.name, []).append(perplexity(converted, windows, progress=False).perplexity)
    want = perplexity(base, windows, progress=False).perplexity
    assert results["dense"][0] == pytest.approx(want, rel=1e-5) and results["dense"][1] == pytest.approx(want, rel=1e-5)
    assert converted.rtpurbo_sparse.top_p == 1.0
    assert results["streaming"][0] != pytest.approx(want, rel=1e-3)
    suite.configure(converted, split)
    assert converted.rtpurbo_sparse.top_p == 0.9 and converted.rtpurbo_plan.num_retrieval() == 1
    # a --plans row from a headwise_config keeps the file's own W and S; the next row gets the model's back
    suite.configure(converted, suite.Row("own", "split", split.plan, 0.9, window=8, sinks=1), window=16, sinks=2)
    assert (converted.rtpurbo_sparse.window, converted.rtpurbo_sparse.sinks) == (8, 1)
    suite.configure(converted, split, window=16, sinks=2)
    assert (converted.rtpurbo_sparse.window, converted.rtpurbo_sparse.sinks) == (16, 2)


def test_suite_writes_report_and_resumes(converted, tmp_path, monkeypatch):
    data, rows = make_data(), rows_for(converted)
    stored = run_suite(converted, tiny_tokenizer(), rows, data, settings(), tmp_path, None, progress=False)
    config = {"model": "tiny", "device": "cpu", "dtype": "float32", "chat_template": False}
    result = write_report(tmp_path, stored, config)
    for name in ("results.json", "results.md", "needle_heatmap.png", "head_plan_split.png", "paired_differences.png"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "head_plan_dense.png").exists()
    table = (tmp_path / "results.md").read_text()
    for row in ("dense", "streaming", "split"):
        assert f"| {row} |" in table
    assert "Tasks at 96 tokens" in table and "niah_number" in table and "0-1K" not in table
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in loaded["rows"]] == ["dense", "streaming", "split"]
    dense, streaming = loaded["rows"][0], loaded["rows"][1]
    assert streaming["kv_bytes_per_token"]["96"] < dense["kv_bytes_per_token"]["96"]
    exact = dense["tasks"]["niah_number"]["48"]["exact"]
    assert exact["ci"] == "wilson" and exact["n"] == 2 and exact["lo"] <= exact["mean"] <= exact["hi"]
    assert result["rows"][2]["speed"]["decode_ms_per_token"] > 0

    (tmp_path / "config.json").write_text(json.dumps(config))
    before = (tmp_path / "results.md").read_text()
    (tmp_path / "results.md").unlink()
    rebuild_report(tmp_path, ("dense", "streaming", "split"))
    assert (tmp_path / "results.md").read_text() == before
    repaired = rebuild_report(tmp_path, ("dense", "streaming", "split"), reference="streaming")["paired"]
    assert repaired["reference"] == "streaming" and set(repaired["rows"]) == {"dense", "split"}
    assert "Paired differences vs streaming" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="not a row"):
        rebuild_report(tmp_path, reference="stage2")
    rebuild_report(tmp_path, ("dense", "streaming", "split"), reference="dense")

    def no_rerun(*args, **kwargs):
        raise AssertionError("a stored unit was run again")

    monkeypatch.setattr(suite, "score_batch", no_rerun)
    monkeypatch.setattr(suite, "measure_speed", no_rerun)
    monkeypatch.setattr(suite, "run_perplexity", no_rerun)
    again = run_suite(converted, tiny_tokenizer(), rows, data, settings(), tmp_path, load_artifact=None, progress=False)
    assert again == stored


def test_report_of_one_sample_prints_no_nan_and_no_window_for_the_dense_row(converted, tmp_path):
    """One sample per task has no interval: the Markdown prints the mean alone (not '±nan' / '(+nan – +nan)') and
    results.json null; the dense row has no local heads, so its W and S are a dash, not the model's settings."""
    dense, _, split = rows_for(converted)
    stored = run_suite(converted, tiny_tokenizer(), [dense, split], make_data(n=1), settings(samples=1, speed_repeats=0),
                       tmp_path, None, progress=False)
    write_report(tmp_path, stored, {"model": "tiny", "device": "cpu", "dtype": "float32", "chat_template": False})
    table = (tmp_path / "results.md").read_text()
    assert "nan" not in table.lower()
    sparse = converted.rtpurbo_sparse
    assert "| dense | 4/4 | – | – | – |" in table and f"| split | 1/4 | {sparse.window} | {sparse.sinks} | 0.9 |" in table
    paired = json.loads((tmp_path / "results.json").read_text())["paired"]["rows"]["split"]["lengths"]["48"]["exact"]
    assert paired["half_width"] is None and paired["tasks"]["niah_number"]["lo"] is None


def test_a_row_cut_off_mid_run_still_reports(converted, tmp_path, monkeypatch):
    """A run killed after some units (e.g. a time limit) leaves a row the report reads: finished units only."""
    data, rows = make_data(), rows_for(converted)[:1]
    real, calls = suite.run_task_unit, []

    def dies_on_the_second_unit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "run_task_unit", dies_on_the_second_unit)
    with pytest.raises(KeyboardInterrupt):
        run_suite(converted, tiny_tokenizer(), rows, data, settings(speed_repeats=0), tmp_path, None, progress=False)
    stored = json.loads((tmp_path / "rows" / "dense.json").read_text())
    assert sum(k.startswith("task:") for k in stored["units"]) == 1
    summary = summarize_row(stored)
    assert summary["kind"] == "dense" and sum(len(v) for v in summary["tasks"].values()) == 1
    assert summary["kv_bytes_per_token"]


def test_runs_per_row_and_length_merge_into_one_report(converted, tmp_path):
    data, rows = make_data(), rows_for(converted)
    config = {"model": "tiny", "device": "cpu", "dtype": "float32", "chat_template": False}
    runs = []
    for row in rows[:2]:
        for length in LENGTHS:
            run = tmp_path / f"{row.name}-{length}"
            windows = 2 if length == LENGTHS[-1] else 0
            part = settings(lengths=[length], ppl_windows=windows, speed_repeats=0)
            part_data = TaskData(data.samples, data.windows[:windows], data.meta)
            suite.configure(converted, row)
            suite.evaluate_row(converted, tiny_tokenizer(), row, part_data, part, run, progress=False)
            (run / "config.json").write_text(json.dumps({**config, "settings": {"lengths": [length],
                                                                                  "ppl_windows": windows}}))
            runs.append(run)
    gz = runs[0] / "rows" / "dense.json"  # committed results keep rows gzipped: they merge as well
    (runs[0] / "rows" / "dense.json.gz").write_bytes(gzip.compress(gz.read_bytes()))
    gz.unlink()
    args = parse("--report-only", "--merge", *map(str, runs), "--out", str(tmp_path / "all"), "--json")
    args.handler(args)
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert [r["row"] for r in merged["rows"]] == ["dense", "streaming"]
    for row in merged["rows"]:
        assert sorted(row["tasks"]["niah_number"]) == [str(n) for n in LENGTHS] and row["perplexity"]
    stray = tmp_path / "other"
    converted.rtpurbo_sparse.window = 8  # the same row name computed differently must not merge
    suite.configure(converted, rows[0])
    suite.evaluate_row(converted, tiny_tokenizer(), rows[0], data, settings(ppl_windows=0, speed_repeats=0), stray,
                       progress=False)
    (stray / "config.json").write_text(json.dumps({**config, "settings": {"lengths": LENGTHS, "ppl_windows": 0}}))
    with pytest.raises(ValueError, match="computed differently"):
        merge_runs(tmp_path / "bad", [runs[0], stray])


def test_merged_rows_of_other_lengths_and_tasks_print_dashes_not_nan(converted, tmp_path):
    """Merged runs whose rows cover different lengths (so different KV-byte contexts) and different tasks: a cell a
    row has no value for is a dash, and a row lacking a task has no mean of tasks (a mean over other tasks would not
    compare), never 'nan'."""
    data, rows = make_data(), rows_for(converted)
    config = {"model": "tiny", "device": "cpu", "dtype": "float32", "chat_template": False}
    runs = []
    for row, length, tasks in ((rows[0], LENGTHS[0], TASK_NAMES), (rows[2], LENGTHS[1], TASK_NAMES[:1])):
        run = tmp_path / row.name
        suite.configure(converted, row)
        suite.evaluate_row(converted, tiny_tokenizer(), row, data, settings(lengths=[length], tasks=tasks,
                                                                           ppl_windows=0, speed_repeats=0),
                           run, progress=False)
        (run / "config.json").write_text(json.dumps({**config, "settings": {"lengths": [length], "ppl_windows": 0}}))
        runs.append(run)
    args = parse("--report-only", "--merge", *map(str, runs), "--out", str(tmp_path / "all"))
    args.handler(args)
    table = (tmp_path / "all" / "results.md").read_text()
    assert "nan" not in table.lower()
    assert f"KV B/token @{LENGTHS[0]}" in table and f"KV B/token @{LENGTHS[1]}" in table
    means = [line for line in table.splitlines() if line.startswith("| **mean of tasks**")]
    assert means and all(line.count("–") >= 1 for line in means)


def test_runs_over_blocks_of_samples_merge_by_seed(converted, tmp_path):
    data, dense = make_data(n=4), rows_for(converted)[0]
    config = {"model": "tiny", "device": "cpu", "dtype": "float32", "chat_template": False,
              "settings": {"lengths": LENGTHS, "ppl_windows": 0}}
    def run(name, samples):  # the dense row over some of the samples of every (task, length)
        part = TaskData(samples, [], data.meta)
        suite.configure(converted, dense)
        suite.evaluate_row(converted, tiny_tokenizer(), dense, part, settings(samples=len(samples) // 4, ppl_windows=0,
                                                                                  speed_repeats=0), tmp_path / name,
                           progress=False)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return tmp_path / name
    whole = run("whole", data.samples)
    first = run("first", [s for s in data.samples if s.seed < 1002])
    later = run("later", [s for s in data.samples if s.seed >= 1002])
    merge_runs(tmp_path / "merged", [first, later])
    merged = report.stored_rows(tmp_path / "merged")["dense"]["units"]
    want = report.stored_rows(whole)["dense"]["units"]
    for key, unit in want.items():
        if "samples" in unit:
            assert merged[key]["samples"] == unit["samples"] and len(unit["samples"]) == 4
    row = json.loads((later / "rows" / "dense.json").read_text())
    unit = next(u for u in row["units"].values() if "samples" in u)
    unit["samples"][0]["exact"] = 1 - unit["samples"][0]["exact"]  # the same seed, scored otherwise
    (later / "rows" / "dense.json").write_text(json.dumps(row))
    with pytest.raises(ValueError, match="scored differently"):
        merge_runs(tmp_path / "bad", [whole, later])


def test_changed_row_identity_starts_over(converted, tmp_path):
    data, rows = make_data(), rows_for(converted)[:1]
    run_suite(converted, tiny_tokenizer(), rows, data, settings(ppl_windows=0), tmp_path, None, progress=False)
    store = suite.RowStore(tmp_path, "dense", {"kind": "something else"})
    assert store.data["units"] == {}


def test_rows_of_another_base_model_are_not_reused(converted, tmp_path):
    """Same geometry and tokenizer, other weights: a resumed run scores the dense row again."""
    data, rows = make_data(), rows_for(converted)[:1]
    converted.rtpurbo_fingerprint = "weights-a"  # as load_base / io.load record the base weights' content hash
    first = run_suite(converted, tiny_tokenizer(), rows, data, settings(ppl_windows=0, speed_repeats=0), tmp_path,
                      None, progress=False)[0]
    other = tiny_model("llama", seed=6)
    layers, kv, q, _ = geometry(other.config)
    convert(other, HeadPlan.uniform(layers, kv, q, retrieval=True), SparseConfig(seqlen_threshold=0, window=16, sinks=2,
                                                                               top_p=0.9))
    other.rtpurbo_fingerprint = "weights-b"
    again = run_suite(other, tiny_tokenizer(), rows, data, settings(ppl_windows=0, speed_repeats=0), tmp_path, None,
                      progress=False)[0]
    assert again["identity"]["base_model"] == "weights-b" and first["identity"]["base_model"] == "weights-a"
    logprobs = [[s["tf_logprob"] for u in row["units"].values() for s in u.get("samples", [])] for row in (first, again)]
    assert logprobs[0] != logprobs[1]  # scored again, by the other weights


def test_artifact_row_is_loaded_and_keeps_its_own_plan(tmp_path):
    model, tokenizer = load_base(str(save_tiny_checkpoint("llama", tmp_path / "base", seed=5)))
    layers, kv, q, _ = geometry(model.config)
    convert(model, HeadPlan(layers, kv, q, [[1], [0]]), SparseConfig(seqlen_threshold=0, window=16, sinks=2, top_p=0.8))
    artifact = io.save(model, tmp_path / "stage1")
    base, _ = load_base(str(tmp_path / "base"))
    convert(base, HeadPlan.uniform(layers, kv, q, retrieval=True), SparseConfig(window=16, sinks=2))
    rows = [Row("stage1", "artifact", artifact=artifact)]
    stored = run_suite(base, tokenizer, rows, make_data(), settings(speed_repeats=0), tmp_path / "out",
                       lambda path: io.load(path), progress=False)
    assert stored[0]["plan"]["retrieval"] == [[1], [0]] and stored[0]["sparse"]["top_p"] == 0.8
    assert stored[0]["identity"]["artifact_files"] == io.read_config(artifact)["files"]
    assert base.rtpurbo_plan.num_retrieval() == layers * kv  # the shared base model was not touched
    at_095 = run_suite(base, tokenizer, [Row("p95", "artifact", top_p=0.95, artifact=artifact)], make_data(),
                       settings(speed_repeats=0), tmp_path / "out", lambda path: io.load(path), progress=False)
    assert at_095[0]["sparse"]["top_p"] == 0.95 and at_095[0]["identity"]["sparse"]["top_p"] == 0.95
    sparse_prefill = {"retrieval_prefill": "sparse", "prefill_top_p": 0.5, "prefill_band": 16, "prefill_scoring": "mass"}
    rows = [Row("sp", "artifact", artifact=artifact, settings=sparse_prefill)]
    sp = run_suite(base, tokenizer, rows, make_data(), settings(speed_repeats=0), tmp_path / "out",
                   lambda path: io.load(path), progress=False)[0]
    assert {k: sp["identity"]["sparse"][k] for k in sparse_prefill} == sparse_prefill
    fractions = [u["prefill_block_fraction"] for k, u in sp["units"].items() if k.startswith("task:")]
    assert fractions and all(f is not None and 0 < f <= 1 for f in fractions)
    assert 0 < sp["units"]["perplexity"]["prefill_block_fraction"] <= 1  # the cache-less perplexity forward too
    assert "prefill_block_fraction" not in at_095[0]["units"]["perplexity"]  # dense retrieval prefill: nothing kept
    summary = summarize_row(sp)
    table = "\n".join(report._rows_table([summary]))
    assert "sparse (top-p 0.5, mass scores; " in table and "in the perplexity windows" in table
    wider = run_suite(base, tokenizer, [Row("w24", "artifact", artifact=artifact, settings={"window": 24})], make_data(),
                      settings(speed_repeats=0), tmp_path / "out", lambda path: io.load(path), progress=False)[0]
    assert wider["identity"]["sparse"]["window"] == 24  # another W at evaluation, the same trained weights
    assert wider["units"]["perplexity"]["windows"] != stored[0]["units"]["perplexity"]["windows"]


def test_artifact_rows_parse_optional_settings():
    assert _artifact_row("s2=runs/a") == ("s2", Path("runs/a"), {})
    assert _artifact_row("s2=runs/a@0.95") == ("s2", Path("runs/a"), {"top_p": 0.95})
    assert _artifact_row("sp=runs/a@retrieval_prefill=sparse, prefill_top_p=0.9,prefill_max_blocks=8") == (
        "sp", Path("runs/a"), {"retrieval_prefill": "sparse", "prefill_top_p": 0.9, "prefill_max_blocks": 8})
    assert _artifact_row("sp=runs/a@retrieval_prefill=sparse,prefill_scoring=mass")[2]["prefill_scoring"] == "mass"
    assert _artifact_row("w=runs/a@window=1536,sinks=8")[2] == {"window": 1536, "sinks": 8}  # another W, no retraining
    for bad in ("runs/a", "dense=runs/a", "s2=runs/a@1.5", "s2=runs/a@high", "s2=", "s2=runs/a@window=0",
                "s2=runs/a@head_dim=4", "s2=runs/a@retrieval_prefill=fast", "s2=runs/a@prefill_band=-1", "s2=runs/a@prefill_scoring=max"):
        with pytest.raises(SettingsError, match="--artifacts"):
            _artifact_row(bad)
    assert parse("--rows").rows == [] and parse().rows == ["dense", "streaming", "split"]


def test_data_round_trip_and_tokenizer_check(tmp_path):
    data = make_data()
    save_task_data(data, tmp_path / "d.npz")
    loaded = load_task_data(tmp_path / "d.npz", tiny_tokenizer())
    assert loaded.samples == data.samples and loaded.windows == data.windows
    assert loaded.group("niah_number", 96, 2) == [s for s in data.samples if s.task == "niah_number" and s.length == 96]
    with pytest.raises(ValueError, match="holds 2 samples"):
        loaded.group("niah_number", 96, 3)
    with pytest.raises(ValueError, match="different tokenizer"):
        load_task_data(tmp_path / "d.npz", tiny_tokenizer(vocab_size=300))


def test_speed_reports_medians(converted):
    timing = measure_speed(converted, length=40, decode_steps=4, repeats=2, warmup=1)
    assert timing["prefill_tokens"] == 36 and timing["prefill_ms"] > 0 and timing["decode_ms_per_token"] > 0


def test_paired_speed_takes_turns_and_reports_paired_ratios(converted, monkeypatch):
    """measure_speed_paired: prefills in A B / B A rounds, decode steps alternating, and the speedups as medians of
    the paired ratios, checked against a fake clock that makes the second row exactly twice as fast."""
    from rtpurbo.eval import speed

    other = tiny_model("llama", seed=5)
    layers, kv, q, _ = geometry(other.config)
    convert(other, HeadPlan.uniform(layers, kv, q, retrieval=False), SparseConfig(window=16, sinks=2))
    calls = []

    def fake_timer(device):
        def timed(fn):
            fn()
            model = "first" if calls_model[0] is converted else "second"
            calls.append(model)
            return 10.0 * (1 + len(calls)) / (2 if model == "second" else 1)  # drift, and the second row 2x faster
        return timed

    calls_model = [None]
    real_prefill, real_step = speed.prefill, speed.decode_step
    monkeypatch.setattr(speed, "prefill", lambda model, *a: (calls_model.__setitem__(0, model), real_prefill(model, *a)))
    monkeypatch.setattr(speed, "decode_step", lambda model, *a: (calls_model.__setitem__(0, model), real_step(model, *a)))
    monkeypatch.setattr(speed, "_timer", fake_timer)
    timing = speed.measure_speed_paired({"first": converted, "second": other}, length=40, decode_steps=4, rounds=2)
    assert calls == ["first", "second", "second", "first"] + ["first", "second", "second", "first"] * 2
    paired = timing["paired"]
    assert paired["decode"]["pairs"] == 4 and paired["prefill"]["pairs"] == 2
    assert 1.5 < paired["decode"]["lo"] <= paired["decode"]["median"] <= paired["decode"]["hi"] < 2.6
    assert timing["first"]["prefill_tokens"] == 36 and timing["second"]["decode_ms_per_token"] > 0
    with pytest.raises(ValueError, match="two rows"):
        speed.measure_speed_paired({"a": converted}, length=40)


def test_bucket_edges():
    assert suite.bucket_edges(8192) == (0, 1024, 2048, 4096, 8192)
    assert suite.bucket_edges(4096) == (0, 1024, 2048, 4096)
    assert suite.bucket_edges(6000) == (0, 1024, 2048, 4096, 6000)
    assert suite.bucket_edges(500) == (0, 500)


def parse(*argv):
    parser = argparse.ArgumentParser(prog="rtpurbo")
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_cli_flags_and_modes():
    args = parse("--quick", "--out", "x")
    quick = settings_from(args, max_positions=8192, device="cpu")
    assert quick.lengths == QUICK["lengths"] and quick.samples == QUICK["samples"] and quick.batch_size == 1
    full = settings_from(parse("--samples", "100"), max_positions=8192, device="cuda")
    assert full.lengths == [1024, 2048, 4096, 8192] and full.ppl_length == 8192 and full.batch_size == 8
    chosen = settings_from(parse("--lengths", "4096", "2048", "--tasks", "doc_qa"), 8192, "cpu")
    assert chosen.lengths == [2048, 4096] and chosen.tasks == ["doc_qa"] and chosen.speed_length == 4096
    with pytest.raises(SettingsError, match="exceed"):
        settings_from(parse("--lengths", "16384"), 8192, "cpu")
    assert callable(parse().handler)


def test_cli_defaults_follow_the_data_file():
    held = settings_from(parse(), max_positions=4096, device="cpu", data=make_data(n=3))
    assert held.lengths == LENGTHS and held.tasks == TASK_NAMES and held.samples == 3
    narrowed = settings_from(parse("--tasks", "niah_number", "--samples", "1"), 4096, "cpu", make_data(n=3))
    assert narrowed.tasks == ["niah_number"] and narrowed.samples == 1


def test_named_plan_rows_keep_their_own_window_and_pair_with_dense(converted, tmp_path):
    layers, kv, q, _ = geometry(converted.config)
    plan = HeadPlan(layers, kv, q, [[0], []])
    rows = [Row("dense", "dense", HeadPlan.uniform(layers, kv, q, retrieval=True), 1.0),
            Row("wide", "split", plan, 1.0, window=32), Row("narrow", "split", plan, 1.0)]
    stored = run_suite(converted, tiny_tokenizer(), rows, make_data(), settings(speed_repeats=0), tmp_path, None,
                       progress=False)
    assert [s["sparse"]["window"] for s in stored] == [16, 32, 16]
    assert stored[1]["identity"]["sparse"]["window"] == 32
    result = write_report(tmp_path, stored, {"model": "tiny", "device": "cpu", "dtype": "float32"})
    paired = result["paired"]["rows"]
    assert set(paired) == {"wide", "narrow"} and paired["wide"]["perplexity"]["windows"] == 2
    assert paired["narrow"]["lengths"]["96"]["tf_accuracy"]["samples_per_task"] == 2
    assert "## Paired differences vs dense" in (tmp_path / "results.md").read_text()


def test_cli_plan_rows_split_and_workers():
    args = parse("--plans", "knockout=k.json", "chosen=c/headwise_config.json", "--split", "tune", "--workers", "4")
    assert args.plans == ["knockout=k.json", "chosen=c/headwise_config.json"]
    resolved = settings_from(args, 8192, "cpu")
    assert resolved.split == "tune" and resolved.workers == 4
    assert parse().split == "eval" and parse().plans == []


def test_stored_row_reads_plain_and_committed_rows_and_names_what_is_missing(tmp_path):
    from rtpurbo.eval.report import stored_row

    (tmp_path / "run" / "rows").mkdir(parents=True)
    (tmp_path / "run" / "rows" / "a.json").write_text(json.dumps({"row": "a", "units": {}}))
    (tmp_path / "run" / "rows" / "b.json.gz").write_bytes(gzip.compress(json.dumps({"row": "b", "units": {}}).encode()))
    assert stored_row(tmp_path / "run", "a") == (str(tmp_path / "run"), {"row": "a", "units": {}})
    assert stored_row(tmp_path / "run", "b")[1]["row"] == "b"
    with pytest.raises(KeyError, match=r"no row 'c' \(it holds \['a', 'b'\]\)"):
        stored_row(tmp_path / "run", "c")


def test_speed_times_the_model_as_it_runs_and_tasks_select_at_every_length(tmp_path, monkeypatch):
    """The task units run with seqlen_threshold 0 (selection at every length); the speed unit at the model's own
    threshold, recorded in the unit; a stored speed unit measured at another threshold is measured again."""
    model = tiny_model("llama", seed=5)
    layers, kv, q, _ = geometry(model.config)
    convert(model, HeadPlan.uniform(layers, kv, q, retrieval=True),
            SparseConfig(seqlen_threshold=4096, window=16, sinks=2, top_p=0.9))
    seen = {"speed": [], "tasks": []}
    measure_speed, score_batch = suite.measure_speed, suite.score_batch

    def timed(model, *args, **kwargs):
        seen["speed"].append(model.rtpurbo_sparse.seqlen_threshold)
        return measure_speed(model, *args, **kwargs)

    def scored(model, *args, **kwargs):
        seen["tasks"].append(model.rtpurbo_sparse.seqlen_threshold)
        return score_batch(model, *args, **kwargs)

    monkeypatch.setattr(suite, "measure_speed", timed)
    monkeypatch.setattr(suite, "score_batch", scored)
    split = rows_for(model)[2]
    stored = run_suite(model, tiny_tokenizer(), [split], make_data(), settings(ppl_windows=0), tmp_path, None,
                       progress=False)
    assert seen["speed"] == [4096] and set(seen["tasks"]) == {0}
    assert stored[0]["units"]["speed"]["seqlen_threshold"] == 4096
    assert model.rtpurbo_sparse.seqlen_threshold == 0  # left as the task units run
    model.rtpurbo_sparse.seqlen_threshold = 8192  # another deployed threshold: the stored speed does not stand in
    run_suite(model, tiny_tokenizer(), [split], make_data(), settings(ppl_windows=0), tmp_path, None, progress=False)
    assert seen["speed"] == [4096, 8192]
