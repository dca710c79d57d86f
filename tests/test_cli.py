"""The command line on a tiny checkpoint: convert with a plan, info, generate, and flag validation."""
import json

import pytest

from rtpurbo import io
from rtpurbo.cli import build_parser, main
from rtpurbo.config import HeadPlan, dumps
from rtpurbo.testing import save_tiny_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny_checkpoint("llama", tmp_path / "base")


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_convert_with_plan_then_info_and_generate(checkpoint, tmp_path, capsys):
    plan = HeadPlan(2, 2, 6, [[1], []])
    (tmp_path / "plan.json").write_text(dumps(plan.to_dict()))
    out = tmp_path / "artifact"
    result = run_json(capsys, ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"),
                               "--window", "8", "--sinks", "2", "--top-p", "0.8", "--out", str(out)])
    assert result["plan"]["retrieval_kv_heads"] == 1 and io.read_config(out)["sparse"]["top_p"] == 0.8

    info = run_json(capsys, ["info", "--model", str(out)])
    rows = {r["context"]: r for r in info["kv_cache"]}
    assert rows[8192]["sparse_bytes"] < rows[8192]["dense_bytes"]

    gen = run_json(capsys, ["generate", "--model", str(out), "--prompt", "w1 w2 w3 w4", "--max-new-tokens", "5",
                            "--no-chat-template", "--prefill-chunk", "2"])
    assert gen["new_tokens"] <= 5 and gen["kv_cache"]["allocated_bytes"] > 0


def test_convert_imports_a_headwise_config(checkpoint, tmp_path, capsys):
    exported = HeadPlan(2, 2, 6, [[0], [0, 1]]).to_headwise_config(sinks=3, window=16)
    (tmp_path / "config.json").write_text(json.dumps(exported))
    out = tmp_path / "artifact"
    run_json(capsys, ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "config.json"), "--out", str(out)])
    config = io.read_config(out)
    assert config["plan"]["retrieval"] == [[0], [0, 1]]
    assert (config["sparse"]["sinks"], config["sparse"]["window"]) == (3, 16)


def test_a_headwise_config_sets_only_what_it_holds(checkpoint, tmp_path, capsys):
    """A headwise_config with only the 0/1 rows leaves --window / --sinks / --seqlen-threshold to the command line;
    one that holds W and S sets them where the flags are absent, and a flag that contradicts it is an error."""
    rows_only = {"headwise_config": HeadPlan(2, 2, 6, [[0], []]).to_headwise_config(4, 8192)["headwise_config"]}
    (tmp_path / "rows.json").write_text(json.dumps(rows_only))
    run_json(capsys, ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "rows.json"), "--window", "32",
                      "--sinks", "2", "--seqlen-threshold", "0", "--out", str(tmp_path / "a")])
    sparse = io.read_config(tmp_path / "a")["sparse"]
    assert (sparse["window"], sparse["sinks"], sparse["seqlen_threshold"]) == (32, 2, 0)
    full = HeadPlan(2, 2, 6, [[0], []]).to_headwise_config(sinks=3, window=16)
    (tmp_path / "full.json").write_text(json.dumps(full))
    argv = ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "full.json")]
    run_json(capsys, argv + ["--window", "16", "--out", str(tmp_path / "b")])  # agrees with the file
    assert (io.read_config(tmp_path / "b")["sparse"]["window"], io.read_config(tmp_path / "b")["sparse"]["sinks"]) \
        == (16, 3)
    assert main(argv + ["--window", "32", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--window 32 (the file says 16)" in err and not (tmp_path / "c").exists()


def test_an_artifact_of_a_relative_base_path_loads_from_anywhere(checkpoint, tmp_path, capsys, monkeypatch):
    plan = HeadPlan(2, 2, 6, [[1], []])
    (tmp_path / "plan.json").write_text(dumps(plan.to_dict()))
    monkeypatch.chdir(tmp_path)
    run_json(capsys, ["convert", "--model", "base", "--plan", "plan.json", "--window", "8", "--out", "artifact"])
    assert io.read_config(tmp_path / "artifact")["base_model"]["spec"] == str(checkpoint.resolve())
    monkeypatch.chdir(tmp_path.parent)
    argv = ["generate", "--model", str(tmp_path / "artifact"), "--prompt", "w1 w2", "--max-new-tokens", "2",
            "--no-chat-template"]
    run_json(capsys, argv)
    checkpoint.rename(tmp_path / "moved")  # the base moves: the error names it and --base points at it
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"converted from the base model {str(checkpoint.resolve())!r}" in err and "--base" in err
    run_json(capsys, argv + ["--base", str(tmp_path / "moved")])


def test_an_output_directory_of_other_files_is_refused_before_any_work(checkpoint, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep me")
    assert main(["convert", "--model", str(checkpoint), "--out", str(tmp_path / "mine")]) == 2
    assert "is not an earlier output of this command" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.md").read_text() == "keep me"
    assert not (tmp_path / "mine-profile").exists()  # refused before profiling


def test_info_refuses_an_unsupported_family(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    assert main(["info", "--model", str(tmp_path / "gpt2")]) == 2
    assert "model_type 'gpt2' is not supported" in capsys.readouterr().err


def test_info_for_a_geometry_given_by_flags(capsys):
    info = run_json(capsys, ["info", "--layers", "32", "--kv-heads", "8", "--head-dim", "128"])
    one_m = [r for r in info["kv_cache"] if r["context"] == 1048576][0]
    assert one_m["dense_bytes"] == 2 * 32 * 8 * 128 * 2 * 1048576
    assert one_m["ratio"] > 5


@pytest.mark.parametrize("argv", [
    ["convert", "--out", "x", "--window", "0"],
    ["convert", "--out", "x", "--retrieval-ratio", "1.5"],
    ["convert", "--out", "x", "--top-p", "0"],
    ["profile"],  # --out is required
    ["convert", "--out", "x", "--sinks", "-1"],
    ["convert", "--out", "x", "--min-tokens", "-3"],
    ["convert", "--out", "x", "--max-tokens", "0"],
    ["convert", "--out", "x", "--seqlen-threshold", "-1"],
    ["convert", "--out", "x", "--impl", "nonsense"],
    ["convert", "--out", "x", "--decode-impl", "nonsense"],
    ["convert", "--out", "x", "--device", "gpu"],
    ["export", "--out", "x", "--max-shard-size", "banana"],
    ["export", "--out", "x", "--seqlen-threshold", "-5"],
    ["generate", "--prompt", "hi", "--sample", "--temperature", "-1"],
    ["profile", "--out", "x", "--criterion", "knockout", "--text-weight", "7"],
    ["profile", "--out", "x", "--criterion", "knockout", "--text-weight", "nan"],
    ["profile", "--out", "x", "--criterion", "knockout", "--knockout-windows", "-3"],
    ["data", "prepare", "--out", "x", "--synthetic-ratio", "1"],  # some synthetic sequences, not all
])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_flag_values_that_parse(capsys):
    args = build_parser().parse_args(["export", "--out", "x", "--max-shard-size", "20KB", "--device", "cuda:1"])
    assert (args.max_shard_size, args.device) == (20_000, "cuda:1")
    assert build_parser().parse_args(["export", "--out", "x"]).max_shard_size == 5 * 10**9
    knockout = ["profile", "--out", "x", "--criterion", "knockout", "--text-weight"]
    assert [build_parser().parse_args(knockout + [w]).text_weight for w in ("0", "1")] == [0.0, 1.0]  # in [0, 1]


def test_settings_that_conflict_are_one_line_errors(checkpoint, tmp_path, capsys):
    plan = HeadPlan(2, 2, 6, [[1], []])
    (tmp_path / "plan.json").write_text(dumps(plan.to_dict()))
    argv = ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "a")]
    assert main(argv + ["--index-dim", "4", "--index-rope-dims", "6"]) == 2
    err = capsys.readouterr().err
    assert "rtpurbo convert: error: sparse settings: index_rope_dims" in err and "Traceback" not in err
    assert main(argv[:4] + [str(tmp_path / "missing.json")] + argv[5:]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{oops")
    assert main(argv[:4] + [str(tmp_path / "bad.json")] + argv[5:]) == 2
    assert "bad.json is not JSON" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "rtpurbo info: error:" in err and "neither an embedded model" in err and "Traceback" not in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "rtpurbo_config.json").write_text("{oops")
    assert main(["generate", "--model", str(tmp_path / "broken"), "--prompt", "hi"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_cli_runs_without_triton(tmp_path):
    """A CPU install without Triton (plain ``pip install``, no test extra) still gets every subcommand: Triton is
    imported only where a GPU path runs. A child process with ``triton`` made unimportable walks every parser's help
    and runs ``info``."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['triton'] = None\n"
        "from rtpurbo.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "for argv in (['bench', 'attention', '--help'], ['bench', 'model', '--help'], ['eval', '--help'],\n"
        "             ['generate', '--help'], ['convert', '--help']):\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit as err:\n"
        "        assert err.code == 0, argv\n"
        "main(['info', '--layers', '2', '--kv-heads', '2', '--head-dim', '64'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("flags", [["--window", "512"], ["--sinks", "8"], ["--retrieval-ratio", "0.3"],
                                   ["--profile-samples", "3"], ["--profile-length", "1024"],
                                   ["--window", "1024"], ["--profile-samples", "6"]])  # the defaults, given
def test_quickstart_refuses_from_scratch_flags_without_it(flags, tmp_path, capsys, monkeypatch):
    from rtpurbo import quickstart

    monkeypatch.setattr(quickstart, "run", lambda *a, **k: pytest.fail("ran the quickstart"))
    assert main(["quickstart", *flags, "--out", str(tmp_path / "qs")]) == 2
    err = capsys.readouterr().err
    assert f"rtpurbo quickstart: error: {flags[0]} " in err and "--from-scratch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "qs").exists()


def test_quickstart_refuses_an_adapter_with_from_scratch(tmp_path, capsys, monkeypatch):
    from rtpurbo import quickstart

    monkeypatch.setattr(quickstart, "run", lambda *a, **k: pytest.fail("ran the quickstart"))
    assert main(["quickstart", "--from-scratch", "--adapter", str(tmp_path), "--out", str(tmp_path / "qs")]) == 2
    assert "is not used with --from-scratch" in capsys.readouterr().err


def _artifact(checkpoint, tmp_path, capsys):
    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    out = tmp_path / "artifact"
    run_json(capsys, ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"), "--window", "8",
                      "--out", str(out)])
    return out


def test_a_converted_model_as_a_base_is_refused_before_any_work(checkpoint, tmp_path, capsys, monkeypatch):
    """An artifact (or an exported directory) given to convert, profile or quickstart --from-scratch: one line naming
    its base, before profiling (no OUT-profile directory, no output)."""
    from rtpurbo import commands

    from rtpurbo import quickstart

    artifact = _artifact(checkpoint, tmp_path, capsys)
    for module in (commands, quickstart):
        monkeypatch.setattr(module, "run_profile", lambda *a, **k: pytest.fail("profiled"))
    monkeypatch.setattr(commands, "load_base", lambda *a, **k: pytest.fail("loaded a model"))
    for argv in (["convert", "--model", str(artifact), "--out", str(tmp_path / "again")],
                 ["profile", "--model", str(artifact), "--out", str(tmp_path / "profile")],
                 ["quickstart", "--from-scratch", "--model", str(artifact), "--out", str(tmp_path / "qs")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is an rtpurbo artifact (already converted)" in err and f"--model {checkpoint.resolve()}" in err
        assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "base", "plan.json"]


def test_an_exported_directory_runs_as_the_sparse_model(checkpoint, tmp_path, capsys):
    """generate and info take an exported directory as the sparse model it is; convert refuses it."""
    artifact = _artifact(checkpoint, tmp_path, capsys)
    run_json(capsys, ["export", "--model", str(artifact), "--out", str(tmp_path / "exported")])
    gen = run_json(capsys, ["generate", "--model", str(tmp_path / "exported"), "--prompt", "w1 w2 w3",
                            "--max-new-tokens", "3", "--no-chat-template"])
    assert gen["kv_cache"]["allocated_bytes"] > 0  # decoded through the head-wise cache
    info = run_json(capsys, ["info", "--model", str(tmp_path / "exported")])
    assert info["plan"]["by_layer"] == {"0": [1]} and info["plan"]["retrieval_kv_heads"] == 1
    assert main(["convert", "--model", str(tmp_path / "exported"), "--out", str(tmp_path / "c")]) == 2
    assert "written by `rtpurbo export`" in capsys.readouterr().err


@pytest.fixture
def windowed(tmp_path):
    """A tiny Mistral whose own attention is a sliding window of 16 tokens."""
    return save_tiny_checkpoint("mistral", tmp_path / "mistral", sliding_window=16)


def test_info_counts_a_windowed_base_as_it_caches(windowed, capsys):
    info = run_json(capsys, ["info", "--model", str(windowed)])
    layers, kv, head_dim = 2, 2, 16
    row = {r["context"]: r for r in info["kv_cache"]}[8192]
    assert row["dense_bytes"] == 2 * layers * kv * head_dim * 2 * 16  # 16 tokens per layer, not 8192
    # every layer is windowed: the retrieval heads' cache stops at the base window too, the local heads' at S + W
    assert len({r["sparse_bytes"] for r in info["kv_cache"] if r["context"] >= 64}) == 1
    assert info["base_window"]["smallest"] == 16
    main(["info", "--model", str(windowed)])
    out = capsys.readouterr().out
    assert "W=16 " in out and "convert accepts W <= 16" in out


def test_a_window_beyond_the_base_window_is_refused_before_profiling(windowed, tmp_path, capsys, monkeypatch):
    from rtpurbo import commands, quickstart

    def no_profile(*args, **kwargs):
        raise AssertionError("profiled")

    monkeypatch.setattr(commands, "run_profile", no_profile)
    monkeypatch.setattr(quickstart, "run_profile", no_profile)
    for argv in (["convert", "--model", str(windowed), "--window", "32", "--out", str(tmp_path / "a")],
                 ["quickstart", "--from-scratch", "--model", str(windowed), "--window", "32", "--out",
                  str(tmp_path / "qs")],
                 ["profile", "--model", str(windowed), "--window", "32", "--out", str(tmp_path / "p")]):
        assert main(argv) == 2
        assert "sliding window of 16 tokens" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("a-profile", "qs", "p"))


def test_info_refuses_a_base_the_artifact_does_not_fit(checkpoint, tmp_path, capsys):
    artifact = _artifact(checkpoint, tmp_path, capsys)
    other = save_tiny_checkpoint("qwen3", tmp_path / "qwen3")
    assert main(["info", "--model", str(artifact), "--base", str(other)]) == 2
    assert "does not fit the base model" in capsys.readouterr().err


def test_quickstart_out_naming_a_file_and_failures_leave_no_directory(checkpoint, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    assert main(["quickstart", "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"
    artifact = _artifact(checkpoint, tmp_path, capsys)  # made from the llama checkpoint, not from the default model
    assert main(["quickstart", "--adapter", str(artifact), "--out", str(tmp_path / "qs")]) == 2
    assert "other weights" in capsys.readouterr().err and not (tmp_path / "qs").exists()


def test_a_cuda_device_without_cuda_is_refused_before_loading(checkpoint, capsys, monkeypatch):
    import torch

    from rtpurbo import commands

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(commands, "load_base", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["generate", "--model", str(checkpoint), "--device", "cuda", "--prompt", "w1"]) == 2
    assert "--device cuda: this torch" in capsys.readouterr().err


def test_generate_decodes_from_cuda_graphs_as_model_generate_decides(checkpoint, tmp_path, capsys, monkeypatch):
    """--cuda-graph / --no-cuda-graph decide; without either, rtpurbo.causal_lm.graphs_by_default does, as for
    model.generate() (graphs for a CUDA model's plain generation, so eager on this CPU). The CLI hands the decision to
    rtpurbo.generate."""
    import rtpurbo.causal_lm as causal_lm
    import rtpurbo.generate as generate_module

    parse = build_parser().parse_args
    assert parse(["generate", "--model", "m", "--prompt", "p"]).cuda_graph is None
    assert parse(["generate", "--model", "m", "--prompt", "p", "--no-cuda-graph"]).cuda_graph is False
    out = tmp_path / "artifact"
    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    run_json(capsys, ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"), "--window", "8",
                      "--sinks", "2", "--out", str(out)])
    seen, asked = [], []
    real_generate, real_default = generate_module.generate, causal_lm.graphs_by_default
    monkeypatch.setattr(generate_module, "generate",
                        lambda *a, **kw: seen.append(kw["cuda_graph"]) or real_generate(*a, **kw))
    monkeypatch.setattr(causal_lm, "graphs_by_default", lambda *a: asked.append(a[2]) or real_default(*a))
    argv = ["generate", "--model", str(out), "--prompt", "w1 w2 w3", "--max-new-tokens", "4", "--no-chat-template",
            "--device", "cpu"]
    run_json(capsys, argv)
    run_json(capsys, argv + ["--cuda-graph"])  # the graphed loop's CPU stand-in
    run_json(capsys, argv + ["--no-cuda-graph"])
    assert seen == [False, True, False] and asked[0] == {"max_new_tokens": 4}  # then transformers' generate() asks
    monkeypatch.setattr(causal_lm, "graphs_by_default", lambda *a: True)  # what it says on a CUDA model
    run_json(capsys, argv)
    assert seen[-1] is True


def test_generate_on_cuda_decodes_from_cuda_graphs_by_default(checkpoint, tmp_path, capsys, monkeypatch):
    """On a CUDA device, `rtpurbo generate` of an artifact decodes from CUDA graphs unless --no-cuda-graph, and both
    give the same greedy text."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("the CUDA-graph default applies to a model on a CUDA device")
    import rtpurbo.generate as generate_module

    out = _artifact(checkpoint, tmp_path, capsys)
    seen = []
    real_generate = generate_module.generate
    monkeypatch.setattr(generate_module, "generate",
                        lambda *a, **kw: seen.append(kw["cuda_graph"]) or real_generate(*a, **kw))
    argv = ["generate", "--model", str(out), "--prompt", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12", "--max-new-tokens",
            "12", "--no-chat-template", "--device", "cuda", "--dtype", "float32"]
    graphed = run_json(capsys, argv)
    eager = run_json(capsys, argv + ["--no-cuda-graph"])
    assert seen == [True, False]
    assert graphed["new_tokens"] == eager["new_tokens"] and graphed["text"] == eager["text"]


def test_generate_of_a_dense_model_samples_at_temperature_and_refuses_converted_only_flags(checkpoint, capsys):
    """A dense base samples at --temperature (near zero: the greedy answer), as an artifact does; --top-p and
    --prefill-chunk, settings of the head-wise cache, are refused rather than ignored."""
    import torch

    argv = ["generate", "--model", str(checkpoint), "--prompt", "w1 w2 w3 w4 w5 w6 w7 w8", "--no-chat-template",
            "--max-new-tokens", "8"]
    greedy = run_json(capsys, argv)["text"]
    torch.manual_seed(0)
    assert run_json(capsys, argv + ["--sample", "--temperature", "0.0001"])["text"] == greedy
    for flag in (["--top-p", "0.5"], ["--prefill-chunk", "2"]):
        assert main(argv + flag) == 2
        err = capsys.readouterr().err
        assert f"{flag[0]} applies to a converted model" in err and "Traceback" not in err


def test_info_refuses_flags_a_converted_model_or_a_geometry_would_ignore(checkpoint, tmp_path, capsys):
    """An artifact's info reports its own W / S / d_idx and plan: --window (and the like) given with it is refused,
    not silently replaced; so is --model beside the geometry flags, which describe another model."""
    plan = HeadPlan(2, 2, 6, [[1], []])
    (tmp_path / "plan.json").write_text(dumps(plan.to_dict()))
    out = tmp_path / "artifact"
    run_json(capsys, ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"), "--window", "8",
                      "--out", str(out)])
    assert "W=8 " in (main(["info", "--model", str(out)]), capsys.readouterr().out)[1]
    for flag in (["--window", "64"], ["--sinks", "0"], ["--index-dim", "8"], ["--retrieval-ratio", "0.5"]):
        assert main(["info", "--model", str(out)] + flag) == 2
        err = capsys.readouterr().err
        assert f"{flag[0]}: {out} is a converted model with its own plan (W=8," in err and "Traceback" not in err
    assert run_json(capsys, ["info", "--model", str(checkpoint), "--window", "64"])["kv_cache"]  # a base takes it
    assert main(["info", "--model", str(checkpoint), "--layers", "32", "--kv-heads", "8", "--head-dim", "128"]) == 2
    assert "describe a geometry instead of a model" in capsys.readouterr().err


def test_convert_with_a_plan_refuses_profiling_flags_before_any_work(checkpoint, tmp_path, capsys):
    """--retrieval-ratio / --profile-length / --profile-samples set the profiling that --plan replaces: refused with
    a plan (nothing written), not ignored."""
    plan = HeadPlan(2, 2, 6, [[1], []])
    (tmp_path / "plan.json").write_text(dumps(plan.to_dict()))
    argv = ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "a")]
    for flag in (["--retrieval-ratio", "0.9"], ["--profile-length", "64"], ["--profile-samples", "1"]):
        assert main(argv + flag) == 2
        err = capsys.readouterr().err
        assert f"{flag[0]} set(s) the profiling that --plan" in err and "Traceback" not in err
        assert not (tmp_path / "a").exists()
    assert run_json(capsys, argv)["plan"]["retrieval_kv_heads"] == 1


@pytest.mark.parametrize("command", ["profile", "convert"])
def test_a_profile_length_past_the_models_positions_is_refused_before_profiling(checkpoint, tmp_path, capsys,
                                                                               command):
    """Copy-score prompts longer than the model's positions (4096 here) would score the heads out of range: refused
    in one line, nothing written."""
    argv = [command, "--model", str(checkpoint), "--profile-samples", "1", "--out", str(tmp_path / "out")]
    assert main(argv + ["--profile-length", "4097"]) == 2
    err = capsys.readouterr().err
    assert "--profile-length 4097 exceeds the model's 4096 positions" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-profile").exists()


def test_generate_refuses_a_temperature_without_sample_before_loading(checkpoint, tmp_path, capsys, monkeypatch):
    """--temperature sets the sampling temperature: without --sample (greedy decoding) it would do nothing, on a dense
    model and an artifact alike, so it is refused in one line before any model loads."""
    from rtpurbo import commands

    out = _artifact(checkpoint, tmp_path, capsys)
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    for model in (checkpoint, out):
        assert main(["generate", "--model", str(model), "--prompt", "w1 w2", "--temperature", "0.5"]) == 2
        err = capsys.readouterr().err
        assert "--temperature 0.5 sets the sampling temperature: give --sample" in err and "Traceback" not in err
    monkeypatch.undo()
    argv = ["generate", "--model", str(out), "--prompt", "w1 w2", "--max-new-tokens", "2", "--no-chat-template"]
    assert run_json(capsys, argv + ["--sample", "--temperature", "0.5"])["new_tokens"] <= 2


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "BASE", "--prompt", "w1", "--cuda-graph"],
     "--cuda-graph decodes through the head-wise cache; BASE is a dense base model"),
    (["info", "--layers", "32"], "--layers, --kv-heads and --head-dim go together"),
    (["convert", "--model", "BASE", "--train", "--out", "OUT"], "--train needs --data"),
    (["eval", "--model", "BASE", "--reorder-heads", "--out", "OUT"], "--reorder-heads: eval switches plans in place"),
    (["eval", "--model", "BASE", "--merge", "OUT", "--out", "OUT"], "--merge goes with --report-only"),
    (["eval", "--model", "BASE", "--artifacts", "no-name", "--out", "OUT"], "--artifacts takes NAME=PATH"),
    (["eval", "--report-only", "--out", "OUT"], "--report-only: "),
    (["data", "prepare", "--long-range-mix", "--pool", "dev", "--out", "OUT"], "--long-range-mix makes training data"),
])
def test_usage_errors_exit_2_in_one_line_before_any_work(argv, message, checkpoint, tmp_path, capsys):
    """Flags that cannot go together are usage errors, as argparse's own: exit status 2 and one line
    'rtpurbo CMD: error: ...' (not SystemExit's status 1 with a bare message), nothing written."""
    out = tmp_path / "out"
    argv = [str(checkpoint) if a == "BASE" else str(out) if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "error" in line)
    assert line.startswith(f"rtpurbo {argv[0]}: error: ") and message.replace("BASE", str(checkpoint)) in line
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("command", [["export", "--model", "ARTIFACT"], ["convert", "--model", "BASE"],
                                     ["eval", "--model", "BASE", "--rows", "dense"]])
def test_an_out_that_cannot_be_written_is_one_line_before_loading(command, checkpoint, tmp_path, capsys, monkeypatch):
    """An --out where no folder can be made (/proc here, as a read-only filesystem: root is no exception) is a
    one-line error before any model loads, not a traceback from the write at the end."""
    from rtpurbo import commands
    from rtpurbo.eval import commands as eval_commands

    artifact = _artifact(checkpoint, tmp_path, capsys) if "ARTIFACT" in command else None
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(eval_commands, "load_base", lambda *a, **k: pytest.fail("loaded a model"))
    argv = [str(checkpoint) if a == "BASE" else str(artifact) if a == "ARTIFACT" else a for a in command]
    assert main(argv + ["--out", "/proc/rtpurbo-out"]) == 2
    err = capsys.readouterr().err
    assert f"rtpurbo {command[0]}: error: /proc/rtpurbo-out cannot be written: /proc takes no new files" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--rows", "dense", "--plan", "PLAN"], "--plan set(s) the split row, which --rows dense leaves out"),
    (["--rows", "dense", "streaming", "--retrieval-ratio", "0.3"],
     "--retrieval-ratio set(s) the split row, which --rows dense streaming leaves out"),
    (["--rows", "--artifacts", "a=ART", "--plan", "PLAN", "--profile-samples", "2"],
     "--plan, --profile-samples set(s) the split row, which --rows (none) leaves out"),
    (["--plan", "PLAN", "--profile-length", "64"], "--profile-length set(s) the split row's profiling that --plan"),
])
def test_eval_refuses_split_row_flags_that_would_do_nothing(flags, message, checkpoint, tmp_path, capsys, monkeypatch):
    """--plan and the profiling flags only make the split row's plan (and --plan replaces the profiling): without a
    split row, or beside --plan, they are a one-line error before any model loads, not ignored."""
    from rtpurbo.eval import commands as eval_commands

    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    monkeypatch.setattr(eval_commands, "load_base", lambda *a, **k: pytest.fail("loaded a model"))
    flags = [str(tmp_path / "plan.json") if f == "PLAN" else "a=" + str(tmp_path) if f == "a=ART" else f
             for f in flags]
    assert main(["eval", "--model", str(checkpoint), "--out", str(tmp_path / "eval")] + flags) == 2
    err = capsys.readouterr().err
    assert message.replace("PLAN", str(tmp_path / "plan.json")) in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("flags, message", [
    (["--rows", "dense", "streaming", "--reference", "split"],
     "--reference 'split' is not one of this run's rows: dense, streaming"),
    (["--rows", "dense", "--plans", "copy=PLAN", "--artifacts", "a=ART", "--reference", "knockout"],
     "--reference 'knockout' is not one of this run's rows: dense, copy, a"),
    (["--rows", "--reference", "dense"], "--reference 'dense' is not one of this run's rows: (none)"),
])
def test_eval_refuses_a_reference_that_names_no_row_before_loading(flags, message, checkpoint, tmp_path, capsys,
                                                                   monkeypatch):
    """The rows' names follow from --rows, --plans and --artifacts: a --reference that names none of them is a
    one-line error before any model loads (and before the split row's profiling), nothing written."""
    from rtpurbo.eval import commands as eval_commands

    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    monkeypatch.setattr(eval_commands, "load_base", lambda *a, **k: pytest.fail("loaded a model"))
    flags = [("copy=" + str(tmp_path / "plan.json")) if f == "copy=PLAN" else "a=" + str(tmp_path) if f == "a=ART"
             else f for f in flags]
    assert main(["eval", "--model", str(checkpoint), "--out", str(tmp_path / "eval")] + flags) == 2
    err = capsys.readouterr().err
    assert f"rtpurbo eval: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("flags, message", [
    (["--prepare-only", "--plan", "PLAN"],
     "--plan do(es) nothing with --prepare-only, which only writes OUT/eval_data.npz: leave --plan out"),
    (["--prepare-only", "--rows", "dense", "--plans", "copy=PLAN", "--reference", "copy", "--speed-repeats", "0"],
     "--rows, --plans, --reference, --speed-repeats do(es) nothing with --prepare-only"),
    (["--prepare-only", "--artifacts", "a=ART", "--retrieval-ratio", "0.3", "--ci-target", "1"],
     "--artifacts, --retrieval-ratio, --ci-target do(es) nothing with --prepare-only"),
    (["--report-only", "--plan", "PLAN"],
     "--model, --plan do(es) nothing with --report-only, which only rewrites the report from OUT/rows: leave "
     "--model, --plan out"),
    (["--report-only", "--prepare-only", "--lengths", "64", "--ci-target", "1"],
     "--model, --lengths, --prepare-only, --ci-target do(es) nothing with --report-only"),
    (["--report-only", "--device", "cpu", "--top-p", "0.5", "--window", "1024", "--decode", "eager"],
     "--model, --device, --window, --top-p, --decode do(es) nothing with --report-only"),
])
def test_eval_refuses_flags_that_prepare_only_or_report_only_never_read(flags, message, checkpoint, tmp_path, capsys,
                                                                       monkeypatch):
    """--prepare-only writes the task data and --report-only rewrites the report from stored rows: the row flags
    (--plan too, though the default --rows has a split row), and what only scores or times rows, do nothing there
    and are a one-line error before any work, nothing written. --report-only reads nothing but --out, --merge,
    --reference and --json: the model, device and sparse settings too (--window given even at its default: the flag
    records that it was given) are refused."""
    from rtpurbo.eval import commands as eval_commands

    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    monkeypatch.setattr(eval_commands, "load_tokenizer", lambda *a, **k: pytest.fail("loaded a tokenizer"))
    monkeypatch.setattr(eval_commands, "rebuild_report", lambda *a, **k: pytest.fail("rebuilt the report"))
    flags = [str(tmp_path / "plan.json") if f == "PLAN" else ("copy=" + str(tmp_path / "plan.json"))
             if f == "copy=PLAN" else "a=" + str(tmp_path) if f == "a=ART" else f for f in flags]
    assert main(["eval", "--model", str(checkpoint), "--out", str(tmp_path / "eval")] + flags) == 2
    err = capsys.readouterr().err
    assert f"rtpurbo eval: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def test_eval_refuses_save_corpus_without_prepare_only_and_first_sample_with_data(checkpoint, tmp_path, capsys,
                                                                                  monkeypatch):
    """--save-corpus is written only by --prepare-only, and --first-sample numbers samples a run builds, which a run
    on --data does not: given where they would do nothing, a one-line error before any work, nothing written."""
    from rtpurbo.eval import commands as eval_commands

    monkeypatch.setattr(eval_commands, "load_tokenizer", lambda *a, **k: pytest.fail("loaded a tokenizer"))
    (tmp_path / "data.npz").write_bytes(b"")
    cases = [(["--save-corpus", str(tmp_path / "corpus.json.gz")], "--save-corpus writes the corpus that"),
             (["--first-sample", "100", "--data", str(tmp_path / "data.npz")], "--first-sample numbers the samples")]
    for flags, message in cases:
        assert main(["eval", "--model", str(checkpoint), "--out", str(tmp_path / "eval")] + flags) == 2
        err = capsys.readouterr().err
        assert f"rtpurbo eval: error: {message}" in err and "Traceback" not in err
        assert not (tmp_path / "eval").exists() and not (tmp_path / "corpus.json.gz").exists()


def test_eval_prepare_only_takes_the_flags_it_reads(checkpoint, tmp_path, monkeypatch):
    """The data flags (--lengths, --samples, --tasks, --ppl-*, --split, --workers, --quick) reach --prepare-only's
    data building, and --report-only with --reference / --merge reaches the report: not refused."""
    from rtpurbo.eval import commands as eval_commands

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(eval_commands, "build_data", reached)
    monkeypatch.setattr(eval_commands, "load_dev_corpus", lambda: None)
    with pytest.raises(Reached):
        main(["eval", "--model", str(checkpoint), "--out", str(tmp_path / "eval"), "--prepare-only", "--quick",
              "--lengths", "64", "--samples", "1", "--tasks", "niah_number", "--ppl-windows", "1", "--ppl-length",
              "64", "--split", "tune", "--workers", "2"])
    monkeypatch.setattr(eval_commands, "rebuild_report", reached)
    with pytest.raises(Reached):
        main(["eval", "--report-only", "--reference", "split", "--out", str(tmp_path / "eval2")])


@pytest.mark.parametrize("reference", ["copy", "a"])
def test_eval_takes_a_reference_among_the_plans_and_artifacts_rows(reference, checkpoint, tmp_path, monkeypatch):
    """A --plans or --artifacts row's name is a row of the run: --reference to it passes the check and the run goes
    on to load the model."""
    from rtpurbo.eval import commands as eval_commands

    class Loaded(Exception):
        pass

    def load_base(*args, **kwargs):
        raise Loaded

    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    monkeypatch.setattr(eval_commands, "load_base", load_base)
    with pytest.raises(Loaded):
        main(["eval", "--model", str(checkpoint), "--out", str(tmp_path / "eval"), "--rows", "dense", "--plans",
              "copy=" + str(tmp_path / "plan.json"), "--artifacts", "a=" + str(tmp_path), "--reference", reference])


@pytest.mark.parametrize("flags, message", [
    (["--knockout-data", "tune.npz"], "--knockout-data set(s) the knockout ranking: give --criterion knockout"),
    (["--criterion", "copy", "--knockout-samples", "1", "--knockout-windows", "2", "--knockout-length", "64",
      "--text-weight", "0.2"], "--knockout-samples, --knockout-windows, --knockout-length, --text-weight set(s) the "
                               "knockout ranking"),
    (["--criterion", "knockout", "--data", "shards"], "--criterion knockout ranks on task data (--knockout-data)"),
    (["--criterion", "knockout", "--profile-length", "64", "--profile-samples", "1"],
     "--profile-length, --profile-samples set(s) the copy score's needle prompts; --criterion knockout scores task"),
])
def test_profile_refuses_criterion_flags_that_would_do_nothing(flags, message, checkpoint, tmp_path, capsys,
                                                               monkeypatch):
    """The knockout flags only set the knockout ranking (the copy score ignored them, beyond recording them), and
    --data's documents are copy-score haystacks (with them the knockout did not run at all): one-line errors before
    any model loads."""
    from rtpurbo import commands

    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["profile", "--model", str(checkpoint), "--out", str(tmp_path / "p")] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "p").exists()


@pytest.mark.parametrize("command, flags, message", [
    ("profile", ["--haystacks", "builtin"], "--haystacks builtin chooses the profiling haystacks of --data's documents"),
    ("profile", ["--haystacks", "data"], "--haystacks data chooses the profiling haystacks of --data's documents"),
    ("convert", ["--haystacks", "both"], "--haystacks both chooses the profiling haystacks of --data's documents"),
    ("convert", ["--plan", "PLAN", "--haystacks", "data", "--data", "shards"],
     "--haystacks set(s) the profiling that --plan"),
])
def test_haystacks_without_data_or_profiling_is_refused_before_loading(command, flags, message, checkpoint, tmp_path,
                                                                        capsys, monkeypatch):
    """--haystacks chooses between the built-in text and --data's documents: without --data (or, in convert, with
    --plan, which replaces profiling) it would do nothing, or ('data') fail after loading the model."""
    from rtpurbo import commands

    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    flags = [str(tmp_path / "plan.json") if f == "PLAN" else f for f in flags]
    assert main([command, "--model", str(checkpoint), "--out", str(tmp_path / "out")] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_generate_seqlen_threshold_reaches_the_sparse_config_and_lets_top_p_select(checkpoint, tmp_path, capsys,
                                                                                   monkeypatch):
    """An artifact's retrieval heads select only from its seqlen_threshold on (the shipped adapter's is 524288), so on
    a short prompt --top-p changed nothing; --seqlen-threshold sets it for the run, and the selection stats then show
    --top-p at work. A dense model has no selection: refused there, as --top-p is."""
    import rtpurbo.generate as generate_module

    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], [0]]).to_dict()))
    out = tmp_path / "artifact"
    run_json(capsys, ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"), "--window", "4",
                      "--sinks", "1", "--min-tokens", "0", "--recent", "1", "--seqlen-threshold", "4096",
                      "--out", str(out)])
    seen = []
    real_generate = generate_module.generate
    monkeypatch.setattr(generate_module, "generate",
                        lambda model, *a, **kw: seen.append(model.rtpurbo_sparse.seqlen_threshold)
                        or real_generate(model, *a, **kw))
    argv = ["generate", "--model", str(out), "--prompt", " ".join(f"w{i}" for i in range(40)), "--no-chat-template",
            "--max-new-tokens", "6", "--device", "cpu"]
    assert run_json(capsys, argv + ["--top-p", "0.2"])["selection"]["samples"] == 0  # below the artifact's 4096
    low = run_json(capsys, argv + ["--top-p", "0.2", "--seqlen-threshold", "0"])["selection"]
    high = run_json(capsys, argv + ["--top-p", "0.95", "--seqlen-threshold", "0"])["selection"]
    assert seen == [4096, 0, 0]
    assert low["samples"] == high["samples"] > 0 and low["mean_selected"] < high["mean_selected"]
    assert main(["generate", "--model", str(checkpoint), "--prompt", "w1", "--seqlen-threshold", "0"]) == 2
    assert "--seqlen-threshold applies to a converted model" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--indexer-steps", "5", "--distill-data", "d2", "--seed", "3"],
     "--distill-data, --seed, --indexer-steps set(s) the training that --train runs: add --train"),
    (["--resume"], "--resume set(s) the training that --train runs"),
    (["--data", "shards"], "--data shards: with --plan (no profiling to take haystacks from it) it is only --train's"),
])
def test_convert_refuses_training_flags_without_train(flags, message, checkpoint, tmp_path, capsys, monkeypatch):
    """convert's training flags only act with --train (and --data, with --plan, only there): without it they are a
    one-line error before any model loads, not ignored; the same convert without them runs."""
    from rtpurbo import commands

    (tmp_path / "plan.json").write_text(dumps(HeadPlan(2, 2, 6, [[1], []]).to_dict()))
    argv = ["convert", "--model", str(checkpoint), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "a")]
    real_load = commands.load_model
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(argv + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "a").exists()
    monkeypatch.setattr(commands, "load_model", real_load)
    assert run_json(capsys, argv)["plan"]["retrieval_kv_heads"] == 1
