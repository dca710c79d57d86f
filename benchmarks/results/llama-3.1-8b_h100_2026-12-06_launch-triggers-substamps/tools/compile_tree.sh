#!/usr/bin/env bash
# compile_tree.sh TREE: every launch of the tree's selecting chain compiled for sm_90 on the CPU (compile_check.py)
set -euo pipefail
tools=$(dirname "$(realpath "$0")")
cd "$1"
PYTHONPATH=. TRITON_INTERPRET=1 python3 "$tools/compile_check.py" /tmp/specs_$$.json
PYTHONPATH=. python3 -m tests.triton_interpreter /tmp/specs_$$.json tests/test_decode_interpret.py
