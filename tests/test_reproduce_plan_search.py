"""The issue-15 GPU script end to end on CPU (--dry-run: tiny random Llama with SmolLM2's tokenizer,
synthetic corpus): knockout profile, comparison, both plan searches and the paired eval."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce" / "smollm2-135m_plan-search.sh"


def test_plan_search_script_dry_run(tmp_path, smollm_tokenizer):
    out = tmp_path / "run"
    env = {**os.environ, "RTPURBO": f"{sys.executable} -m rtpurbo.cli", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("MODEL", "TUNE_DATA", "EVAL_DATA", "COPY_SCORES"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(summary["steps"]) == ["knockout", "compare", "search-knockout", "search-answer-kl", "search-copy",
                                      "eval"]
    for name in ("summary.md", "profile-knockout/head_scores.json", "compare/scores_scatter.png",
                 "search-knockout/pareto.png", "search-copy/search.md", "eval/results.md"):
        assert (out / name).is_file(), name
    assert not (out / "inputs").exists()  # only small outputs stay
    assert json.loads((out / "profile-knockout" / "head_scores.json").read_text())["criterion"] == "knockout"
    chosen = json.loads((out / "search-knockout" / "headwise_config.json").read_text())
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["paired"]["rows"]) == {"split", "knockout", "chosen"}
    rows = {r["row"]: r for r in results["rows"]}
    assert rows["chosen"]["sparse"]["window"] == chosen["swa_token_num"] and rows["split"]["sparse"]["window"] == 128
    assert "## Paired differences vs dense" in (out / "summary.md").read_text()
