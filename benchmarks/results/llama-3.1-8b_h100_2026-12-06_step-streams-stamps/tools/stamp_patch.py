"""Adds per-program time stamps (globaltimer at start, after the PDL wait, at the end; SM id) to the decode kernels of
a tree: index scores, search phases, decode attention (ring and list), combine. Diagnostic only."""
import sys
from pathlib import Path

root = Path(sys.argv[1]) / "rtpurbo/ops/triton"
helpers = '''

@triton.jit
def _now():
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _smid():
    return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _stamp_out(stamp_ptr, slot, t0, t1):
    t2 = _now()
    tl.store(stamp_ptr + slot * 4 + 0, t0)
    tl.store(stamp_ptr + slot * 4 + 1, t1)
    tl.store(stamp_ptr + slot * 4 + 2, t2)
    tl.store(stamp_ptr + slot * 4 + 3, _smid().to(tl.int64))


class _Stamps:
    buf = None
    cursor = 0
    launches = []

    def take(self, name, programs, device):
        if self.buf is None or self.buf.device != device:
            self.buf = torch.zeros(1 << 20, 4, dtype=torch.int64, device=device)
        off = self.cursor
        self.cursor += programs
        if self.cursor > self.buf.shape[0]:
            self.cursor = programs
            off = 0
        self.launches.append((name, off, programs))
        return self.buf, off


STAMPS = _Stamps()
'''

# ---- dependent_launch: put helpers there (imported by both files)
dl = root / "dependent_launch.py"
s = dl.read_text()
s = s.rstrip() + "\n" + helpers
dl.write_text(s)

def edit(path, pairs):
    s = path.read_text()
    for old, new in pairs:
        if old not in s:
            raise SystemExit(f"{path.name}: anchor not found: {old[:80]!r}")
        s = s.replace(old, new, 1)
    path.write_text(s)

imp = "from .dependent_launch import let_next_launch, wait_for_previous"
imp_new = "from .dependent_launch import let_next_launch, wait_for_previous, _now, _stamp_out, STAMPS"

# ---- decode.py
edit(root / "decode.py", [
    (imp, imp_new),
    # index scores
    ("    D_IDX: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, ZERO: tl.constexpr, PDL: tl.constexpr,\n):\n    wait_for_previous(PDL)\n",
     "    stamp_ptr, stamp_off,\n    D_IDX: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, ZERO: tl.constexpr, PDL: tl.constexpr,\n):\n    t0 = _now()\n    wait_for_previous(PDL)\n    t1 = _now()\n"),
    ("    tl.store(always_ptr + bh * n_always + always_entry(k_pos, q_pos, sinks), offs, mask=is_sink | is_recent)\n",
     "    tl.store(always_ptr + bh * n_always + always_entry(k_pos, q_pos, sinks), offs, mask=is_sink | is_recent)\n    _stamp_out(stamp_ptr, stamp_off + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), t0, t1)\n"),
    ("        scores if zero is None else zero, 0 if zero is None else zero.numel(),\n",
     "        scores if zero is None else zero, 0 if zero is None else zero.numel(),\n        *STAMPS.take('index', rows * n_blocks, device),\n"),
    # decode attention
    ("    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,\n):\n    wait_for_previous(PDL)\n    bh, _, b, h",
     "    stamp_ptr, stamp_off,\n    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,\n):\n    t0 = _now()\n    wait_for_previous(PDL)\n    t1 = _now()\n    bh, _, b, h"),
    ("    _store_part(part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, bh * n_parts + split, m_i, l_i, acc, n_used, group,\n                G_PAD, D_PAD)\n",
     "    _store_part(part_m_ptr, part_l_ptr, part_o_ptr, part_n_ptr, bh * n_parts + split, m_i, l_i, acc, n_used, group,\n                G_PAD, D_PAD)\n    _stamp_out(stamp_ptr, stamp_off + bh * n_parts + split, t0, t1)\n"),
    ("        index_t.stride(0), index_t.stride(1), index_t.stride(2),\n        LIST=listed, HAS_MASK",
     "        index_t.stride(0), index_t.stride(1), index_t.stride(2),\n        **dict(zip(('stamp_ptr', 'stamp_off'), STAMPS.take('list' if listed else 'ring', rows * n_parts, q.device))),\n        LIST=listed, HAS_MASK"),
    # combine
    ("    PDL: tl.constexpr,\n):\n    \"\"\"One (row, query head",
     "    stamp_ptr, stamp_off, PDL: tl.constexpr,\n):\n    \"\"\"One (row, query head"),
    ("    wait_for_previous(PDL)\n    r = tl.program_id(0)\n",
     "    t0 = _now()\n    wait_for_previous(PDL)\n    t1 = _now()\n    r = tl.program_id(0)\n"),
    ("        tl.store(count_ptr + r, tl.sum(n_used, axis=0).to(tl.int64))\n",
     "        tl.store(count_ptr + r, tl.sum(n_used, axis=0).to(tl.int64))\n    _stamp_out(stamp_ptr, stamp_off + (r * tl.num_programs(1) + gi) * tl.num_programs(2) + dc, t0, t1)\n"),
    ("        HAS_MAP=heads is not None, G_PAD=g_pad,",
     "        **dict(zip(('stamp_ptr', 'stamp_off'), STAMPS.take('combine', (rows_a + rows_b) * group * (d_pad // d_chunk), out.device))),\n        HAS_MAP=heads is not None, G_PAD=g_pad,"),
])

# ---- threshold.py
edit(root / "threshold.py", [
    ("from .dependent_launch import wait_for_previous", "from .dependent_launch import wait_for_previous, _now, _stamp_out, STAMPS"),
    ("    BIN_LIST: tl.constexpr, NC_PAD: tl.constexpr, SPIN_LIMIT: tl.constexpr, PDL: tl.constexpr, RELAY: tl.constexpr,\n):",
     "    BIN_LIST: tl.constexpr, NC_PAD: tl.constexpr, SPIN_LIMIT: tl.constexpr, PDL: tl.constexpr, RELAY: tl.constexpr,\n    stamp_ptr=None, stamp_off=0,\n):"),
    ("    wait_for_previous(PDL)\n    row = tl.program_id(0)\n    part = tl.program_id(1)\n",
     "    t0 = _now()\n    wait_for_previous(PDL)\n    t1 = _now()\n    row = tl.program_id(0)\n    part = tl.program_id(1)\n"),
    ("                gather_phase(scores_row, st, tally_ptr, order_ptr + row.to(tl.int64) * capacity, row, part, n_keys,\n                              chunk, n_chunks, NC_PAD, BLOCK, PDL)\n",
     "                gather_phase(scores_row, st, tally_ptr, order_ptr + row.to(tl.int64) * capacity, row, part, n_keys,\n                              chunk, n_chunks, NC_PAD, BLOCK, PDL)\n    _stamp_out(stamp_ptr, stamp_off + row * tl.num_programs(1) + part, t0, t1)\n"),
    ("        _search_kernel[(rows, n_chunks)](*args, FIRST=first, LAST=last,",
     "        _sp, _so = STAMPS.take(f'phase{first}', rows * n_chunks, device)\n        _search_kernel[(rows, n_chunks)](*args, stamp_ptr=_sp, stamp_off=_so, FIRST=first, LAST=last,"),
])
print("patched", root)
