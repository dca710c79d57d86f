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
])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "error" in capsys.readouterr().err


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
