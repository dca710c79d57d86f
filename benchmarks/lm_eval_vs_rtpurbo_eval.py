"""lm-evaluation-harness next to ``rtpurbo eval`` on the same items, item by item.

    python3 benchmarks/lm_eval_vs_rtpurbo_eval.py LM_EVAL_OUTPUT_DIR RTPURBO_EVAL_OUT_DIR

LM_EVAL_OUTPUT_DIR: ``lm_eval --output_path`` of a run with ``--log_samples`` on the task of
``rtpurbo lm-eval-task``; RTPURBO_EVAL_OUT_DIR: ``rtpurbo eval --data TASK_DIR/eval_data.npz --out``.
Compares the items ``rtpurbo eval`` has finished. Prints one JSON line (means, agreement counts), then a
Markdown row per item: task | seed | exact lm_eval / rtpurbo | partial lm_eval / rtpurbo.
"""
import json
import sys
from pathlib import Path

from rtpurbo.export.lm_eval_task import first_line_cut


def compare(lm_dir: Path, eval_dir: Path) -> list[tuple]:
    """(task, seed, exact lm_eval, exact rtpurbo, partial lm_eval, partial rtpurbo, same text) per item."""
    logged = [json.loads(line) for line in next(lm_dir.rglob("samples_rtpurbo_tasks_*.jsonl")).open()]
    harness = {(e["doc"]["task"], e["doc"]["length"], e["doc"]["seed"]): e for e in logged}
    units = json.loads(next((eval_dir / "rows").glob("*.json")).read_text())["units"]
    rows = []
    for key, unit in units.items():
        if not key.startswith("task:"):
            continue
        task, length = key[len("task:"):].split("@")
        for sample in unit["samples"]:
            entry = harness[(task, int(length), sample["seed"])]
            same = first_line_cut(entry["resps"][0][0]).strip() == sample["prediction"].strip()
            rows.append((task, sample["seed"], entry["exact"], sample["exact"], entry["partial"], sample["partial"],
                         same))
    return rows


def main() -> None:
    rows = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    n = len(rows)
    mean = lambda i: round(sum(r[i] for r in rows) / n, 4)  # noqa: E731
    print(json.dumps({"items": n, "lm_eval_exact": mean(2), "rtpurbo_exact": mean(3), "lm_eval_partial": mean(4),
                      "rtpurbo_partial": mean(5), "items_same_text": sum(r[6] for r in rows),
                      "items_same_exact": sum(r[2] == r[3] for r in rows),
                      "items_same_partial": sum(abs(r[4] - r[5]) < 1e-9 for r in rows)}))
    for task, seed, lm_exact, rt_exact, lm_partial, rt_partial, _ in rows:
        print(f"| {task} | {seed} | {lm_exact:.0f} / {rt_exact:.0f} | {lm_partial:.2f} / {rt_partial:.2f} |")


if __name__ == "__main__":
    main()
