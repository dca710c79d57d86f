"""Merge `rtpurbo eval` results directories that each hold part of the units (e.g. one run per row
and length, as scripts/device/block1.sh runs them) into one directory, then rebuild its report.

    python3 scripts/merge_eval_rows.py OUT_DIR RUN_DIR [RUN_DIR ...]

Units of a row merge only when the row identities agree; the config of the run holding the most
lengths is kept, with the settings' lengths widened to all merged lengths.
"""
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtpurbo.config import dumps  # noqa: E402
from rtpurbo.eval.report import rebuild_report  # noqa: E402
from rtpurbo.eval.suite import BASE_ROWS  # noqa: E402


def main() -> None:
    out, runs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    rows: dict[str, dict] = {}
    lengths: set[int] = set()
    configs = []
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        configs.append(config)
        lengths.update(config["settings"]["lengths"])
        for path in sorted((run / "rows").glob("*.json")):
            row = json.loads(path.read_text())
            held = rows.setdefault(path.stem, {**row, "units": {}})
            if held["identity"] != row["identity"]:
                raise SystemExit(f"{path}: row identity differs from the one merged before")
            held["units"].update(row["units"])
            held["kv_bytes_per_token"] = {**held.get("kv_bytes_per_token", {}), **row.get("kv_bytes_per_token", {})}
    config = max(configs, key=lambda c: (c["settings"]["ppl_windows"], len(c["settings"]["lengths"])))
    config["settings"]["lengths"] = sorted(lengths)
    config["merged_from"] = [str(r) for r in runs]
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for name, row in rows.items():
        (out / "rows" / f"{name}.json").write_text(dumps(row))
    (out / "config.json").write_text(dumps(config))
    for run in runs:  # keep the head-plan picture of a converted run
        for png in run.glob("head_plan*.png"):
            shutil.copy(png, out / png.name)
    rebuild_report(out, BASE_ROWS)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
