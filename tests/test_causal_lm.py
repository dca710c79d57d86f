"""A model converted in process behaves as transformers' users call it: model(ids), model.generate(), lm-eval."""
from __future__ import annotations

from io import BytesIO

import pytest
import torch

from rtpurbo import io
from rtpurbo._compat import cache_kwarg
from rtpurbo.config import HeadPlan, SparseConfig
from rtpurbo.convert import convert, unconvert
from rtpurbo.families import geometry
from rtpurbo.generate import generate
from rtpurbo.testing import tiny_model, tiny_tokenizer
from rtpurbo.train.teacher import original_attention

from .conftest import random_ids
from .exported import SPARSE, trained_artifact


def _converted(family: str, **sparse):
    model = tiny_model(family)
    layers, num_kv, num_q, _ = geometry(model.config)
    base_class = type(model)
    convert(model, HeadPlan(layers, num_kv, num_q, [[0]] + [[]] * (layers - 1)), SparseConfig(**{**SPARSE, **sparse}))
    return model, base_class


def _padded(batch: int = 3, length: int = 24):
    ids = random_ids(batch, length, seed=3)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, : 5 * row] = 0
    return ids, mask


def test_forward_starts_a_headwise_cache_and_keeps_the_base_class(family, tmp_path):
    model, base_class = _converted(family)
    ids = random_ids(2, 20)
    with torch.no_grad():
        out = model(ids)  # the base model would start a DynamicCache, which a converted model cannot use
        assert type(out.past_key_values).__name__ == "HeadwiseCache"
        assert torch.equal(out.logits, model(ids, use_cache=False).logits)
        assert model(ids, use_cache=None).past_key_values is not None  # None means the config's use_cache
    assert isinstance(model, base_class) and type(model).__name__ == base_class.__name__
    model.save_pretrained(tmp_path / "hf")  # writes its class into architectures: the base class, loadable
    assert model.config.architectures == [base_class.__name__]
    buffer = BytesIO()
    torch.save(model, buffer)  # the class pickles by name (rtpurbo.causal_lm.Headwise<base>) and loads back
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert type(again) is type(model) and type(model).__qualname__ == f"Headwise{base_class.__name__}"
    with torch.no_grad():
        assert torch.equal(again(ids).logits, out.logits)
    unconvert(model)
    assert type(model) is base_class


def test_generate_matches_rtpurbo_generate_on_a_padded_batch(family):
    model, _ = _converted(family)
    ids, mask = _padded()
    expected = generate(model, tiny_tokenizer(), ids, mask, max_new_tokens=6).sequences
    got = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                         pad_token_id=tiny_tokenizer().pad_token_id)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_generate_with_cuda_graph_keeps_transformers_loop_and_tokens(family):
    """model.generate(cuda_graph=True): decode steps through the graphed decoder (its eager stand-in on the CPU)
    give the tokens of the plain path, greedy and with a logits processor, and every step after the prefill goes
    through the decoder (selection on from the first step: seqlen_threshold 0)."""
    from transformers import LogitsProcessorList, NoBadWordsLogitsProcessor

    model, _ = _converted(family)
    ids, mask = _padded()
    pad = tiny_tokenizer().pad_token_id
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=pad)
    steps = []
    real_step = __import__("rtpurbo.decode_graph", fromlist=["GraphedDecoder"]).GraphedDecoder.step

    def counting(self, input_ids, position_ids):
        steps.append(tuple(input_ids.shape))
        return real_step(self, input_ids, position_ids)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rtpurbo.decode_graph.GraphedDecoder.step", counting)
        graphed = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=pad,
                                 cuda_graph=True)
    assert torch.equal(graphed, plain)
    assert steps == [(3, 1)] * 6  # the prompt's last token, then 5 new ones
    banned = [[int(plain[0, ids.shape[1]])]]  # a processor changes the first token of row 0
    processors = LogitsProcessorList([NoBadWordsLogitsProcessor(banned, eos_token_id=None)])
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=pad, logits_processor=processors)
    assert torch.equal(model.generate(ids, cuda_graph=True, **kw), model.generate(ids, **kw))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        model.generate(ids[:, -1:], attention_mask=mask[:, -1:], cuda_graph=True, pad_token_id=pad)
    with pytest.raises(ValueError, match="use_cache on"):
        model.generate(ids, attention_mask=mask, cuda_graph=True, pad_token_id=pad, use_cache=False)
    with pytest.raises(ValueError, match="no token"):
        model.generate(ids, attention_mask=mask, cuda_graph=True, pad_token_id=pad, max_new_tokens=0)
    with pytest.raises(ValueError, match="logits only"):  # refused before any work
        model.generate(ids, attention_mask=mask, cuda_graph=True, pad_token_id=pad, output_attentions=True,
                       return_dict_in_generate=True)


def test_generate_with_cuda_graph_sizes_its_cache_as_transformers_counts_new_tokens():
    """No length anywhere: transformers adds 20 tokens; max_length counts the prompt; a caller's generation config
    without a length falls back to the model's. The cache returned is refused for more tokens with a clear error."""
    from transformers import GenerationConfig

    model, _ = _converted("llama")
    model.generation_config.max_new_tokens = model.generation_config.max_length = None
    ids, mask = _padded(length=12)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=tiny_tokenizer().pad_token_id)
    for lengths in ({}, dict(max_length=30), dict(generation_config=GenerationConfig(do_sample=False))):
        plain = model.generate(ids, **kw, **lengths)
        assert torch.equal(model.generate(ids, cuda_graph=True, **kw, **lengths), plain)
    assert plain.shape[1] == 12 + 20 and model.generate(ids, max_length=30, **kw).shape[1] == 30
    out = model.generate(ids, cuda_graph=True, max_new_tokens=3, return_dict_in_generate=True, **kw)
    with pytest.raises(ValueError, match="start a new HeadwiseCache"):
        model(out.sequences, use_cache=True, **{cache_kwarg(): out.past_key_values})


def test_training_forward_and_the_teacher_through_the_default_cache():
    """Gradients through the default head-wise cache are those without a cache; the stage-2 teacher's
    original attention runs without one (it is the dense base model)."""
    model, _ = _converted("llama")
    base = tiny_model("llama")
    ids = random_ids(2, 20)
    grads = []
    for use_cache in (None, False):
        model.zero_grad()
        model(ids, labels=ids, use_cache=use_cache).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert grads[0] and all(torch.equal(a, b) for a, b in zip(*grads))
    with torch.no_grad(), original_attention(model):
        out = model(ids)
        assert out.past_key_values is not None and type(out.past_key_values).__name__ != "HeadwiseCache"
        torch.testing.assert_close(out.logits, base(ids).logits)


def test_lm_eval_takes_a_model_converted_in_process(tmp_path):
    """lm-evaluation-harness's HFLM over the model object (no export): its greedy generation is rtpurbo's and its
    log-likelihoods are the model's own."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    artifact, _ = trained_artifact(tmp_path, "llama", [[1], []])
    model, tokenizer = io.load(artifact)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=64, device="cpu")
    contexts = ["w5 w6 w7 w8 w9 w10 w11 w12", "w20 w21 w22 w23 w24 w25"]
    generated = lm.generate_until([Instance("generate_until", {}, (c, {"until": ["w255"], "max_gen_toks": 5,
                                                                          "do_sample": False}), i)
                                   for i, c in enumerate(contexts)])
    for context, text in zip(contexts, generated):
        ids = tokenizer(context, return_tensors="pt").input_ids
        expected = generate(model, tokenizer, ids, max_new_tokens=5).new_tokens[0]
        assert text == tokenizer.decode(expected, skip_special_tokens=True)
    (loglikelihood, _), = lm.loglikelihood([Instance("loglikelihood", {}, (contexts[0], " w13 w14"), 0)])
    full = tokenizer(contexts[0] + " w13 w14", return_tensors="pt").input_ids
    with torch.no_grad():
        logprobs = model(full, use_cache=False).logits.log_softmax(-1)[0, -3:-1]
    assert loglikelihood == pytest.approx(logprobs.gather(-1, full[0, -2:, None]).sum().item(), abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU kernels (flex prefill, Triton decode) need CUDA")
def test_generate_on_gpu_matches_rtpurbo_generate_on_a_padded_batch():
    """The same through the GPU paths: transformers' generate() of an in-process converted model, bf16, left-padded,
    eager, graphed, and by default (graphed on CUDA)."""
    model, _ = _converted("llama")
    model = model.to("cuda", torch.bfloat16)
    ids, mask = (t.cuda() for t in _padded())
    pad = tiny_tokenizer().pad_token_id
    expected = generate(model, tiny_tokenizer(), ids, mask, max_new_tokens=6).sequences
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=pad)
    assert torch.equal(model.generate(ids, cuda_graph=False, **kw), expected)  # eager
    assert torch.equal(model.generate(ids, cuda_graph=True, **kw), expected)
    default = model.generate(ids, return_dict_in_generate=True, **kw)  # a CUDA model's default: graphs
    assert torch.equal(default.sequences, expected)
    assert default.past_key_values.static_capacity is not None  # the cache was switched to graphed decode


@pytest.mark.parametrize("prefill", ["dense", "sparse", "topp"])
def test_the_default_cache_computes_what_no_cache_does(prefill):
    """model(ids) through the head-wise cache it starts equals model(ids, use_cache=False) on a left-padded batch,
    whatever the retrieval heads' prefill (topp: every query over its indexer's token selection in both)."""
    model, _ = _converted("llama", retrieval_prefill=prefill, prefill_top_p=0.5, prefill_min_blocks=0, prefill_band=1,
                          prefill_dense_tail=0)
    ids, mask = _padded(3, 300)
    with torch.no_grad():
        cached = model(ids, attention_mask=mask).logits
        plain = model(ids, attention_mask=mask, use_cache=False).logits
    valid = mask.bool()
    torch.testing.assert_close(cached[valid], plain[valid], rtol=1e-5, atol=1e-5)


def test_generate_reads_use_cache_and_the_mask_as_transformers_does():
    """use_cache=False in the generation config is use_cache=False; a left-padded prompt without a mask gets the mask
    transformers infers from the padding id; accelerate's unwrap_model keeps the head-wise forward."""
    from accelerate import Accelerator
    from transformers import GenerationConfig

    model, _ = _converted("llama")
    ids, mask = _padded()
    pad = 255
    ids = torch.where(mask.bool(), ids.clamp(max=pad - 1), torch.full_like(ids, pad))  # the padding id only there
    common = dict(max_new_tokens=5, do_sample=False, pad_token_id=pad)
    without = model.generate(ids, attention_mask=mask, use_cache=False, **common)
    config = GenerationConfig(use_cache=False, **common)
    assert torch.equal(model.generate(ids, attention_mask=mask, generation_config=config), without)
    assert torch.equal(model.generate(ids, **common), model.generate(ids, attention_mask=mask, **common))
    unwrapped = Accelerator(cpu=True).unwrap_model(Accelerator(cpu=True).prepare(model), keep_fp32_wrapper=False)
    with torch.no_grad():
        assert type(unwrapped(ids[:1]).past_key_values).__name__ == "HeadwiseCache"


def test_attention_weights_are_refused_not_returned_empty():
    """transformers records attention weights from its own attention classes; a converted model's modules form no
    weights, so asking for them raises instead of returning an empty tuple (transformers itself refuses the config's
    output_attentions for this attention implementation)."""
    model, _ = _converted("llama")
    ids = random_ids(1, 12)
    with pytest.raises(ValueError, match="no attention weights"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="no attention weights"):
        model.generate(ids, max_new_tokens=2, output_attentions=True, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="output_attentions"):
        model.config.output_attentions = True
    assert model(ids, output_attentions=False).logits.shape[:2] == (1, 12)


class _OnCuda(torch.Tensor):
    """CPU ids that say they are on CUDA: what the default decision sees of a CUDA prompt."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_generate_decodes_from_cuda_graphs_by_default_only_where_they_apply(monkeypatch):
    """No cuda_graph argument: graphs for a CUDA prompt's plain generation; eager for a CPU prompt, one token, a
    caller's cache, use_cache off, beams or several sequences, attentions or hidden states, fewer than
    GRAPH_MIN_NEW_TOKENS new tokens, assisted decoding (refused later, with why), or RTPURBO_GENERATE_CUDA_GRAPH=0."""
    from rtpurbo.causal_lm import GRAPH_MIN_NEW_TOKENS, graphs_by_default

    model, _ = _converted("llama")
    config = model.generation_config
    ids = random_ids(2, 12)
    cuda_ids = ids.as_subclass(_OnCuda)
    new = dict(max_new_tokens=GRAPH_MIN_NEW_TOKENS)
    assert graphs_by_default(model, cuda_ids, new, config)
    assert not graphs_by_default(model, ids, new, config)
    assert not graphs_by_default(model, None, new, config)
    assert not graphs_by_default(model, cuda_ids[:, :1].as_subclass(_OnCuda), new, config)
    for extra in (dict(past_key_values=object()), dict(use_cache=False), dict(num_beams=2),
                  dict(num_return_sequences=3, do_sample=True), dict(output_attentions=True),
                  dict(output_hidden_states=True), dict(max_new_tokens=GRAPH_MIN_NEW_TOKENS - 1),
                  dict(max_new_tokens=0), dict(prompt_lookup_num_tokens=3)):
        assert not graphs_by_default(model, cuda_ids, {**new, **extra}, config), extra
    monkeypatch.setattr(model, "hf_device_map", {"model.embed_tokens": 0, "lm_head": 1}, raising=False)
    assert not graphs_by_default(model, cuda_ids, new, config)  # spread over two devices
    monkeypatch.setattr(model, "hf_device_map", {"": 0})
    assert graphs_by_default(model, cuda_ids, new, config)
    monkeypatch.setenv("RTPURBO_GENERATE_CUDA_GRAPH", "0")
    assert not graphs_by_default(model, cuda_ids, new, config)
    monkeypatch.setenv("RTPURBO_GENERATE_CUDA_GRAPH", "yes")
    with pytest.raises(ValueError, match="RTPURBO_GENERATE_CUDA_GRAPH"):
        graphs_by_default(model, cuda_ids, new, config)


def test_generate_without_cuda_graph_argument_takes_the_default(monkeypatch):
    """generate() asks graphs_by_default when cuda_graph is not given, and decodes through the graphed decoder (its
    CPU stand-in here) when it says yes: same tokens as eager, every step through the decoder."""
    import rtpurbo.causal_lm as causal_lm

    model, _ = _converted("llama")
    ids, mask = _padded()
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=tiny_tokenizer().pad_token_id)
    eager = model.generate(ids, **kw)
    steps = []
    real_step = __import__("rtpurbo.decode_graph", fromlist=["GraphedDecoder"]).GraphedDecoder.step
    monkeypatch.setattr("rtpurbo.decode_graph.GraphedDecoder.step",
                        lambda self, i, p: steps.append(1) or real_step(self, i, p))
    monkeypatch.setattr(causal_lm, "graphs_by_default", lambda *a: True)
    assert torch.equal(model.generate(ids, **kw), eager) and len(steps) == 5
    assert torch.equal(model.generate(ids, cuda_graph=False, **kw), eager) and len(steps) == 5  # False: eager
    monkeypatch.setattr(causal_lm, "graphs_by_default", lambda *a: False)
    assert torch.equal(model.generate(ids, **kw), eager) and len(steps) == 5
