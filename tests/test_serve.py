"""An exported model behind ``transformers serve --trust-remote-code``, called as a client would (openai)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .exported import exported, trained_artifact

MESSAGES = [{"role": "user", "content": "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"}]
NEW_TOKENS = 8
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """(exported directory, base URL) of a running ``transformers serve``; stopped after the test."""
    artifact, _ = trained_artifact(tmp_path, "llama", [[1], []])
    directory = exported(tmp_path, artifact, chat_template=True)
    port = _free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(directory), "--trust-remote-code",
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_listening(port, process, tmp_path / "serve.log")
        yield directory, f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _wait_until_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"transformers serve exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"transformers serve did not listen within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _local_texts(directory: Path) -> dict[str, str]:
    """Greedy continuations of MESSAGES: the exported model's generate(), the same model without its
    head-wise cache, and the dense base model (plain transformers)."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    inputs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    sparse = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    dense = AutoModelForCausalLM.from_pretrained(directory)
    runs = {"headwise": (sparse, {}), "no_cache": (sparse, {"use_cache": False}), "dense": (dense, {})}
    texts = {}
    with torch.no_grad():
        for name, (model, extra) in runs.items():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, **extra)
            texts[name] = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts


def test_chat_completions_through_the_headwise_cache(server):
    from openai import OpenAI

    directory, base_url = server
    client = OpenAI(base_url=base_url, api_key="unused")
    answer = client.chat.completions.create(model=str(directory), messages=MESSAGES, max_tokens=NEW_TOKENS,
                                            temperature=0)
    stream = client.chat.completions.create(model=str(directory), messages=MESSAGES, max_tokens=NEW_TOKENS,
                                            temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    local = _local_texts(directory)
    # the three local decodings differ, so matching one of them says which model and cache served
    assert len(set(local.values())) == 3, local
    assert answer.choices[0].message.content == local["headwise"]
    assert streamed == local["headwise"]
    assert answer.usage.completion_tokens == NEW_TOKENS
