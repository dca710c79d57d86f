"""Implementations of the CLI subcommands. Each takes the parsed args and returns a JSON-able dict."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from . import io
from .cli_args import SettingsError, beside, check_index_dim, given_flags, sparse_from_args
from .families import attention_modules, base_window, family_of, geometry
from .files import check_replaceable
from .memory import KVGeometry, kv_table, windowed_retrieval
from .models import (DEFAULT_MODEL, NotABaseModel, exported_settings_of, load_base, load_config, load_tokenizer,
                     resolve_model)
from .convert import check_windows_before_profiling, convert as convert_model
from .config import HeadPlan, PlanMismatch, SparseConfig
from .pipeline import PROFILE_MARKER, ProfileSettings, plan_summary, read_plan, run_domain_profile, run_profile


def say(args: argparse.Namespace, *parts: Any) -> None:
    """Human output goes to stderr when --json owns stdout."""
    print(*parts, file=sys.stderr if args.json else sys.stdout, flush=True)


def device_dtype(args: argparse.Namespace) -> tuple[str, torch.dtype]:
    """(device, dtype) of ``--device`` / ``--dtype``; a CUDA device this torch cannot use is refused before any
    model loads."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        if not torch.cuda.is_available():
            raise SettingsError(f"--device {device}: this torch {torch.__version__} sees no CUDA device (built "
                                f"{'without CUDA' if torch.version.cuda is None else 'with CUDA, none visible'}); "
                                "use --device cpu or auto")
        if index >= torch.cuda.device_count():
            raise SettingsError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if args.dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.bfloat16
    return device, getattr(torch, args.dtype)


def _is_artifact(spec: str) -> bool:
    return io.artifact_path(spec) is not None


def load_model(args: argparse.Namespace, merge_adapters: bool = False):
    """(model, tokenizer) of ``--model``: an artifact or an exported directory as the sparse model it is, else the
    dense base."""
    device, dtype = device_dtype(args)
    if _is_artifact(args.model):
        base = getattr(args, "base", None)
        return io.load(args.model, base=base, base_revision=args.revision if base else None, dtype=dtype,
                       device=device, merge_adapters=merge_adapters)
    source = resolve_model(args.model, args.revision)
    if exported_settings_of(source) is not None:
        return io.load_exported(source, dtype=dtype, device=device)
    return load_base(source, dtype=dtype, device=device)


def require_base(args: argparse.Namespace, flag: str = "--model") -> None:
    """Refuse, before any work, a converted model (an artifact, a shipped adapter, an exported directory) given
    where a dense base is needed (profiling and converting it again would fail, or measure the wrong model)."""
    spec = getattr(args, flag.lstrip("-").replace("-", "_"))
    if _is_artifact(spec):
        base = io.read_config(spec)["base_model"]
        raise NotABaseModel(f"{flag} {spec} is an rtpurbo artifact (already converted); rtpurbo {args.command} takes "
                            f"its base model ({io.recorded_description(base)}: --model {base['spec']}"
                            + (f" --revision {base['commit']}" if base.get("repo_id") else "") + ")")
    source = resolve_model(spec, getattr(args, "revision", None))
    if exported_settings_of(source) is not None:
        raise NotABaseModel(f"{flag} {spec} was written by `rtpurbo export` (a converted model); rtpurbo "
                            f"{args.command} takes a dense base model: give the base of the artifact it was "
                            "exported from")


def profile_settings(args: argparse.Namespace) -> ProfileSettings:
    knockout = {name: getattr(args, name) for name in ("criterion", "knockout_data", "knockout_samples",
                                                       "knockout_windows", "knockout_length", "text_weight")
                if hasattr(args, name)}  # rtpurbo profile's flags
    return ProfileSettings(
        window=args.window, sinks=args.sinks, retrieval_ratio=args.retrieval_ratio,
        profile_length=args.profile_length, profile_samples=args.profile_samples, **knockout,
    )


def check_profile_length(args: argparse.Namespace, config: Any) -> None:
    """Refuse, before profiling, copy-score prompts (``--profile-length``) longer than the model's positions: past
    them its attention is out of range and the scores rank the wrong heads."""
    limit = getattr(config, "max_position_embeddings", None)
    if getattr(args, "criterion", "copy") == "copy" and limit is not None and args.profile_length > limit:
        raise SettingsError(f"--profile-length {args.profile_length} exceeds the model's {limit} positions; "
                            f"use at most {limit}")


def _profile(args: argparse.Namespace, model: torch.nn.Module, tokenizer: Any, out_dir: Path
             ) -> tuple[HeadPlan, dict[str, Any] | None]:
    """(plan, stability): built-in haystacks, plus the ``--data`` documents when given (``--haystacks``). A window
    that conversion would refuse for this model, or prompts longer than its positions, fail first
    (:func:`check_windows_before_profiling`, :func:`check_profile_length`)."""
    check_profile_length(args, model.config)
    settings = profile_settings(args)
    check_windows_before_profiling(model, SparseConfig(window=args.window, sinks=args.sinks), args.retrieval_ratio)
    if args.data is None or args.haystacks == "builtin":
        return run_profile(model, tokenizer, settings, out_dir)[1], None
    from .profile.domains import stability_summary
    from .train.data import load_shards, shard_texts

    docs = shard_texts(load_shards(args.data, tokenizer, pool=None), tokenizer, 3 * settings.profile_length)
    _, plan, stability = run_domain_profile(model, tokenizer, settings, docs, out_dir,
                                            builtin=args.haystacks == "both")
    if stability is not None:
        say(args, stability_summary(stability))
    return plan, stability


KNOCKOUT = ("knockout_data", "knockout_samples", "knockout_windows", "knockout_length", "text_weight")


def check_criterion_flags(args: argparse.Namespace) -> None:
    """Before any work: the knockout flags set the knockout ranking only, the copy score's prompt flags the copy
    score only, and --criterion knockout ranks on task data, not on --data's documents (the copy score's
    haystacks, where the knockout would not run at all)."""
    knockout = given_flags(args, *KNOCKOUT)
    if args.criterion != "knockout" and knockout:
        raise SettingsError(f"{knockout} set(s) the knockout ranking: give --criterion knockout, or leave {knockout} "
                            "out")
    prompts = given_flags(args, "profile_length", "profile_samples")
    if args.criterion == "knockout" and prompts:
        raise SettingsError(f"{prompts} set(s) the copy score's needle prompts; --criterion knockout scores task data "
                            f"(--knockout-length, --knockout-samples): leave {prompts} out")
    if args.criterion == "knockout" and args.data is not None:
        raise SettingsError(f"--data {args.data}: its documents are haystacks of the copy score's needle prompts; "
                            "--criterion knockout ranks on task data (--knockout-data): leave --data out, or "
                            "--criterion knockout")


def check_haystacks(args: argparse.Namespace) -> None:
    """Before any work: --haystacks chooses between the built-in text and --data's documents, so it needs --data."""
    if args.data is None and "haystacks" in getattr(args, "given", ()):
        raise SettingsError(f"--haystacks {args.haystacks} chooses the profiling haystacks of --data's documents: give "
                            "--data, or leave --haystacks out")


def profile(args: argparse.Namespace) -> dict[str, Any]:
    require_base(args)  # a converted model's local heads are windowed already: its scores would not be the base's
    check_criterion_flags(args)
    check_haystacks(args)
    check_replaceable(args.out, PROFILE_MARKER)  # before profiling, not after
    model, tokenizer = load_model(args)
    plan, stability = _profile(args, model, tokenizer, args.out)
    summary = plan_summary(plan)
    say(args, f"retrieval KV heads: {summary['retrieval_kv_heads']}/{summary['total_kv_heads']} "
               f"by layer {summary['by_layer']}")
    say(args, f"wrote {args.out}/head_plan.json, head_scores.json, head_plan.png"
              + (", domain_stability.json" if stability else ""))
    return {"out": str(args.out), "plan": summary, "domain_stability": stability}


def convert(args: argparse.Namespace) -> dict[str, Any]:
    require_base(args)
    flags = given_flags(args, "retrieval_ratio", "profile_length", "profile_samples", "haystacks")
    if args.plan is not None and flags:  # the plan file replaces the profiling these flags set
        raise SettingsError(f"{flags} set(s) the profiling that --plan {args.plan} replaces: leave {flags} out, "
                            "or --plan to profile now")
    check_haystacks(args)
    check_index_dim(args.index_dim, geometry(load_config(args.model, args.revision))[3])
    check_replaceable(args.out, io.CONFIG_NAME)  # before profiling and training, not after
    profile_dir = beside(args.out, "-profile")
    if args.plan is None:
        check_replaceable(profile_dir, PROFILE_MARKER)
    if args.train:
        from .train.commands import check_checkpoints, check_training_data

        check_training_data(args)
        check_checkpoints(args, ["indexer", "distill"])
    else:
        from .train.commands import check_no_training

        check_no_training(args)
    model, tokenizer = load_model(args)
    if args.plan is not None:
        plan, from_plan = read_plan(args.plan, model.config)
        sparse = sparse_from_args(args, **from_plan)
    else:
        sparse = sparse_from_args(args)
        plan, _ = _profile(args, model, tokenizer, profile_dir)
    convert_model(model, plan, sparse)
    training = None
    if args.train:
        from .train.commands import train_converted

        training = train_converted(args, model, tokenizer)
    io.save(model, args.out)
    if training is not None:
        from .train.commands import write_reports

        write_reports(args.out, training.pop("reports"))
    say(args, f"saved {args.out} ({plan.num_retrieval()} retrieval KV heads, W={sparse.window}, S={sparse.sinks})")
    return {"out": str(args.out), "plan": plan_summary(plan), "sparse": sparse.to_dict(), "training": training}


def generate(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import TextStreamer

    from .causal_lm import graphs_by_default
    from .generate import generate as run_generate

    if "temperature" in getattr(args, "given", ()) and not args.sample:  # greedy decoding has no temperature
        raise SettingsError(f"--temperature {args.temperature} sets the sampling temperature: give --sample with it, "
                            "or leave --temperature out for greedy decoding")
    model, tokenizer = load_model(args, merge_adapters=True)
    converted = getattr(model, "rtpurbo_plan", None) is not None
    if converted and args.top_p is not None:
        model.rtpurbo_sparse.top_p = args.top_p
    if converted and args.seqlen_threshold is not None:
        model.rtpurbo_sparse.seqlen_threshold = args.seqlen_threshold
    text = args.prompt
    if not args.no_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    device = next(model.parameters()).device
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not tokens:
        raise SettingsError(f"--prompt {args.prompt!r} has no tokens; give some text")
    ids = torch.tensor([tokens], device=device)
    streamer = None if args.json else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if converted:
        # --cuda-graph / --no-cuda-graph, else as model.generate() decides by default (graphs on CUDA)
        graphs = args.cuda_graph
        if graphs is None:
            graphs = graphs_by_default(model, ids, {"max_new_tokens": args.max_new_tokens}, model.generation_config)
        result = run_generate(model, tokenizer, ids, max_new_tokens=args.max_new_tokens,
                              prefill_chunk=args.prefill_chunk, do_sample=args.sample, temperature=args.temperature,
                              streamer=streamer, cuda_graph=graphs)
        new, stats = result.new_tokens[0], result.cache.stats.summary()
        kv = {"allocated_bytes": result.cache.allocated_bytes(), "used_bytes": result.cache.used_bytes()}
    else:
        if args.cuda_graph:
            raise SettingsError(f"--cuda-graph decodes through the head-wise cache; {args.model} is a dense base model: "
                                "give an artifact, or leave --cuda-graph out")
        for flag, value in (("--top-p", args.top_p), ("--seqlen-threshold", args.seqlen_threshold),
                            ("--prefill-chunk", args.prefill_chunk)):
            if value is not None:  # the indexer's selection and the head-wise prefill: a dense model has neither
                raise SettingsError(f"{flag} applies to a converted model (an rtpurbo artifact); {args.model} is a "
                                    "dense base model")
        say(args, "(dense base model: no rtpurbo artifact given)")
        sampling = {"do_sample": True, "temperature": args.temperature} if args.sample else {"do_sample": False}
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=args.max_new_tokens, streamer=streamer,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        new, stats, kv = out[0, ids.shape[1]:], {}, {}
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "new_tokens": int(new.numel()),
            "selection": stats, "kv_cache": kv}


def export(args: argparse.Namespace) -> dict[str, Any]:
    from .export import ExportError, export as export_model
    from .export.writer import MODELING_FILE, describe

    if not _is_artifact(args.model):
        raise ExportError(f"--model {args.model!r} is not an rtpurbo artifact; export writes a converted model "
                          "(e.g. --model smollm2-135m-rtpurbo, or a directory written by rtpurbo convert)")
    check_replaceable(args.out, MODELING_FILE)
    model, tokenizer = load_model(args, merge_adapters=True)
    if args.seqlen_threshold is not None:
        model.rtpurbo_sparse.seqlen_threshold = args.seqlen_threshold
    out = export_model(model, tokenizer, args.out, max_shard_size=args.max_shard_size)
    result = describe(out)
    say(args, f"wrote {out}: {', '.join(result['files'])}")
    say(args, f"load: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    say(args, f"serve: transformers serve {out} --trust-remote-code")
    return result


def lm_eval_task(args: argparse.Namespace) -> dict[str, Any]:
    from .data.task_data import load_task_data
    from .export.lm_eval_task import TASK_NAME, write_task

    check_replaceable(args.out, f"{TASK_NAME}.yaml")  # before any work; write_task replaces OUT whole
    spec, revision = (io.base_spec(args.model, args.base, args.revision) if _is_artifact(args.model)
                      else (args.model, args.revision))
    tokenizer = load_tokenizer(spec, revision)
    held = load_task_data(args.data, tokenizer).samples
    samples = [s for s in held
               if (not args.tasks or s.task in args.tasks) and (not args.lengths or s.length in args.lengths)]
    if not samples:
        raise SettingsError(f"{args.data} holds no samples of --tasks / --lengths as given; it holds tasks "
                            f"{', '.join(sorted({s.task for s in held}))} at lengths "
                            f"{', '.join(str(n) for n in sorted({s.length for s in held}))}")
    result = write_task(samples, tokenizer, args.out)
    say(args, f"wrote {result['items']} items to {args.out}; run: lm_eval --model hf --model_args "
              f"pretrained=DIR,trust_remote_code=True,max_length={result['max_length']} --tasks {result['task']} "
              f"--include_path {args.out}")
    say(args, f"max_length={result['max_length']} keeps every prompt whole (the harness cuts prompts to max_length - "
              f"{result['max_gen_toks']}); for rtpurbo eval's numbers, DIR is `rtpurbo export --seqlen-threshold 0`, "
              "as rtpurbo eval selects at every length")
    say(args, f"the same prompt ids for rtpurbo eval: --data {args.out / 'eval_data.npz'} "
              f"({result['prompts_reencoded_differently']} of {result['items']} re-encode differently from --data)")
    return result


def info(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    windows: list[int | None] = []
    if args.layers or args.kv_heads or args.head_dim:
        if not (args.layers and args.kv_heads and args.head_dim):
            raise SettingsError("--layers, --kv-heads and --head-dim go together: give all three, or none")
        if args.model != DEFAULT_MODEL or args.base or args.revision:
            raise SettingsError(f"--layers, --kv-heads and --head-dim describe a geometry instead of a model: leave "
                                f"--model {args.model} out, or the geometry flags")
        retrieval = max(1, round(args.retrieval_ratio * args.layers * args.kv_heads))
        geo = _kv_geometry(args.layers, args.kv_heads, args.head_dim, retrieval, args)
        result["geometry"] = {"layers": args.layers, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                              "retrieval_kv_heads": retrieval}
    else:
        plan, sparse, base_config = _info_model(args)
        layers, kv_heads, q_heads, head_dim = geometry(base_config)
        if plan is not None:
            try:
                plan.check_model(layers, kv_heads, q_heads)
            except PlanMismatch as err:
                raise io.ArtifactError(f"{args.model} does not fit the base model {args.base or 'it records'}: "
                                       f"{err}") from err
            overridden = [name for name in ("window", "sinks", "index_dim", "retrieval_ratio")
                          if name in getattr(args, "given", ())]
            if overridden:  # the converted model's own settings are what its cache holds
                flags = ", ".join("--" + name.replace("_", "-") for name in overridden)
                raise SettingsError(f"{flags}: {args.model} is a converted model with its own plan (W={sparse.window}, "
                                    f"S={sparse.sinks}, d_idx={sparse.index_dim}); leave {flags} out")
            args.window, args.sinks, args.index_dim = sparse.window, sparse.sinks, sparse.index_dim
            result["plan"] = plan_summary(plan)
            retrieval = plan.num_retrieval()
        else:
            retrieval = max(1, round(args.retrieval_ratio * layers * kv_heads))
        windows = base_windows(base_config)
        own = [w for w in windows if w is not None]
        if own:
            if plan is None:
                args.window = min(args.window, min(own))  # the largest W convert accepts on this base
            result["base_window"] = {"windowed_layers": len(own), "layers": layers, "smallest": min(own),
                                     "largest": max(own)}
        per_layer = ([len(heads) for heads in plan.retrieval] if plan is not None
                     else [retrieval // layers + (i < retrieval % layers) for i in range(layers)])  # spread evenly
        geo = _kv_geometry(layers, kv_heads, head_dim, retrieval, args, windowed_retrieval(windows, per_layer))
        result["geometry"] = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                              "retrieval_kv_heads": retrieval}
    rows = kv_report(geo, windows)
    result["kv_cache"] = rows
    if not args.json:
        print(f"geometry: {result['geometry']}  W={geo.window} S={geo.sinks} d_idx={geo.index_dim} "
              f"bytes/value={geo.bytes_per_value}")
        if "base_window" in result:
            own = result["base_window"]
            print(f"base window: {own['windowed_layers']} of {own['layers']} layers attend over a sliding window of "
                  f"{own['smallest']}" + (f"-{own['largest']}" if own["largest"] != own["smallest"] else "")
                  + f" tokens: their dense cache holds at most that many; convert accepts W <= {own['smallest']}"
                  + ("" if "plan" in result else f" (W={geo.window} here)"))
        if "plan" in result:
            print(f"plan: {result['plan']['retrieval_kv_heads']}/{result['plan']['total_kv_heads']} retrieval "
                  f"KV heads, by layer {result['plan']['by_layer']}")
        print(kv_table(rows))
    return result


def _info_model(args: argparse.Namespace) -> tuple[HeadPlan | None, SparseConfig | None, Any]:
    """(plan, sparse config, base config) of ``info --model``: an artifact's, an exported directory's (plan and
    config read from its config.json), or a base model's (no plan)."""
    from .models import load_config

    if _is_artifact(args.model):
        config = io.read_config(args.model)
        base_config = load_config(*io.base_spec(args.model, args.base, args.revision))
        return HeadPlan.from_dict(config["plan"]), SparseConfig.from_dict(config["sparse"]), base_config
    base_config = load_config(args.model, args.revision)
    if exported_settings_of(resolve_model(args.model, args.revision)) is not None:
        from .export.runtime import ExportedModelError, sparse_settings

        try:
            return *sparse_settings(base_config), base_config
        except ExportedModelError as err:
            raise io.ArtifactError(f"{args.model}: {err}") from err
    family_of(base_config)  # an unsupported family cannot be converted: say so, not its cache sizes
    return None, None, base_config


def base_windows(config: Any) -> list[int | None]:
    """Per layer, the base model's own sliding window (None = full causal), read from the attention modules of a
    weightless (meta-device) model built from ``config``, as :func:`rtpurbo.families.base_window` reads them."""
    from transformers import AutoModelForCausalLM

    family = family_of(config)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return [base_window(family, attn, config) for attn in attention_modules(skeleton)]


def kv_report(geo: KVGeometry, windows: list[int | None]) -> list[dict[str, float]]:
    """:meth:`KVGeometry.report` rows, the dense side holding at most its own window of tokens on a base's
    windowed layers (``windows``: per layer, None = full causal; empty = no window anywhere)."""
    return (dataclasses.replace(geo, dense_windows=tuple(windows)) if windows else geo).report()


def _kv_geometry(layers: int, kv_heads: int, head_dim: int, retrieval: int, args: argparse.Namespace,
                 retrieval_windows: tuple[int, ...] = ()) -> KVGeometry:
    return KVGeometry(layers, kv_heads, head_dim, retrieval, args.window, args.sinks, args.index_dim,
                      args.bytes_per_value, retrieval_windows)
