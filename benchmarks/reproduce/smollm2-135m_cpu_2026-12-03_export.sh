#!/usr/bin/env bash
# Reproduces benchmarks/results/smollm2-135m_cpu_2026-12-03_export.md on a CPU (2 idle cores: about 30 minutes).
# The shipped adapter exported as a Hugging Face directory, then:
#   1. served by `transformers serve --trust-remote-code` and asked through the openai client;
#   2. scored by lm-evaluation-harness on rtpurbo eval's items, next to `rtpurbo eval` on the same items.
set -euo pipefail
OUT=${OUT:-runs/export-cpu}
PORT=${PORT:-8000}
mkdir -p "$OUT"

# --seqlen-threshold 0: retrieval heads select at every length, as rtpurbo eval scores them
rtpurbo export --model smollm2-135m-rtpurbo --seqlen-threshold 0 --out "$OUT/smollm2-135m-rtpurbo-hf"

# 1. serve, ask once plainly and once streamed, compare with generate() in this process
transformers serve "$OUT/smollm2-135m-rtpurbo-hf" --trust-remote-code --host 127.0.0.1 --port "$PORT" \
  > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
python - "$OUT/smollm2-135m-rtpurbo-hf" "$PORT" <<'PY' | tee "$OUT/serve.json"
import json, sys, time, urllib.request
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer
directory, port = sys.argv[1], sys.argv[2]
for _ in range(180):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5); break
    except OSError:
        time.sleep(1)
messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
start = time.time()
served = client.chat.completions.create(model=directory, messages=messages, max_tokens=32, temperature=0)
served_s = time.time() - start
stream = client.chat.completions.create(model=directory, messages=messages, max_tokens=32, temperature=0, stream=True)
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
tokenizer = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
local = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
print(json.dumps({"served": served.choices[0].message.content, "streamed": streamed, "generate": local,
                  "equal": served.choices[0].message.content == streamed == local,
                  "served_seconds": round(served_s, 2)}))
PY
kill $SERVER; trap - EXIT

# 2. the same items through lm_eval (exported directory) and rtpurbo eval (artifact), then item by item
rtpurbo eval --prepare-only --lengths 1024 --samples 2 --out "$OUT/eval"
rtpurbo lm-eval-task --data "$OUT/eval/eval_data.npz" --out "$OUT/lm-eval-task"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \
  --model_args "pretrained=$OUT/smollm2-135m-rtpurbo-hf,trust_remote_code=True" \
  --tasks rtpurbo_tasks --include_path "$OUT/lm-eval-task" --device cpu --batch_size 1 \
  --output_path "$OUT/lm-eval" --log_samples | tee "$OUT/lm-eval.txt"
rtpurbo eval --model smollm2-135m-rtpurbo --rows --data "$OUT/lm-eval-task/eval_data.npz" --ppl-windows 0 \
  --speed-repeats 0 --out "$OUT/eval-same-ids"
python3 benchmarks/lm_eval_vs_rtpurbo_eval.py "$OUT/lm-eval" "$OUT/eval-same-ids" | tee "$OUT/comparison.txt"
