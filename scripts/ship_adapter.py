"""Copy a trained artifact into the package as a shipped adapter, pointing it at the embedded base.

    python3 scripts/ship_adapter.py RUN_DIR/artifact rtpurbo/adapters/NAME --base smollm2-135m \
        --results RUN_DIR/results.json --note "..."

The base fingerprint is checked against the embedded model before anything is written; the
training summary (stage steps, times, perplexities, card) goes into the artifact's history.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtpurbo import io  # noqa: E402
from rtpurbo.config import dumps  # noqa: E402
from rtpurbo.models import fingerprint, resolve_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--base", default="smollm2-135m")
    p.add_argument("--results", type=Path, help="scripts/train_gpu.py results.json of the run")
    p.add_argument("--note", default="")
    args = p.parse_args()
    config = io.read_config(args.artifact)
    source = resolve_model(args.base)
    if fingerprint(source) != config["base_model"]["fingerprint"]:
        raise SystemExit(f"{args.artifact} was trained on other base weights than {args.base!r}")
    config["base_model"].update(spec=args.base, directory=None)
    entry = {"event": "trained", "note": args.note}
    if args.results:
        results = json.loads(args.results.read_text())
        entry.update({k: results[k] for k in ("indexer", "distill", "ppl", "seconds_total") if k in results})
        for stage in ("indexer", "distill"):
            entry.get(stage, {}).pop("history", None)
    config["history"] = list(config.get("history", [])) + [entry]
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in config["files"]:
        shutil.copyfile(args.artifact / name, args.dest / name)
    (args.dest / io.CONFIG_NAME).write_text(dumps(config))
    io.read_config(args.dest)  # hashes still match
    print(f"shipped {args.dest} ({sum(f.stat().st_size for f in args.dest.iterdir())} bytes)")


if __name__ == "__main__":
    main()
