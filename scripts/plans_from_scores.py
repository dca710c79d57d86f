"""Head plans at several retrieval ratios from one profile (no model needed).

    python3 scripts/plans_from_scores.py PROFILE_DIR/head_scores.json OUT_DIR 0.10 0.15 0.25

Writes OUT_DIR/r10.json, r15.json, r25.json (the ranking `rtpurbo profile` stored, cut at each ratio).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtpurbo.config import HeadPlan  # noqa: E402


def main() -> None:
    scores_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    scores = json.loads(scores_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for ratio in map(float, sys.argv[3:]):
        plan = HeadPlan.from_scores(scores["ranking"], scores["num_q_heads"], ratio,
                                    criterion=f"profile ranking of {scores_path}")
        path = out / f"r{round(ratio * 100):02d}.json"
        path.write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
        print(f"{path}: {plan.num_retrieval()} retrieval KV heads")


if __name__ == "__main__":
    main()
