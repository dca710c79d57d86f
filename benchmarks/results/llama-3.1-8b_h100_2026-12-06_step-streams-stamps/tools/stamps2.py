"""Stamps of the selecting step at the given lengths for several stamped trees:

    python3 stamps2.py 256K NAME=DIR ...   (from a tree holding benchmarks/decode_step_ab.py)
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
lengths = sys.argv[1].split(",")
entries = sys.argv[2:]
sys.path.insert(0, "benchmarks")
from decode_step_ab import load_trees, step_case, LENGTHS  # noqa: E402
import stamps_lib  # noqa: E402
for entry in entries:
    name, _, root = entry.partition("=")
    trees = load_trees([entry])
    S = sys.modules[f"rtpurbo_{name}.ops.triton.dependent_launch"].STAMPS
    for label in lengths:
        stamps_lib.report(S, f"{name} {label} step", step_case(trees, LENGTHS[label], [], 1)[name])
