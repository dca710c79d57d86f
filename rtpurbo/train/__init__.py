"""Training: data shards, stage 1 (indexers), stage 2 (distillation), checkpoints (LoRA adapters: :mod:`rtpurbo.lora`).

    shards = data.load_shards(DIR, tokenizer)                 # rtpurbo data prepare
    runtime = loop.make_runtime("auto")                       # accelerate; DDP under torchrun
    stage1_indexer.train_indexer(model, shards, IndexerSettings(), runtime)
    stage2_distill.distill(model, shards, DistillSettings(), runtime)
    rtpurbo.io.save(model, OUT)                               # plan + indexers + adapters

Each stage works in place on a converted model and returns a JSON-able report.
"""
