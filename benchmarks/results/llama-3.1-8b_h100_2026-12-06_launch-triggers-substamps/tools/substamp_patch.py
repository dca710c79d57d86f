"""On top of stamp_patch.py: time stamps inside level 0's and the key levels' programs (after the first loads, after
the pass, after the ticket; in the last program after the walk, after the list resolve, after the stores).
Diagnostic only."""
import sys
from pathlib import Path

root = Path(sys.argv[1]) / "rtpurbo/ops/triton"
helpers = '''

@triton.jit
def _now_after(x):
    """globaltimer, read only once ``x`` (int32) is available."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.s32 p, $1, 305419896; @p mov.u64 $0, %globaltimer; @!p mov.u64 $0, 0; }",
        "=l,r", [x], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _sub(sub_ptr, slot, k, t):
    tl.store(sub_ptr + slot * 8 + k, t)


class _SubStamps:
    buf = None

    def get(self, device):
        if self.buf is None or self.buf.device != device:
            self.buf = torch.zeros(1 << 14, 8, dtype=torch.int64, device=device)
        return self.buf


SUBSTAMPS = _SubStamps()
'''
dl = root / "dependent_launch.py"
dl.write_text(dl.read_text().rstrip() + "\n" + helpers)


def edit(path, pairs):
    s = path.read_text()
    for old, new in pairs:
        if s.count(old) != 1:
            raise SystemExit(f"{path.name}: anchor found {s.count(old)} times: {old[:80]!r}")
        s = s.replace(old, new, 1)
    path.write_text(s)


edit(root / "threshold.py", [
    ("from .dependent_launch import wait_for_previous, _now, _stamp_out, STAMPS",
     "from .dependent_launch import wait_for_previous, _now, _stamp_out, STAMPS, SUBSTAMPS"),
    ("    stamp_ptr=None, stamp_off=0,\n):", "    stamp_ptr=None, stamp_off=0, sub_ptr=None,\n):"),
    ("                             NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB, FIRST < LAST, PDL)",
     "                             NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB, FIRST < LAST, PDL,\n"
     "                             sub_ptr, (phase * tl.num_programs(0) + row) * n_chunks + part)"),
    ("N_BINS, BLOCK, BIN_LIST, FIRST < LAST, PDL",
     "N_BINS, BLOCK, BIN_LIST, FIRST < LAST, PDL, sub_ptr, (phase * tl.num_programs(0) + row) * n_chunks + part"),
    ("stamp_ptr=_sp, stamp_off=_so,", "stamp_ptr=_sp, stamp_off=_so, sub_ptr=SUBSTAMPS.get(device),"),
])
tp = root / "threshold_phases.py"
s = tp.read_text()
if "EARLY_NEXT" in s:  # the call passes two more constexprs after PDL in such trees: move the slot args to the end
    edit(root / "threshold.py", [
        ("N_BINS, BLOCK, BIN_LIST, FIRST < LAST, PDL, sub_ptr, (phase * tl.num_programs(0) + row) * n_chunks + part, phase >= 2",
         "N_BINS, BLOCK, BIN_LIST, FIRST < LAST, PDL, phase >= 2"),
    ])
    s2 = (root / "threshold.py").read_text()
    s2 = s2.replace("phase >= 2)", "phase >= 2, sub_ptr=sub_ptr, sub_slot=(phase * tl.num_programs(0) + row) * n_chunks + part)", 1)
    s2 = s2.replace("phase >= 2, phase == 1)", "phase >= 2, phase == 1, sub_ptr=sub_ptr, sub_slot=(phase * tl.num_programs(0) + row) * n_chunks + part)", 1)
    (root / "threshold.py").write_text(s2)
edit(tp, [
    ("from .dependent_launch import let_next_launch", "from .dependent_launch import let_next_launch, _now, _now_after, _sub"),
    # level 0
    ("    N_BINS: tl.constexpr, SUB: tl.constexpr, FUSED: tl.constexpr, PDL: tl.constexpr,\n):\n    \"\"\"Level 0: per-program",
     "    N_BINS: tl.constexpr, SUB: tl.constexpr, FUSED: tl.constexpr, PDL: tl.constexpr, sub_ptr=None, sub_slot=0,\n):\n    \"\"\"Level 0: per-program"),
    ("        NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB)\n    let_next_launch(PDL)  # the next phase launches during the walk below\n    tl.debug_barrier()\n    ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem=\"acq_rel\")\n    if ticket == n_chunks - 1:  # the last program: walk the level\n        tl.debug_barrier()\n",
     "        NB_PAD, N_LOGIT, MIN_INV_WIDTH, MAX_INV_WIDTH, N_BINS, SUB)\n    _sub(sub_ptr, sub_slot, 0, _now_after(row_max.to(tl.int32, bitcast=True)))\n    let_next_launch(PDL)  # the next phase launches during the walk below\n    tl.debug_barrier()\n    _sub(sub_ptr, sub_slot, 1, _now())\n    ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem=\"acq_rel\")\n    _sub(sub_ptr, sub_slot, 2, _now_after(ticket))\n    if ticket == n_chunks - 1:  # the last program: walk the level\n        tl.debug_barrier()\n"),
    ("            level, row_max, inv_width, lower, upper, target, N_LOGIT, N_BINS)\n        _store_search(st, mode, rank, above, mass_above, key_hi, key_lo, tau, need)\n        tl.store(st + LOGIT_BIN, logit_bin)\n        _store_row(st, stats_ptr, row, row_max, z, inv_width, lower, upper)\n        tl.store(n_keep_ptr + row, n_visible * 0)\n",
     "            level, row_max, inv_width, lower, upper, target, N_LOGIT, N_BINS)\n        _sub(sub_ptr, sub_slot, 3, _now_after(logit_bin.to(tl.int32)))\n        _store_search(st, mode, rank, above, mass_above, key_hi, key_lo, tau, need)\n        tl.store(st + LOGIT_BIN, logit_bin)\n        _store_row(st, stats_ptr, row, row_max, z, inv_width, lower, upper)\n        tl.store(n_keep_ptr + row, n_visible * 0)\n        tl.debug_barrier()\n        _sub(sub_ptr, sub_slot, 5, _now())\n"),
    # key levels: the walk
    ("def _key_level_state(level, lists, stats, mode, rank, above, mass_above, key_hi, key_lo, shift, lower, upper, target,\n                     N_BINS: tl.constexpr, BIN_LIST: tl.constexpr):",
     "def _key_level_state(level, lists, stats, mode, rank, above, mass_above, key_hi, key_lo, shift, lower, upper, target,\n                     N_BINS: tl.constexpr, BIN_LIST: tl.constexpr, sub_ptr=None, sub_slot=0):"),
    ("                                                                 lower, upper, N_BINS)\n    new_hi",
     "                                                                 lower, upper, N_BINS)\n    if sub_ptr is not None:\n        _sub(sub_ptr, sub_slot, 3, _now_after(chosen.to(tl.int32)))\n    new_hi"),
    ("        need = tl.where(by_list, list_need, need)\n",
     "        need = tl.where(by_list, list_need, need)\n        if sub_ptr is not None:\n            _sub(sub_ptr, sub_slot, 4, _now_after(tau.to(tl.int32)))\n"),
])
s = tp.read_text()
# key_phase (and the eager variant if present): stamps after the mode, after the pass, after the ticket, after stores
kp_sig_old = "    PDL: tl.constexpr,\n):\n    \"\"\"Levels 1-3:"
s = s.replace(kp_sig_old, "    PDL: tl.constexpr, sub_ptr=None, sub_slot=0,\n):\n    \"\"\"Levels 1-3:", 1) if kp_sig_old in s else \
    s.replace("    PDL: tl.constexpr, EARLY_NEXT: tl.constexpr,\n):\n    \"\"\"Levels 1-3:",
              "    PDL: tl.constexpr, EARLY_NEXT: tl.constexpr, sub_ptr=None, sub_slot=0,\n):\n    \"\"\"Levels 1-3:", 1) \
    if "    PDL: tl.constexpr, EARLY_NEXT: tl.constexpr,\n):\n" in s else \
    s.replace("    PDL: tl.constexpr, EARLY_NEXT: tl.constexpr, EAGER: tl.constexpr = False,\n):\n    \"\"\"Levels 1-3:",
              "    PDL: tl.constexpr, EARLY_NEXT: tl.constexpr, EAGER: tl.constexpr = False, sub_ptr=None, sub_slot=0,\n):\n    \"\"\"Levels 1-3:", 1)
assert "sub_slot=0,\n):\n    \"\"\"Levels 1-3:" in s, "key_phase signature"
for old, new in [
    ("    mode = _cg(st + MODE)\n    searching = mode != RESOLVED\n    if searching:\n",
     "    mode = _cg(st + MODE)\n    _sub(sub_ptr, sub_slot, 0, _now_after(mode.to(tl.int32)))\n    searching = mode != RESOLVED\n    if searching:\n"),
    ("                       _cg(st + LOGIT_BIN).to(tl.int32), part, n_keys, chunk, N_LOGIT, N_BINS, BLOCK, BIN_LIST)\n        let_next_launch(PDL)\n        tl.debug_barrier()\n        ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem=\"acq_rel\")\n        if ticket == n_chunks - 1:  # the last program: walk the level\n",
     "                       _cg(st + LOGIT_BIN).to(tl.int32), part, n_keys, chunk, N_LOGIT, N_BINS, BLOCK, BIN_LIST)\n        let_next_launch(PDL)\n        tl.debug_barrier()\n        _sub(sub_ptr, sub_slot, 1, _now())\n        ticket = tl.atomic_add(level + 2 * N_BINS, 1, sem=\"acq_rel\")\n        _sub(sub_ptr, sub_slot, 2, _now_after(ticket))\n        if ticket == n_chunks - 1:  # the last program: walk the level\n"),
    ("                key_hi, key_lo, shift, _cg(st + LOWER), _cg(st + UPPER), target, N_BINS, BIN_LIST)\n            _store_search(st, mode, rank, above, mass_above, new_hi, new_lo, tau, need)\n            if mode == RESOLVED:\n                tl.store(n_keep_ptr + row, above + need)\n",
     "                key_hi, key_lo, shift, _cg(st + LOWER), _cg(st + UPPER), target, N_BINS, BIN_LIST, sub_ptr, sub_slot)\n            _store_search(st, mode, rank, above, mass_above, new_hi, new_lo, tau, need)\n            if mode == RESOLVED:\n                tl.store(n_keep_ptr + row, above + need)\n            tl.debug_barrier()\n            _sub(sub_ptr, sub_slot, 5, _now())\n"),
]:
    if s.count(old) != 1:
        raise SystemExit(f"threshold_phases.py: anchor found {s.count(old)} times: {old[:80]!r}")
    s = s.replace(old, new, 1)
tp.write_text(s)
print("substamped", root)
