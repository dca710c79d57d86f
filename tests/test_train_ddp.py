"""The same stage-2 code under torchrun: 2 CPU processes (gloo DDP) follow the 1-process loss curve."""
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from rtpurbo.testing import save_tiny_checkpoint

from .test_train_data import make_tiny_shards, one_thread  # noqa: F401 (autouse fixture)

WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert
from rtpurbo.models import load_base
from rtpurbo.train.data import load_shards
from rtpurbo.train.loop import LoopSettings, make_runtime
from rtpurbo.train.stage2_distill import DistillSettings, distill
from rtpurbo.lora import LoraSettings
model_dir, shard_dir, out = sys.argv[1:4]
runtime = make_runtime("cpu")
model, tokenizer = load_base(model_dir)
convert(model, HeadPlan(2, 2, 6, [[0], [1]]), SparseConfig(seqlen_threshold=0, window=16, sinks=2, top_p=0.8, min_tokens=4, recent=4))
settings = DistillSettings(loop=LoopSettings(steps=4, batch_size=2, lr=1e-2, warmup=1, progress=False),
                           indexer_queries=16, lora=LoraSettings(r=4))
report = distill(model, load_shards(shard_dir, tokenizer), settings, runtime)
if runtime.is_main:
    json.dump({"world": runtime.world, "kl": [h["kl"] for h in report["history"]]}, open(out, "w"))
"""


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")
def test_two_process_ddp_matches_one_process(tmp_path, monkeypatch):
    model_dir = save_tiny_checkpoint("llama", tmp_path / "model")
    make_tiny_shards(tmp_path / "shards", seq_len=64, sequences=10)
    (tmp_path / "worker.py").write_text(WORKER)
    run1, run2 = tmp_path / "run1.json", tmp_path / "run2.json"
    argv = [str(tmp_path / "worker.py"), str(model_dir), str(tmp_path / "shards")]
    subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", *argv, str(run2)], check=True,
                   capture_output=True, timeout=240)
    monkeypatch.setattr(sys, "argv", [*argv, str(run1)])
    runpy.run_path(argv[0], run_name="__main__")  # the same worker, one process, here
    one, two = json.loads(run1.read_text()), json.loads(run2.read_text())
    assert [one["world"], two["world"]] == [1, 2]
    assert one["kl"] == pytest.approx(two["kl"], rel=1e-4)
