"""rtpurbo bench: the end-to-end model benchmark on a tiny CPU model, the OOM search, the CLI."""
import json
import shlex

import pytest
import torch

from rtpurbo.bench import end_to_end, oom
from rtpurbo.bench.commands import settings_from
from rtpurbo.bench.end_to_end import attention_flop_ratio, run_benchmark
from rtpurbo.bench.model_report import compare, environment, gaussian_topp_fraction, human_tokens, markdown, report_path
from rtpurbo.bench.model_variants import Variants, build_model, conversions, spread_plan
from rtpurbo.bench.settings import GEOMETRIES, LLAMA_31_8B, SDPA_BACKENDS, TINY, TINY_MOE, ModelBenchSettings
from rtpurbo.bench.steps import forward_last_logits
from rtpurbo.cache import HeadwiseCache
from rtpurbo.cli import build_parser, main
from rtpurbo.cli_args import SettingsError
from rtpurbo.config import DEFAULT_SEQLEN_THRESHOLD
from rtpurbo.families import attention_modules
from rtpurbo.memory import KVGeometry
from rtpurbo.ops.semantics import visible

LENGTH, WARM, STEPS = 384, 1, 3


def tiny_settings(**overrides):
    fields = dict(geometry=TINY, layers=2, lengths=[LENGTH], device="cpu", dtype="float32", window=128,
                  decode_steps=STEPS, decode_warmup=WARM, repeats=1, warmup=0)
    fields.update(overrides)
    return ModelBenchSettings(**fields)


# --- the whole run through the CLI --------------------------------------------------------------------
def test_cli_tiny_run_reports_table_then_json(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["bench", "model", "--device", "cpu", "--tiny", "--lengths", str(LENGTH), "--decode-warmup", str(WARM),
            "--decode-steps", str(STEPS), "--warmup", "0", "--max-tokens", "64", "--seqlen-threshold", "0", "--oom-search",
            "--oom-lengths", "512", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[0].startswith("# rtpurbo bench model") and any(line.startswith("| variant | L |") for line in stdout)
    result = json.loads(stdout[-1])
    assert set(result) >= {"environment", "config", "rows", "comparison", "oom_search", "wall_seconds"}
    assert result["environment"]["device"] == "cpu" and result["environment"]["torch"] == torch.__version__

    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "sparse", "sparse-max64"}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["ttft_ms"] > 0 and row["decode_ms_per_token"] > 0 and row["decode_tokens_per_s"] > 0
        assert len(row["tokens"]) == 1 + WARM + STEPS and row["timed_runs"] == 1
    cached = LENGTH + WARM + STEPS  # prompt + every token fed back
    assert rows["dense"]["kv_bytes"] == 2 * 2 * 2 * 64 * 4 * cached  # K+V x layers x KV heads x D x fp32
    sparse_geometry = KVGeometry(2, 2, 64, num_retrieval_kv_heads=1, window=128, sinks=4, index_dim=16,
                                 bytes_per_value=4)
    assert rows["sparse"]["kv_used_bytes"] == sparse_geometry.sparse_bytes(cached)
    assert rows["sparse"]["kv_bytes"] < rows["dense"]["kv_bytes"]
    budgeted = rows["sparse-max64"]["selected_keys_per_head"]
    assert budgeted <= 64 + 4 + 64 < rows["sparse"]["selected_keys_per_head"]  # budget + sinks + recent
    assert {c["variant"] for c in result["comparison"]} == {"sparse", "sparse-max64"}
    assert all(c["kv_ratio"] > 1 for c in result["comparison"])

    assert [r["status"] for r in result["oom_search"]["rows"]] == ["ok", "ok"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["record"] for r in records] == ["config"] + ["measurement"] * 3 + ["oom_try"] * 2 + ["result"]
    assert out.with_suffix(".md").read_text().startswith("# rtpurbo bench model")


def test_sparse_without_sparsity_decodes_the_dense_tokens(tmp_path):
    """W beyond the context and top-p 1: the converted model is the dense model, token for token."""
    result = run_benchmark(tiny_settings(lengths=[200], window=1024, top_p=1.0, decode_steps=6), tmp_path / "r.jsonl")
    (comparison,) = result["comparison"]
    assert comparison["tokens_match_dense"] == 1.0


def test_moe_geometry_and_chunked_prefill(tmp_path):
    """The Qwen3-MoE family runs end to end (transformers' own modules, grouped experts); a chunked prefill
    through the head-wise cache gives the one-shot prefill's tokens."""
    settings = dict(geometry=TINY_MOE, lengths=[300], top_p=1.0, window=64, cuda_graph=True, decode_warmup=2)
    whole = run_benchmark(tiny_settings(**settings), tmp_path / "a.jsonl")
    chunked = run_benchmark(tiny_settings(**settings, prefill_chunk=128), tmp_path / "b.jsonl")
    rows = [{r["variant"]: r for r in result["rows"]} for result in (whole, chunked)]
    assert {r["status"] for r in rows[0].values()} == {"ok"} and "moe" in whole["config"]["model"]
    assert rows[0]["sparse"]["tokens"] == rows[1]["sparse"]["tokens"]
    assert rows[1]["dense-graph"]["tokens"] == rows[1]["dense"]["tokens"]  # chunked dense-graph is still dense


def test_attention_flop_ratio_counts_windows_and_retrieval_heads():
    plan = spread_plan(2, 2, 4, 0.5)  # one retrieval KV head of two per layer
    assert attention_flop_ratio(plan, TINY, 100, window=1000, sinks=4) == pytest.approx(1.0)  # W beyond L: dense
    steps = torch.arange(700)
    causal, local = (int(visible(steps, steps, window, 4).sum()) for window in (None, 64))  # visible pairs, counted
    assert attention_flop_ratio(plan, TINY, 700, window=64, sinks=4) == pytest.approx(2 * causal / (causal + local))


def test_attention_flop_ratio_counts_a_sparse_prefills_kept_share():
    plan = spread_plan(2, 2, 4, 0.5)
    dense_prefill = attention_flop_ratio(plan, TINY, 700, window=64, sinks=4)
    half = attention_flop_ratio(plan, TINY, 700, window=64, sinks=4, retrieval_kept=0.5)
    steps = torch.arange(700)
    causal, local = (int(visible(steps, steps, window, 4).sum()) for window in (None, 64))
    assert half == pytest.approx(2 * causal / (0.5 * causal + local)) and half > dense_prefill


def test_sparse_prefill_variant_keeps_fewer_key_blocks(tmp_path):
    """--prefill-blocks 1: a sparse-prefill1 variant whose retrieval heads keep a measured share of the key blocks
    (at 2048 tokens: 16 blocks of 128, a 512-token band, so about 2 in 3), with a higher FLOP ratio than sparse."""
    result = run_benchmark(tiny_settings(lengths=[2048], prefill_blocks=[1], decode_steps=2), tmp_path / "r.jsonl")
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["sparse-prefill1"]["status"] == "ok", rows["sparse-prefill1"]
    kept = rows["sparse-prefill1"]["prefill_block_fraction"]
    assert 0.5 < kept < 0.8 and "prefill_block_fraction" not in rows["sparse"]
    assert rows["sparse-prefill1"]["attention_flop_ratio"] > rows["sparse"]["attention_flop_ratio"]
    assert "sparse-prefill{N}" in result["config"]["notes"][2]


def test_cli_prefill_flags():
    parser = build_parser()
    args = parser.parse_args(["bench", "model", "--device", "cpu", "--tiny", "--prefill-blocks", "16", "64",
                              "--prefill-top-p", "0.8"])
    settings = settings_from(args)
    assert settings.prefill_blocks == [16, 64] and settings.prefill_top_p == 0.8
    assert set(settings.sparse_configs()) == {"sparse", "sparse-prefill16", "sparse-prefill64"}
    assert settings.sparse_configs()["sparse-prefill16"].prefill_scoring == "pooled"
    mass = settings_from(parser.parse_args(["bench", "model", "--device", "cpu", "--tiny", "--prefill-blocks", "16",
                                            "--prefill-scoring", "mass"]))
    assert mass.sparse_configs()["sparse-prefill16"].prefill_scoring == "mass"
    tail = settings_from(parser.parse_args(["bench", "model", "--device", "cpu", "--tiny", "--prefill-blocks", "16",
                                            "--prefill-dense-tail", "256", "1K"])).sparse_configs()
    assert set(tail) == {"sparse", "sparse-prefill16", "sparse-prefill16-tail256", "sparse-prefill16-tail1024"}
    assert tail["sparse-prefill16-tail1024"].prefill_dense_tail == 1024
    assert (tail["sparse-prefill16"].prefill_dense_tail, tail["sparse-prefill16-tail256"].prefill_dense_tail) == (0, 256)
    assert tail["sparse-prefill16-tail256"].prefill_max_blocks == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "model", "--prefill-top-p", "1.5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "model", "--prefill-scoring", "max"])


def test_cuda_graph_flag_decodes_the_same_tokens(tmp_path):
    """--cuda-graph (on the CPU: GraphedDecoder's eager stand-in) changes no sparse token; dense-graph decodes dense's."""
    settings = dict(lengths=[200], decode_warmup=2, top_p=0.7)
    plain = run_benchmark(tiny_settings(**settings), tmp_path / "a.jsonl")
    graphed = run_benchmark(tiny_settings(**settings, cuda_graph=True), tmp_path / "b.jsonl")
    rows = [{r["variant"]: r for r in result["rows"]} for result in (plain, graphed)]
    assert rows[1]["sparse"]["status"] == "ok" and rows[0]["sparse"]["tokens"] == rows[1]["sparse"]["tokens"]
    # the graphed dense baseline (every head full attention through rtpurbo's cache) is the dense model
    assert rows[1]["dense-graph"]["status"] == "ok" and "dense-graph" not in rows[0]
    assert rows[1]["dense-graph"]["tokens"] == rows[1]["dense"]["tokens"]
    (vs_graph,) = [c for c in graphed["comparison"] if c["variant"] == "sparse"]
    assert vs_graph["decode_speedup_vs_dense_graph"] > 0
    assert rows[0]["sparse"]["kv_used_bytes"] == rows[1]["sparse"]["kv_used_bytes"]
    # on the CPU the notes say what ran: GraphedDecoder's eager stand-in, no graph, no Triton kernel
    report = markdown(graphed)
    assert "CPU stand-in" in report and "eagerly on the CPU" in report and "stand-in" not in markdown(plain)
    assert "replayed from a CUDA graph" not in report and "split-K Triton kernel" not in report


def test_decode_profile_counts_each_variants_ops_per_step(tmp_path):
    """--profile-decode: one profile row per variant, in the JSON lines, the result and the report."""
    out = tmp_path / "r.jsonl"
    result = run_benchmark(tiny_settings(budgets=[64], profile_steps=2), out)
    profiles = {p["variant"]: p for p in result["decode_profile"]}
    assert set(profiles) == {"dense", "sparse", "sparse-max64"}
    for p in profiles.values():
        assert p["status"] == "ok" and p["length"] == LENGTH and p["steps"] == 2, p
        assert p["wall_ms_per_step"] > 0 and p["ops_per_step"] > 0 and p["top"]
        assert p["device_ms_per_step"] is None and p["kernels_per_step"] is None  # CPU: no kernels to count
    # the converted model runs more host ops per step than dense (what the profile is for on a GPU)
    assert profiles["sparse"]["ops_per_step"] > profiles["dense"]["ops_per_step"]
    records = [json.loads(line)["record"] for line in out.read_text().splitlines()]
    assert records.count("profile") == 3 and records[-1] == "result"
    assert "Decode profile" in markdown(result) and "Top operators, sparse" in markdown(result)


def test_decode_profile_at_a_longer_random_filled_cache(tmp_path):
    """--profile-length: the profiles run after that many random cached tokens, not at the shortest length."""
    result = run_benchmark(tiny_settings(profile_steps=1, profile_length=2 * LENGTH), tmp_path / "r.jsonl")
    assert [(p["variant"], p["length"], p["status"]) for p in result["decode_profile"]] == [
        ("dense", 2 * LENGTH, "ok"), ("sparse", 2 * LENGTH, "ok")]


def test_deadline_skips_measurements_but_records_them(tmp_path):
    result = run_benchmark(tiny_settings(lengths=[128, 256], deadline_s=0.0), tmp_path / "r.jsonl")
    assert [(r["length"], r["status"]) for r in result["rows"]] == [(128, "skipped")] * 2 + [(256, "skipped")] * 2
    assert "skipped: deadline" in markdown(result)

    # 1 ms to measure (gone while the model is built), the rest of the hour is the OOM search's
    reserved = tiny_settings(deadline_s=3600.001, oom_reserve_s=3600, oom_search=True, oom_lengths=[256])
    result = run_benchmark(reserved, tmp_path / "r.jsonl")
    assert {r["status"] for r in result["rows"]} == {"skipped"}
    assert [r["status"] for r in result["oom_search"]["rows"]] == ["ok", "ok"]


@pytest.mark.parametrize("deadline", [30, 60])
def test_oom_search_refuses_a_deadline_inside_its_reserve(tmp_path, deadline, capsys):
    """--deadline <= --oom-reserve would skip every measurement: refused before anything runs, in the settings and on
    the command line (one line, exit 2)."""
    with pytest.raises(ValueError, match="leaves no time to measure"):
        tiny_settings(deadline_s=deadline, oom_reserve_s=60, oom_search=True)
    assert tiny_settings(deadline_s=deadline, oom_reserve_s=60).deadline_s == deadline  # no search, no reserve
    out = tmp_path / "r.jsonl"
    assert main(["bench", "model", "--device", "cpu", "--tiny", "--oom-search", "--deadline", str(deadline),
                 "--out", str(out)]) == 2
    assert "--oom-reserve 60 s" in capsys.readouterr().err and not out.exists()


# --- pieces -----------------------------------------------------------------------------------------
def test_spread_plan_counts_and_spreads_leading_heads():
    plan = spread_plan(8, 8, 32, 0.15)
    assert plan.num_retrieval() == round(0.15 * 64) == 10
    assert [len(h) for h in plan.retrieval] == [2, 1, 1, 1, 2, 1, 1, 1]
    assert all(heads == list(range(len(heads))) for heads in plan.retrieval)
    assert spread_plan(2, 2, 4, 0.15).num_retrieval() == 1  # at least one


def test_fill_random_matches_the_layout_of_a_real_prefill():
    settings = tiny_settings(window=32)
    model = build_model(settings)
    variants = Variants(model, conversions(settings, spread_plan(2, 2, 4, 0.5)))
    variants.use("sparse")
    length = 100
    real, filled = HeadwiseCache(model), HeadwiseCache(model)
    with torch.no_grad():
        forward_last_logits(model, real, torch.randint(0, 1000, (1, length)), 0)
    filled.fill_random(model, length)
    for a, b in zip(real.store, filled.store):
        assert (a.r_len, a.seen) == (b.r_len, b.seen) == (length, length)
        assert torch.equal(a.r_pos[:, :length], b.r_pos[:, :length])
        assert torch.equal(a.l_pos, b.l_pos)  # sinks + the last W positions, in the same ring slots
    assert real.used_bytes() == filled.used_bytes()
    with torch.no_grad():  # decoding on from a filled cache works
        forward_last_logits(model, filled, torch.zeros(1, 1, dtype=torch.long), length)
    assert filled.get_seq_length() == length + 1


# --- OOM search --------------------------------------------------------------------------------------
class FakeRunner:
    """Raises CUDA OOM above a per-variant limit; records its calls."""

    def __init__(self, limits, errors=()):
        self.limits, self.errors, self.calls = limits, set(errors), []

    def __call__(self, variant, length):
        self.calls.append((variant, length))
        if (variant, length) in self.errors:
            raise ValueError("kernel failed")
        if length > self.limits[variant]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 GiB")
        return {"peak_gib": length / 10}


def test_oom_search_finds_where_dense_runs_out_and_sparse_fits(monkeypatch):
    freed = []
    monkeypatch.setattr(oom, "free_memory", lambda: freed.append(1))
    runner = FakeRunner({"dense": 4, "sparse": 8})
    result = oom.oom_search(runner, [16, 1, 2, 4, 8])
    assert result["dense_oom_sparse_fits"] == 8
    assert result["first_oom"] == {"dense": 8, "sparse": None}
    assert runner.calls == [(v, n) for n in (1, 2, 4, 8) for v in ("dense", "sparse")]  # stops after dense's OOM
    assert len(freed) == len(runner.calls)
    assert [r["status"] for r in result["rows"]][-2:] == ["oom", "ok"]

    runner = FakeRunner({"dense": 4, "sparse": 8})
    result = oom.oom_search(runner, [1, 2, 4, 8, 16, 32], keep_going=True)
    assert result["first_oom"] == {"dense": 8, "sparse": 16}
    assert ("dense", 16) not in runner.calls and ("sparse", 32) not in runner.calls


def test_oom_search_survives_errors_and_the_deadline(monkeypatch):
    monkeypatch.setattr(oom, "free_memory", lambda: None)
    runner = FakeRunner({"dense": 2, "sparse": 100}, errors={("sparse", 4)})
    result = oom.oom_search(runner, [2, 4, 8])
    statuses = {(r["variant"], r["length"]): r["status"] for r in result["rows"]}
    assert statuses == {("dense", 2): "ok", ("sparse", 2): "ok", ("dense", 4): "oom", ("sparse", 4): "error"}
    assert result["dense_oom_sparse_fits"] is None  # sparse did not run where dense ran out

    result = oom.oom_search(FakeRunner({"dense": 1, "sparse": 1}), [1, 2], out_of_time=lambda: True)
    assert {r["status"] for r in result["rows"]} == {"skipped"} and result["dense_oom_sparse_fits"] is None

    def faulty(variant, length):  # a sticky device fault fails every later call: stop trying
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    result = oom.oom_search(faulty, [1, 2, 4])
    assert [(r["variant"], r["status"]) for r in result["rows"]] == [("dense", "error")]


def test_is_oom_recognises_allocation_failures():
    assert oom.is_oom(torch.cuda.OutOfMemoryError("x")) and oom.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not oom.is_oom(RuntimeError("No available kernel. Aborting execution."))
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 4611686018427387904 bytes. Error code 12 (Cannot allocate memory)")
    def fails():
        raise cpu
    assert oom.is_oom(cpu) and oom.attempt(fails, {})["status"] == "oom"


# --- command line ------------------------------------------------------------------------------------
def test_bench_model_flags_and_presets():
    parse = build_parser().parse_args
    args = parse(["bench", "model", "--lengths", "32K", "1M", "--layers", "32", "--max-tokens", "2K", "--deadline", "60"])
    settings = settings_from(args)
    assert (settings.lengths, settings.layers, settings.budgets, settings.deadline_s) == ([32768, 2**20], 32, [2048], 60)
    assert list(settings.sparse_configs()) == ["sparse", "sparse-max2048"]
    assert settings.sparse_configs()["sparse-max2048"].max_tokens == 2048
    default = settings_from(parse(["bench", "model"]))
    assert (default.layers, default.lengths, default.window, default.dtype) == (8, [32768, 131072], 8192, "bfloat16")
    quick = settings_from(parse(["bench", "model", "--quick", "--repeats", "2"]))
    assert (quick.layers, quick.lengths, quick.repeats) == (2, [4096, 16384], 2)
    tiny = settings_from(parse(["bench", "model", "--tiny", "--device", "cpu"]))
    assert (tiny.geometry.name, tiny.window, tiny.dtype, tiny.device) == ("tiny", 128, "float32", "cpu")
    assert tiny.seqlen_threshold == 0 and default.seqlen_threshold == DEFAULT_SEQLEN_THRESHOLD  # --tiny selects always
    assert settings_from(parse(["bench", "model", "--tiny", "--device", "cpu", "--seqlen-threshold", "1K"])
                         ).seqlen_threshold == 1024
    with pytest.raises(SystemExit):
        parse(["bench", "model", "--lengths", "32Q"])
    assert settings_from(parse(["bench", "model", "--cuda-graph"])).cuda_graph
    assert default.cuda_graph  # on by default on a GPU
    assert not settings_from(parse(["bench", "model", "--no-cuda-graph"])).cuda_graph
    assert not tiny.cuda_graph  # and off by default on the CPU
    with pytest.raises(SettingsError, match="decode-warmup"):
        settings_from(parse(["bench", "model", "--cuda-graph", "--decode-warmup", "1"]))


def test_bench_attention_flags():
    args = build_parser().parse_args(["bench", "attention", "--prefill", "8192,32768", "--json", "rows.json"])
    assert args.prefill == [8192, 32768] and args.json_path == "rows.json" and args.json is False
    assert args.window_kernel is None  # the process-wide choice (RTPURBO_WINDOW_KERNEL, else triton) stays


@pytest.mark.parametrize("kind", ["attention", "model"])
def test_bench_window_kernel_flag_takes_the_known_kernels_only(kind, capsys):
    parse = build_parser().parse_args
    assert parse(["bench", kind, "--window-kernel", "cudnn"]).window_kernel == "cudnn"
    with pytest.raises(SystemExit):
        parse(["bench", kind, "--window-kernel", "flash"])
    assert "invalid choice: 'flash'" in capsys.readouterr().err


def test_bench_sparse_prefill_kernel_flags(capsys):
    """bench attention times each named kernel; bench model takes one; both refuse them without --prefill-blocks,
    and bench model refuses it on the CPU (a GPU-only choice)."""
    parse = build_parser().parse_args
    args = parse(["bench", "attention", "--prefill-blocks", "16", "--sparse-prefill-kernels", "flex,triton"])
    assert args.sparse_prefill_kernels == ["flex", "triton"]
    assert parse(["bench", "attention"]).sparse_prefill_kernels is None  # the current choice
    with pytest.raises(SystemExit):
        parse(["bench", "attention", "--sparse-prefill-kernels", "flex,pallas"])
    assert "unknown 'pallas'" in capsys.readouterr().err
    with pytest.raises(SettingsError, match="--sparse-prefill-kernels does nothing without --prefill-blocks"):
        from rtpurbo.bench.commands import run_attention
        run_attention(parse(["bench", "attention", "--sparse-prefill-kernels", "triton"]))
    assert parse(["bench", "model", "--prefill-blocks", "16", "--sparse-prefill-kernel", "triton"]
                 ).sparse_prefill_kernel == "triton"
    with pytest.raises(SettingsError, match="--sparse-prefill-kernel does nothing without --prefill-blocks"):
        settings_from(parse(["bench", "model", "--sparse-prefill-kernel", "triton"]))
    with pytest.raises(SettingsError, match="--sparse-prefill-kernel picks the retrieval heads' GPU prefill kernels"):
        settings_from(parse(["bench", "model", "--device", "cpu", "--tiny", "--prefill-blocks", "4",
                             "--sparse-prefill-kernel", "triton"]))


def test_bench_attention_table_names_the_sparse_prefill_kernel():
    from rtpurbo.bench.attention import table

    row = dict(phase="prefill", geometry="llama-3.1-8b", L=32768, sparse_ms=7.0, local_ms=6.0, cudnn_ms=12.9,
               flash_ms=None, ideal_speedup=3.0, pct_of_ideal_vs_cudnn=60.0, sparse_tflops=1.0, local_tflops=500.0,
               cudnn_tflops=550.0, flash_tflops=None, speedup_vs_cudnn=1.84, speedup_vs_flash=None)
    row.update(sparse_b16_ms=6.9, sparse_b16_retrieval_ms=0.9, sparse_b16_kept=0.1,
               sparse_b16_triton_ms=6.45, sparse_b16_triton_retrieval_ms=0.5, sparse_b16_triton_kept=0.1)
    lines = [line for line in table([row]).splitlines() if "blocks," in line]
    assert len(lines) == 2 and "flex" in lines[0] and "6.90 ms" in lines[0]
    assert "triton" in lines[1] and "6.45 ms (retrieval 0.50)" in lines[1] and "x cudnn 2.00" in lines[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
@pytest.mark.parametrize("kind", ["attention", "model"])
def test_bench_without_gpu_says_so(kind, tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["bench", kind] + (["--out", str(tmp_path / "x.jsonl")] if kind == "model" else []))


def test_human_tokens():
    assert [human_tokens(n) for n in (512, 32768, 131072, 2**20, 3 * 2**20, 1000)] == ["512", "32K", "128K", "1M",
                                                                                        "3M", "1000"]


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_decode_only_points_time_every_variant_after_a_random_cache(tmp_path, cuda_graph):
    """--decode-lengths: one row per (length, variant) with ms/token and the cache it decoded through."""
    result = run_benchmark(tiny_settings(lengths=[200], decode_lengths=[600], decode_warmup=2, cuda_graph=cuda_graph),
                           tmp_path / "r.jsonl")
    rows = {r["variant"]: r for r in result["decode_only"]}
    assert set(rows) == {"dense", "sparse"} | ({"dense-graph"} if cuda_graph else set())
    assert all(r["status"] == "ok" and r["length"] == 600 for r in rows.values())
    assert all(r["decode_ms_per_token"] > 0 for r in rows.values())
    # window 128: the sparse cache holds far fewer local-head slots than dense holds keys
    assert rows["sparse"]["kv_bytes"] < rows["dense"]["kv_bytes"]
    assert "Decode only" in markdown(result)


# --- trained-like indexer scores (--index-logit-std) ---------------------------------------------------
def test_calibrated_indexers_score_random_filled_keys_with_the_asked_std(monkeypatch):
    """After calibration to sigma = 3, decode queries score the N(0, I) indexer keys of a random-filled cache
    with std about 3 (per query: the query's norm), in every layer."""
    settings = tiny_settings(seqlen_threshold=0)
    model = build_model(settings)
    variants = Variants(model, conversions(settings, spread_plan(2, 2, 4, 1.0)), index_logit_std=3.0)
    variants.use("sparse")
    length, steps = 1024, 16
    cache = HeadwiseCache(model)
    cache.fill_random(model, length)
    queries = {}  # layer -> indexer queries (1, Hr, 1, d_idx) of every decode step
    for module in attention_modules(model):
        def index_vectors(q_raw, k_raw, rope, compute=module.index_vectors, layer=module.layer_idx):
            q_idx, k_idx = compute(q_raw, k_raw, rope)
            queries.setdefault(layer, []).append(q_idx)
            return q_idx, k_idx
        monkeypatch.setattr(module, "index_vectors", index_vectors)
    token = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        for step in range(steps):
            token = forward_last_logits(model, cache, token, length + step).argmax(-1, keepdim=True)
    assert set(queries) == {0, 1}
    for layer, q_idx in queries.items():
        keys = cache.store[layer].r_idx[:, :, :length].float()  # (1, Hr, L, d_idx), filled N(0, 1)
        scores = torch.einsum("bhqd,bhkd->bhqk", torch.cat(q_idx, dim=2).float(), keys)  # (1, Hr, steps, L)
        assert scores.std(dim=-1).mean().item() == pytest.approx(3.0, rel=0.15), layer


def test_index_logit_std_makes_decode_only_points_select_few_keys(tmp_path):
    """A decode-only point with indexers scaled to sigma 2.56 keeps far fewer keys per retrieval head than with
    the untrained, nearly flat indexers; the report says which."""
    settings = dict(lengths=[], decode_lengths=[2048], seqlen_threshold=0, decode_warmup=0, decode_steps=2)
    flat = run_benchmark(tiny_settings(**settings), tmp_path / "a.jsonl")
    peaked = run_benchmark(tiny_settings(**settings, index_logit_std=2.56), tmp_path / "b.jsonl")
    selected = [{r["variant"]: r for r in result["decode_only"]}["sparse"]["selected_keys_per_head"]
                for result in (flat, peaked)]
    assert selected[0] > 0.7 * 2048 and selected[1] < 0.3 * 2048, selected
    assert [r["config"]["settings"]["index_logit_std"] for r in (flat, peaked)] == [None, 2.56]
    assert "untrained indexers on random weights" in markdown(flat)
    report = markdown(peaked)
    assert "std 2.56 logits" in report and "keeps about 10.1 %" in report and "untrained indexers on" not in report
    assert gaussian_topp_fraction(2.56, 0.9) == pytest.approx(0.10, abs=0.005) and gaussian_topp_fraction(1, 1.0) == 1


def test_index_logit_std_flag(capsys):
    parse = build_parser().parse_args
    assert settings_from(parse(["bench", "model", "--index-logit-std", "2.56"])).index_logit_std == 2.56
    assert settings_from(parse(["bench", "model"])).index_logit_std is None
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit):
            parse(["bench", "model", "--index-logit-std", bad])
        assert f"argument --index-logit-std: must be a finite number > 0, got {bad}" in capsys.readouterr().err


# --- token-chunked MLPs (dense one-shot prefill at 1M) --------------------------------------------------------------
@pytest.mark.parametrize("geometry", [TINY, TINY_MOE], ids=["llama", "qwen3-moe"])
def test_token_chunked_mlps_give_the_same_logits(geometry):
    """MLPs and token-routed experts run on slices of 37 tokens: the model's logits over 300 tokens are the
    unchunked ones (float rounding aside), and the wrapper is idempotent."""
    from rtpurbo.bench.token_chunks import TokenChunks, chunk_mlps

    settings = tiny_settings(geometry=geometry, lengths=[300])
    ids = torch.randint(0, geometry.vocab, (1, 300), generator=torch.Generator().manual_seed(1))
    model = build_model(settings)
    with torch.no_grad():
        whole = model(ids).logits
        assert chunk_mlps(model, 37) == settings.layers and chunk_mlps(model, 37) == settings.layers
        assert all(isinstance(layer.mlp, TokenChunks) and not isinstance(layer.mlp.module, TokenChunks)
                   for layer in model.model.layers)
        chunked = model(ids).logits
    assert torch.allclose(chunked, whole, atol=1e-4, rtol=1e-4)
    assert build_model(tiny_settings(geometry=geometry, mlp_chunk=64)).model.layers[0].mlp.chunk == 64


def test_token_chunks_join_tuple_outputs():
    """A block returning (hidden (B, L, H), per-token rows (B * L, E)) is joined along each one's token dimension."""
    from rtpurbo.bench.token_chunks import TokenChunks

    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            return 2 * x, x.reshape(-1, x.shape[-1])[:, :3]

    x = torch.randn(1, 10, 5)
    hidden, rows = TokenChunks(TwoOutputs(), 4)(x)
    assert torch.equal(hidden, 2 * x) and torch.equal(rows, x.reshape(-1, 5)[:, :3])
    with pytest.raises(ValueError, match="token dimension"):
        TokenChunks(TwoOutputs(), 4)(torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match="chunk"):
        TokenChunks(TwoOutputs(), 0)


def test_mlp_chunk_follows_the_prefill_chunk():
    parse = build_parser().parse_args
    assert settings_from(parse(["bench", "model", "--prefill-chunk", "128K"])).mlp_chunk == 131072
    assert settings_from(parse(["bench", "model", "--prefill-chunk", "128K", "--mlp-chunk", "0"])).mlp_chunk is None
    assert settings_from(parse(["bench", "model", "--mlp-chunk", "64K"])).mlp_chunk == 65536
    assert settings_from(parse(["bench", "model"])).mlp_chunk is None


# --- results files, reports, provenance ---------------------------------------------------------------------------
def _records(path):
    return [json.loads(line)["record"] for line in path.read_text().splitlines()]


def test_runs_append_to_out_and_bad_settings_touch_nothing(tmp_path):
    """Two runs into one --out keep both (each from its config record to its result); a bad flag or bad settings
    are refused before the file is opened, so an earlier run's results stay."""
    out = tmp_path / "r.jsonl"
    settings = tiny_settings(lengths=[64], decode_steps=1)
    run_benchmark(settings, out)
    run_benchmark(settings, out)
    one_run = ["config", "measurement", "measurement", "result"]
    assert _records(out) == one_run * 2
    before = out.read_text()
    settings.top_p = 1.5  # made invalid after creation: run_benchmark checks again
    with pytest.raises(ValueError, match="top_p"):
        run_benchmark(settings, out)
    tiny = ["bench", "model", "--device", "cpu", "--tiny", "--out", str(out)]
    with pytest.raises(SystemExit) as parse_error:  # a bad value: argparse's usage error
        main(tiny + ["--top-p", "1.5"])
    assert parse_error.value.code == 2
    assert main(tiny + ["--max-tokens", "32"]) == 2  # below min_tokens: the SparseConfig rule, before the model
    assert out.read_text() == before


def test_report_path_keeps_dotted_names_apart_and_never_is_out(tmp_path, capsys):
    assert report_path(tmp_path / "a.jsonl") == tmp_path / "a.md"
    assert report_path(tmp_path / "llama-3.1-8b_eager") == tmp_path / "llama-3.1-8b_eager.md"
    assert report_path(tmp_path / "llama-3.1-8b_graph") != report_path(tmp_path / "llama-3.1-8b_eager")
    assert report_path(tmp_path / "x.md") == tmp_path / "x.md.md"
    (tmp_path / "taken.md").mkdir()
    for out in (tmp_path, tmp_path / "taken"):  # --out, or its report, is a directory
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "model", "--out", str(out)])
        assert "is a directory" in capsys.readouterr().err


def test_cli_tiny_run_selects_and_says_where_it_ran(tmp_path, capsys, monkeypatch):
    """--tiny alone: seqlen threshold 0, so the retrieval heads select (a count, not 'all'); the report goes beside a
    dotted --out name; environment and footer carry date, command line, checkout and versions."""
    out = tmp_path / "llama-3.1-8b_tiny"
    argv = ["bench", "model", "--device", "cpu", "--tiny", "--lengths", "128", "--decode-steps", "1", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["rtpurbo", *argv])  # the command line as the shell gave it
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sparse = {r["variant"]: r for r in result["rows"]}["sparse"]
    assert sparse["seqlen_threshold"] == 0 and sparse["selected_keys_per_head"] > 0
    report = report_path(out).read_text()
    assert report.startswith("# rtpurbo bench model") and _records(out)[-1] == "result"
    assert "seqlen threshold 0: retrieval heads select at every length (--tiny's default" in report
    env = result["environment"]
    assert set(env) >= {"date_utc", "command", "git_commit", "git_dirty", "rtpurbo", "torch", "transformers", "triton"}
    assert env["date_utc"] in report and env["transformers"] in report and env["command"] == shlex.join(["rtpurbo", *argv])
    assert f"Command: `{env['command']}`" in report


def test_no_selection_below_the_threshold_is_all_keys_not_zero(tmp_path):
    """Below the seqlen threshold (the default 256K here) no step selects: the column says 'all' with a footnote."""
    result = run_benchmark(tiny_settings(lengths=[64], decode_steps=1, decode_lengths=[96]), tmp_path / "r.jsonl")
    sparse = {r["variant"]: r for r in result["rows"]}["sparse"]
    assert sparse["selected_keys_per_head"] is None and sparse["seqlen_threshold"] == DEFAULT_SEQLEN_THRESHOLD
    report = markdown(result)
    assert "| sparse | 64 |" in report and "| all* | ok |" in report and "| - | ok |" in report  # dense: '-'
    assert "all: no selection below threshold 256K" in report and ", all* keys" in report  # decode-only table too


def _amdahl_result(dense_backend, flash_row):
    """A result with made-up times: dense TTFT 100 ms (50 of attention), dense-flash 80 (30), sparse 60 at ratio 2."""
    def row(variant, ttft, **extra):
        return dict(variant=variant, length=1024, status="ok", ttft_ms=ttft, decode_ms_per_token=1.0, kv_bytes=1,
                    tokens=[1, 2], **extra)
    rows = [row("dense", 100.0, attention_ms=50.0), row("sparse", 60.0, attention_flop_ratio=2.0)]
    if flash_row:
        rows.append(row("dense-flash", 80.0, attention_ms=30.0))
    config = {"model": "m", "notes": [], "dense_sdpa": {"prefill": dense_backend, "decode": dense_backend}}
    return dict(environment=environment(torch.device("cpu")), config=config, rows=rows, comparison=compare(rows),
                wall_seconds=1.0)


def test_amdahl_table_names_the_dense_backend_that_ran():
    cudnn = markdown(_amdahl_result("cudnn", flash_row=True))
    assert ("| attention FLOP ratio | vs cuDNN dense: share, speedup / ceiling (reached) | vs flash dense (dense-flash): "
            "share, speedup / ceiling (reached) |") in cudnn
    # cuDNN dense: share 50 %, 100 / 60 = 1.67x of a 100 / 75 = 1.33x ceiling; dense-flash: 30 %, 1.33x of 1.18x
    assert "| 1K | sparse | 2.00 | 50%, 1.67x / 1.33x (125%) | 38%, 1.33x / 1.23x (108%) |" in cudnn
    flash = markdown(_amdahl_result("flash", flash_row=False))  # flash is the dense baseline: one column, its name
    assert "| vs flash dense: share" in flash and "cuDNN" not in flash and "dense-flash" not in flash
    assert "| 1K | sparse | 2.00 | 50%, 1.67x / 1.33x (125%) |" in flash
    assert "vs torch's default SDPA dense" in markdown(_amdahl_result("default", flash_row=False))


def test_provenance_names_the_checkout_and_never_fails(monkeypatch):
    import subprocess

    from rtpurbo.bench import attention, provenance

    env = provenance.provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.PACKAGE_DIR.parent, capture_output=True, text=True)
    checkout = (provenance.PACKAGE_DIR.parent / ".git").exists() and head.returncode == 0
    assert env["git_commit"] == (head.stdout.strip() if checkout else None)
    assert env["transformers"] and env["torch"] == torch.__version__ and env["date_utc"].endswith("Z")
    assert provenance.command_line([str(provenance.PACKAGE_DIR / "cli.py"), "bench", "model", "--out", "a b"]) == (
        "python -m rtpurbo.cli bench model --out 'a b'")

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.git_checkout() == {"git_commit": None, "git_dirty": None}
    assert "not a git checkout" in provenance.footer(provenance.provenance())
    # bench attention's environment carries the same record (its GPU fields faked here)
    gpu = type("Props", (), {"name": "GPU", "multi_processor_count": 1})()
    monkeypatch.setattr(attention.torch.cuda, "get_device_properties", lambda index: gpu)
    assert set(attention.environment()) >= {"date_utc", "command", "git_commit", "rtpurbo", "transformers", "triton"}


def test_decode_only_points_report_the_median_of_the_timed_runs(tmp_path, monkeypatch):
    """Decode-only points run warm-up + repeats times, each through a fresh cache, and keep the median of the timed
    ones (the times here are made up: nothing is timed)."""
    made_up = iter([1000.0, 5.0, 1.0, 3.0])  # the warm-up run's, then three timed runs'
    real = end_to_end.decode_tokens

    def decode_tokens(*args):
        return {**real(*args), "decode_ms_per_token": next(made_up)}
    monkeypatch.setattr(end_to_end, "decode_tokens", decode_tokens)
    settings = tiny_settings(lengths=[], decode_lengths=[96], decode_steps=1, warmup=1, repeats=3)
    variants = Variants(build_model(settings), conversions(settings, spread_plan(2, 2, 4, 0.5)))
    bench = end_to_end.Bench(settings, variants, torch.device("cpu"), {"prefill": "default", "decode": "default"},
                             float("inf"))
    row = end_to_end.decode_only(bench, "sparse", 96)
    assert (row["decode_ms_per_token"], row["timed_runs"], row["decode_tokens_per_s"]) == (3.0, 3, 1000 / 3.0)


# --- flags checked before anything runs ----------------------------------------------------------------------------
def _exit_code(argv):
    """What ``rtpurbo bench ...`` exits with, without running a benchmark (every argv here is refused)."""
    try:
        return main(argv)
    except SystemExit as err:
        return err.code


@pytest.mark.parametrize("flags", [
    ["--top-p", "0"], ["--top-p", "1.1"], ["--sinks", "-1"], ["--warmup", "-1"], ["--decode-warmup", "-2"],
    ["--retrieval-fraction", "1.5"], ["--deadline", "-1"], ["--max-tokens", "63"], ["--window", "0"],
    ["--tiny", "--quick"],
    # flags that would do nothing
    ["--prefill-top-p", "0.5"], ["--prefill-scoring", "mass"], ["--prefill-dense-tail", "256"],
    ["--oom-lengths", "1K"], ["--oom-keep-going"], ["--oom-decode-steps", "2"], ["--oom-reserve", "5"],
    ["--profile-length", "1K"], ["--sdpa", "flash"], ["--window-kernel", "cudnn"], ["--two-launch-decode"],
    ["--no-flash-ttft"],
], ids=lambda flags: " ".join(flags))
def test_bench_model_refuses_bad_and_idle_flags_in_one_line(flags, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert _exit_code(["bench", "model", "--device", "cpu", "--tiny", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rtpurbo bench") and "Traceback" not in "".join(err) and not out.exists()


def test_bench_model_flags_that_need_another_one_work_with_it():
    parse = build_parser().parse_args
    oom = settings_from(parse(["bench", "model", "--oom-search", "--oom-lengths", "1M", "--oom-reserve", "5",
                               "--deadline", "60", "--oom-keep-going"]))
    assert (oom.oom_lengths, oom.oom_reserve_s, oom.oom_keep_going) == ([2**20], 5, True)
    gpu = settings_from(parse(["bench", "model", "--sdpa", "flash", "--two-launch-decode", "--no-flash-ttft"]))
    assert (gpu.sdpa_backends, gpu.two_launch, gpu.flash_ttft) == (["flash"], True, False)
    profiled = settings_from(parse(["bench", "model", "--profile-decode", "4", "--profile-length", "1M"]))
    assert (profiled.profile_steps, profiled.profile_length) == (4, 2**20)


def test_tiny_geometry_follows_the_family_asked_for():
    parse = build_parser().parse_args
    assert settings_from(parse(["bench", "model", "--tiny", "--geometry", "qwen3-30b-a3b"])).geometry == TINY_MOE
    assert settings_from(parse(["bench", "model", "--tiny", "--geometry", "llama-3.1-8b"])).geometry == TINY
    assert settings_from(parse(["bench", "model", "--geometry", "qwen3-30b-a3b"])).geometry == GEOMETRIES["qwen3-30b-a3b"]


@pytest.mark.parametrize("flags", [["--geometries", "llama-3.1-8b,llama-70b"], ["--budgets", "top-p,lots"],
                                   ["--budgets", "0"], ["--prefill", "8K,x"], ["--decode", "1M,zz"], ["--sinks", "-1"]])
def test_bench_attention_refuses_bad_lists_at_parse_time(flags, capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["bench", "attention", *flags])
    assert err.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_bench_attention_takes_token_sizes_like_bench_model():
    args = build_parser().parse_args(["bench", "attention", "--prefill", "32K,1M", "--decode", "128K",
                                      "--budgets", "top-p,2K", "--geometries", "qwen3-30b-a3b"])
    assert (args.prefill, args.decode, args.budgets) == ([32768, 2**20], [131072], ["top-p", 2048])
    assert args.geometries == ["qwen3-30b-a3b"]
    assert build_parser().parse_args(["bench", "attention"]).geometries == list(attention_geometries())


def test_bench_attention_skips_a_half_given_an_empty_list_but_not_both():
    """``--prefill ""`` times decode only (as the reproduce scripts run it); with ``--decode ""`` too there is
    nothing to time, which stops before any GPU work."""
    from rtpurbo.bench import attention

    args = build_parser().parse_args(["bench", "attention", "--prefill", "", "--decode", "1M"])
    assert (args.prefill, args.decode) == ([], [2**20])
    with pytest.raises(SettingsError, match="nothing to time"):
        attention.run(build_parser().parse_args(["bench", "attention", "--prefill", "", "--decode", ""]))


def attention_geometries():
    from rtpurbo.bench.attention_common import GEOMETRIES as geometries

    return geometries


# --- bench attention's bytes model ---------------------------------------------------------------------------------
def test_decode_bytes_charge_indexer_keys_only_to_steps_that_select():
    """One retrieval KV head of 4 (head dim 16, bf16: 64 bytes of K + V per key), W 32 + S 4, L 1000: the step over
    every key reads K/V only (the top-p = 1 kernels read no indexer keys); a step that selects 100 keys also reads the
    retrieval head's L indexer keys (16 dims, bf16)."""
    from rtpurbo.bench.attention_common import Geometry, decode_bytes
    from rtpurbo.bench.attention_decode import _decode_rates

    geom = Geometry("small", n_q=8, n_kv=4, head_dim=16)
    assert geom.n_retrieval() == 1
    row, length = 2 * 16 * 2, 1000
    local = 3 * 36 * row
    assert decode_bytes(geom, length, 32, 4, None) == (4 * length * row, local + length * row)
    assert decode_bytes(geom, length, 32, 4, 100) == (4 * length * row, local + 100 * row + length * 16 * 2)
    dense, sparse = decode_bytes(geom, length, 32, 4, 100)
    rates = _decode_rates(dict(dense_bytes=dense, sparse_bytes=sparse, sparse_all_bytes=decode_bytes(geom, length, 32, 4,
                                                                                                    None)[1],
                               ideal_speedup=dense / sparse, sparse_us=10.0, sparse_all_one_us=20.0, cudnn_us=40.0,
                               flash_us=None))
    # at the dense rate of 40 us for `dense` bytes, reading local + L keys' K/V ideally takes 40 * all / dense us
    assert rates["sparse_all_one_pct_of_ideal"] == pytest.approx(100 * 40 * (local + length * row) / dense / 20.0)


def test_model_report_and_settings_do_not_import_the_benchmark():
    """settings.py holds what end_to_end.py and model_report.py share, model_variants.py and steps.py what
    end_to_end.py builds on: none of them imports the benchmark loop back (no import circle); a benchmark script
    that imports the parts still loads."""
    import ast
    import importlib.util
    from pathlib import Path

    import rtpurbo.bench as bench

    for name in ("model_report.py", "settings.py", "model_variants.py", "steps.py"):
        tree = ast.parse((Path(bench.__file__).parent / name).read_text())
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "end_to_end" not in modules and "rtpurbo.bench.end_to_end" not in modules, name
    assert LLAMA_31_8B.name in GEOMETRIES and "flash" in SDPA_BACKENDS
    script = Path(bench.__file__).parents[2] / "benchmarks" / "prefill_profile.py"
    spec = importlib.util.spec_from_file_location("prefill_profile", script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
