"""Compare two head rankings (e.g. copy score vs knockout): rank correlation, overlap of the
heads each keeps at several ratios, a scatter plot, and each criterion's plan.

    rtpurbo plan compare --scores copy/head_scores.json knockout/head_scores.json --out DIR

Writes ``compare.json``, ``compare.md``, ``scores_scatter.png`` and, at ``--ratio``, each
criterion's ``plan_<name>.json`` + ``.png`` (ready for ``rtpurbo eval --plans NAME=...``), as one
directory: an earlier comparison in DIR is replaced only once the new one is complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..config import HeadPlan, PlanMismatch, dumps
from ..files import written_whole
from ..profile.plot import plot_plan
from .plot import scores_scatter

COMPARE_MARKER = "compare.json"  # what marks a directory as an earlier comparison


def read_scores(path: str | Path, score: str | None = None) -> dict[str, Any]:
    """``{"ranking", "num_q_heads", "criterion"}`` from a profile's ``head_scores.json``, a
    ``head_plan.json`` with scores, or an artifact (directory or shipped adapter name) whose plan
    has scores. A plan's criterion is knockout if its description says so, else copy.
    ``score``: rank by one of a head_scores.json's KV-head scores instead (e.g. ``answer_kl``)."""
    artifact = io.artifact_path(path)
    if artifact is not None:
        data = io.read_config(artifact)["plan"]
    else:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read head scores from {path}: {err}") from err
    if score is not None:
        found = data.get("kv_head_scores", {})
        if score not in found:
            raise ValueError(f"{path} has no KV-head score {score!r}; it has {sorted(found) or 'none'}")
        return {"criterion": f"{data.get('criterion', 'copy')}:{score}", "ranking": found[score],
                "num_q_heads": data["num_q_heads"]}
    if "ranking" in data and "num_q_heads" in data:  # head_scores.json
        return {"criterion": data.get("criterion", "copy"), "ranking": data["ranking"],
                "num_q_heads": data["num_q_heads"]}
    if data.get("scores") is not None and "num_q_heads" in data:  # a head plan chosen from scores
        criterion = "knockout" if "knockout" in data.get("criterion", "") else "copy"
        return {"criterion": criterion, "ranking": data["scores"], "num_q_heads": data["num_q_heads"]}
    raise ValueError(f"{path} holds no head scores (a head_scores.json, or a plan or artifact with scores)")


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (Pearson on mean-tie ranks)."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _heads(plan: HeadPlan) -> set[str]:
    return {f"L{layer}h{h}" for layer, heads in enumerate(plan.retrieval) for h in heads}


def compare_scores(a: dict[str, Any], b: dict[str, Any], ratios: list[float], names: tuple[str, str]
                   ) -> dict[str, Any]:
    """Rank correlation of two rankings and, per ratio, the overlap of the heads their plans keep."""
    if np.shape(a["ranking"]) != np.shape(b["ranking"]):
        raise ValueError(f"rankings of different models: {np.shape(a['ranking'])} vs {np.shape(b['ranking'])}")
    flat_a, flat_b = np.ravel(a["ranking"]).tolist(), np.ravel(b["ranking"]).tolist()
    by_ratio = {}
    for ratio in ratios:
        plan_a = HeadPlan.from_scores(a["ranking"], a["num_q_heads"], ratio)
        plan_b = HeadPlan.from_scores(b["ranking"], b["num_q_heads"], ratio)
        ha, hb = _heads(plan_a), _heads(plan_b)
        by_ratio[f"{ratio:g}"] = {"kept": len(ha), "both": len(ha & hb), "jaccard": len(ha & hb) / len(ha | hb),
                                  "only": {names[0]: sorted(ha - hb), names[1]: sorted(hb - ha)}}
    return {"names": list(names), "criteria": [a["criterion"], b["criterion"]], "heads": len(flat_a),
            "spearman": spearman(flat_a, flat_b), "ratios": by_ratio}


def write_comparison(out: Path, a: dict[str, Any], b: dict[str, Any], ratios: list[float], ratio: float,
                     names: tuple[str, str] | None = None) -> dict[str, Any]:
    """compare.json / .md, the scatter plot and both plans at ``ratio`` in ``out``, written whole
    (:func:`rtpurbo.files.written_whole`): a failed or interrupted write leaves an earlier ``out`` as it was."""
    names = names or (a["criterion"], b["criterion"])
    if names[0] == names[1]:
        raise PlanMismatch(f"both rankings are named {names[0]!r}; give them two names (--names A B)")
    result = compare_scores(a, b, sorted(set(ratios) | {ratio}), names)
    with written_whole(out, COMPARE_MARKER) as tmp:
        _write_files(tmp, a, b, ratio, names, result)
    return result


def _write_files(out: Path, a: dict[str, Any], b: dict[str, Any], ratio: float, names: tuple[str, str],
                 result: dict[str, Any]) -> None:
    """The files of :func:`write_comparison` (``result`` is its :func:`compare_scores`) into the directory ``out``."""
    plans = {}
    for name, scores in zip(names, (a, b)):
        plan = HeadPlan.from_scores(scores["ranking"], scores["num_q_heads"], ratio, criterion=f"{name} ranking")
        (out / f"plan_{name}.json").write_text(dumps(plan.to_dict()))
        plot_plan(plan, out / f"plan_{name}.png", score_label=f"{name} score")
        plans[name] = plan
    kept = [(h in plans[names[0]].retrieval[layer], h in plans[names[1]].retrieval[layer])
            for layer in range(plans[names[0]].num_layers) for h in range(plans[names[0]].num_kv_heads)]
    scores_scatter(names, np.ravel(a["ranking"]).tolist(), np.ravel(b["ranking"]).tolist(), kept,
                   out / "scores_scatter.png", f"Spearman ρ = {result['spearman']:.2f}; kept at {100 * ratio:g}%")
    (out / COMPARE_MARKER).write_text(dumps(result))
    (out / "compare.md").write_text(_markdown(names, result))


def _markdown(names: tuple[str, str], result: dict[str, Any]) -> str:
    """compare.md: the rank correlation and the overlap table of :func:`compare_scores`' ``result``."""
    lines = [f"# Head rankings: {names[0]} vs {names[1]}", "",
             f"Spearman rank correlation over {result['heads']} KV heads: {result['spearman']:.3f}", "",
             "| ratio | kept | by both | Jaccard | only " + names[0] + " | only " + names[1] + " |",
             "|---|---|---|---|---|---|"]
    for key, row in result["ratios"].items():
        only = [", ".join(row["only"][name]) or "–" for name in names]
        lines.append(f"| {float(key):.3g} | {row['kept']} | {row['both']} | {row['jaccard']:.2f} | {only[0]} | "
                     f"{only[1]} |")
    return "\n".join(lines) + "\n"
