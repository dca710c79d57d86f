"""transformers' model.generate() at batch 1 on a GPU, SmolLM2-135M geometry with random weights (30 layers, 9 q / 3
KV heads, head dim 64, bf16): the dense base, then the same model converted (15 of 90 KV heads retrieval, W 1024,
S 4, top-p 0.9), eager and with cuda_graph=True. Wall times of whole generate() calls (medians of 3 after one
warm-up); ms per token = (64-token call - 1- or 2-token call) / the tokens between. Run from the repository root:
python3 hf_generate.py [prompt lengths...]. Each model gets its own copy of the config (convert() points its
model's config at rtpurbo's attention)."""
import copy, json, sys, time, torch
from transformers import LlamaConfig, AutoModelForCausalLM
from rtpurbo.convert import convert
from rtpurbo.config import HeadPlan, SparseConfig
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=65536, rope_theta=100000.0,
                  tie_word_embeddings=True)
def timed(fn, reps=3):
    fn()
    out = []
    for _ in range(reps):
        torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize(); out.append(time.perf_counter() - t)
    return sorted(out)[len(out) // 2] * 1e3
rows = []
for L in [int(x) for x in sys.argv[1:]] or (4096, 16384):
    base = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(10, 49000, (1, L), device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)
    new = 64
    dense_full = timed(lambda: base.generate(ids, max_new_tokens=new, **kw))
    dense_pre = timed(lambda: base.generate(ids, max_new_tokens=1, **kw))
    plan = HeadPlan(30, 3, 9, [[0] if l % 2 == 0 else [] for l in range(30)])  # 15 of 90 KV heads retrieval
    convert(base, plan, SparseConfig(window=1024, sinks=4, top_p=0.9))
    sp_full = timed(lambda: base.generate(ids, max_new_tokens=new, **kw))
    sp_pre = timed(lambda: base.generate(ids, max_new_tokens=1, **kw))
    g_full = timed(lambda: base.generate(ids, max_new_tokens=new, cuda_graph=True, **kw))
    g_pre = timed(lambda: base.generate(ids, max_new_tokens=2, cuda_graph=True, **kw))
    same = torch.equal(base.generate(ids, max_new_tokens=16, **kw), base.generate(ids, max_new_tokens=16, cuda_graph=True, **kw))
    row = dict(L=L, new=new, dense_ms=dense_full, dense_prefill_ms=dense_pre, sparse_eager_ms=sp_full,
               sparse_prefill_ms=sp_pre, sparse_graph_ms=g_full, sparse_graph_2tok_ms=g_pre, same_tokens=same,
               dense_ms_per_token=(dense_full - dense_pre) / (new - 1),
               sparse_eager_ms_per_token=(sp_full - sp_pre) / (new - 1),
               sparse_graph_ms_per_token=(g_full - g_pre) / (new - 2))
    print(json.dumps(row), flush=True)
    del base; torch.cuda.empty_cache()
