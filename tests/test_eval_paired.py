"""Paired differences vs the dense row: means, stratified bootstrap intervals, sample projection, perplexity."""
import json
import math

import numpy as np
import pytest

from rtpurbo.eval.paired import markdown, paired_differences
from rtpurbo.stats import task_average


def stored(name, scores, ppl_nll=None):
    """A stored row: scores[(task, length)] = list of (exact, partial, tf_accuracy) per seed."""
    units = {}
    for (task, length), rows in scores.items():
        units[f"task:{task}@{length}"] = {"samples": [
            {"seed": seed, "exact": e, "partial": p, "tf_accuracy": t} for seed, (e, p, t) in enumerate(rows)]}
    if ppl_nll is not None:
        units["perplexity"] = {"digest": "w", "windows": [{"all": [nll, 100]} for nll in ppl_nll]}
    return {"row": name, "units": units}


def test_task_average_of_paired_differences():
    rng = np.random.default_rng(0)
    dense_a, dense_b = rng.integers(0, 2, 200), rng.random(200)
    dense = stored("dense", {("a", 4096): [(x, x, x) for x in dense_a], ("b", 4096): [(0, x, x) for x in dense_b]},
                   ppl_nll=[200.0, 210.0, 190.0])
    worse = stored("split", {("a", 4096): [(x, x, x) for x in np.where(np.arange(200) < 20, 0, dense_a)],
                             ("b", 4096): [(0, x - 0.01, x) for x in dense_b]},
                   ppl_nll=[202.0, 212.1, 191.9])
    result = paired_differences([dense, worse])
    partial = result["rows"]["split"]["lengths"]["4096"]["partial"]
    lost_a = -100 * np.mean(dense_a[:20] == 1) * 20 / 200
    assert partial["tasks"]["a"]["mean"] == pytest.approx(lost_a)
    assert partial["tasks"]["b"]["mean"] == pytest.approx(-1.0)
    assert partial["tasks"]["b"]["lo"] == pytest.approx(-1.0) and partial["tasks"]["b"]["hi"] == pytest.approx(-1.0)
    assert partial["mean"] == pytest.approx((lost_a - 1.0) / 2)
    assert partial["lo"] < partial["mean"] < partial["hi"] and partial["half_width"] > 0
    assert partial["samples_per_task"] == 200 and partial["tasks_averaged"] == 2
    # the projection: quarter the half-width -> 16x the samples (rounded up to tens)
    quarter = task_average({"a": np.array([0.0, -100.0] * 50)}, target=1.0)
    assert quarter["samples_for_target"] == 10 * math.ceil(100 * quarter["half_width"] ** 2 / 10)
    ppl = result["rows"]["split"]["perplexity"]
    assert ppl["percent"] == pytest.approx(100 * math.expm1(6.0 / 300)) and ppl["lo"] <= ppl["percent"] <= ppl["hi"]
    text = "\n".join(markdown(result))
    assert "| split | 4096 | 2 | 200 |" in text and "### split − dense at 4096 tokens, per task" in text


def test_identical_rows_differ_by_exactly_zero_and_unmatched_samples_are_left_out():
    scores = {("a", 2048): [(1, 1, 0.5), (0, 0.5, 0.25), (1, 1, 1.0)]}
    dense, same = stored("dense", scores), stored("copy", scores)
    same["units"]["task:a@2048"]["samples"].append({"seed": 99, "exact": 1, "partial": 1, "tf_accuracy": 1})
    result = paired_differences([dense, same])
    for score in ("exact", "partial", "tf_accuracy"):
        cell = result["rows"]["copy"]["lengths"]["2048"][score]
        assert (cell["mean"], cell["lo"], cell["hi"], cell["samples_per_task"]) == (0.0, 0.0, 0.0, 3)
    assert result["rows"]["copy"]["perplexity"] is None
    assert paired_differences([same]) == {}  # no reference row: nothing to pair with
    single = task_average({"a": np.array([-5.0]), "b": np.array([1.0, 2.0])})
    assert single["mean"] == pytest.approx(-1.75) and math.isnan(single["half_width"])  # one sample: no spread
    assert single["samples_for_target"] is None and math.isnan(single["tasks"]["a"]["lo"])


def test_identical_pairs_claim_no_interval_and_project_no_samples():
    scores = {("a", 2048): [(1, 1, 0.5), (0, 0.5, 0.25), (1, 1, 1.0)]}
    result = paired_differences([stored("dense", scores), stored("copy", scores)])
    assert result["rows"]["copy"]["lengths"]["2048"]["partial"]["samples_for_target"] is None
    text = "\n".join(markdown(result))
    assert "| copy | 2048 | 1 | 3 | +0.00 (no spread) |" in text and "±0.00" not in text


def test_samples_of_other_prompts_are_not_paired():
    """Rows scored on other token ids (another chat template, re-encoded data) share seeds, not prompts."""
    scores = {("a", 2048): [(1, 1, 0.5), (0, 0.5, 0.25), (1, 1, 1.0)]}
    dense, other = stored("dense", scores), stored("other", {("a", 2048): [(0, 0, 0.0)] * 3})
    for row, ids in ((dense, "p"), (other, "p")):
        for sample in row["units"]["task:a@2048"]["samples"]:
            sample["ids"] = ids + str(sample["seed"])
    other["units"]["task:a@2048"]["samples"][0]["ids"] = "changed"
    result = paired_differences([dense, other])
    exact = result["rows"]["other"]["lengths"]["2048"]["exact"]
    assert exact["samples_per_task"] == 2 and exact["mean"] == pytest.approx(-50.0)  # seeds 1, 2 only
    assert result["rows"]["other"]["unpaired_samples"] == 1
    assert "Not paired (the same seed, scored on other token ids" in "\n".join(markdown(result))
    # units of other data, stored before samples carried their ids: told apart by the units' digests, where the
    # units hold the same seeds (units of more samples have other digests on the same data)
    for row, unit_digest in ((dense, "x"), (other, "y")):
        row["units"]["task:a@2048"]["digest"] = unit_digest
        for sample in row["units"]["task:a@2048"]["samples"]:
            del sample["ids"]
    assert paired_differences([dense, other])["rows"]["other"]["lengths"] == {}
    other["units"]["task:a@2048"]["samples"].pop()
    assert paired_differences([dense, other])["rows"]["other"]["lengths"]["2048"]["exact"]["samples_per_task"] == 2


def test_results_json_holds_null_where_a_number_is_undefined():
    from rtpurbo.config import dumps
    from rtpurbo.eval.scoring import bootstrap

    assert all(math.isnan(x) for x in bootstrap([[3.0]], np.mean))  # one value: no interval
    assert json.loads(dumps({"lo": math.nan, "rows": [{"hi": math.inf}, 1.5]})) == {"lo": None, "rows": [{"hi": None},
                                                                                                    1.5]}


def test_comparisons_are_written_as_json_tables_and_plots(tmp_path):
    from rtpurbo.eval.paired_plot import write_comparisons

    scores = {("a", 2048): [(1, 1, 0.5), (0, 0.5, 0.25), (1, 1, 1.0)], ("b", 2048): [(0, 0, 0.0), (1, 1, 1.0)]}
    other = {key: [(1 - e, p, t) for e, p, t in rows] for key, rows in scores.items()}
    comparisons = {"vs_dense": paired_differences([stored("dense", scores), stored("split", other)]),
                   "empty": {}}
    lines = write_comparisons(comparisons, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "paired.json").read_text()) == json.loads(json.dumps(comparisons))
    text = (tmp_path / "out" / "paired.md").read_text()
    assert text == "\n".join(lines) and "<!-- vs_dense -->" in text and "| split | 2048 | 2 | 2 | -16.67 ±83.33 |" in text
    assert (tmp_path / "out" / "paired_vs_dense.png").stat().st_size > 1000
    assert not (tmp_path / "out" / "paired_empty.png").exists()  # nothing to draw
