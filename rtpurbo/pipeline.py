"""Profiling as a pipeline stage that writes its artifacts (the CLI is a thin shell).

    profile  : base model -> head_scores.json, head_plan.json, head_plan.png
               (criterion copy: needle prompts on training-pool text; knockout: tune-split task
               data, from ``knockout_data`` or built from the dev pool)
    read_plan: head_plan.json or a config.json with headwise_config (either form) -> HeadPlan
(conversion and saving live in rtpurbo.convert and rtpurbo.io)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import HeadPlan, PlanMismatch, dumps
from .data.needles import KINDS, make_samples, seed_for
from .data.sources import long_documents
from .data.task_data import build_task_data, check_tune_split, load_task_data
from .data.tasks import TASKS
from .headwise import exported_settings, is_rtp_llm_form
from .families import geometry
from .files import written_whole
from .profile.domains import domain_stability, merge_scores
from .profile.knockout import inputs_from_task_data, knockout_profile
from .profile.plot import plot_plan
from .profile.run import HeadScores, plan_from_scores, profile_heads

# Training-pool sources that install in seconds: the default haystack for profiling prompts.
PROFILE_SOURCES = ("jargon-text", "gnu-standards", "c++-annotations", "git-doc")
USER_SEED_OFFSET = 500_000  # profiling seeds of prompts on the user's documents


@dataclass
class ProfileSettings:
    """How heads are profiled (flags of ``rtpurbo profile``)."""

    window: int = 1024
    sinks: int = 4
    retrieval_ratio: float = 0.15
    profile_length: int = 2048
    profile_samples: int = 6  # per needle kind
    haystack_sources: tuple[str, ...] = PROFILE_SOURCES
    seed: int = 0
    criterion: str = "copy"  # or "knockout"
    knockout_data: Path | None = None  # tune-split task data file (rtpurbo eval --prepare-only --split tune)
    knockout_samples: int = 2  # prompts per task and length
    knockout_windows: int = 4  # long texts
    knockout_length: int = 4096  # tokens per prompt and text when the data is built here
    text_weight: float = 0.5  # share of the knockout ranking from text KL (the rest: task answers)


def profile_samples(tokenizer: Any, settings: ProfileSettings, install: bool = True,
                    docs: list[str] | None = None) -> list:
    """Needle prompts on training-pool haystacks (or on ``docs``, the user's documents, with seeds of
    their own), seeds from the 'profile' namespace."""
    offset = 0 if docs is None else USER_SEED_OFFSET
    if docs is None:
        docs = [d.text for d in long_documents(list(settings.haystack_sources), min_chars=20_000, limit=16,
                                               install=install)]
    if not docs:
        raise RuntimeError(f"no haystack text found in {settings.haystack_sources}")
    samples = []
    for i, kind in enumerate(KINDS):
        base = seed_for("profile", offset + settings.seed * 1000 + 100 * i)
        samples += make_samples(kind, tokenizer, docs, settings.profile_length, settings.profile_samples, base)
    return samples


def run_profile(model: torch.nn.Module, tokenizer: Any, settings: ProfileSettings, out_dir: Path | None = None,
                progress: bool = True) -> tuple[HeadScores, HeadPlan]:
    """Profile heads and choose the plan; write scores, plan JSON and PNG when ``out_dir`` is given."""
    if settings.criterion == "knockout":
        inputs = inputs_from_task_data(knockout_data(tokenizer, settings, progress), settings.knockout_samples,
                                       settings.knockout_windows)
        scores = knockout_profile(model, inputs, settings.window, settings.sinks, settings.text_weight, progress)
    elif settings.criterion == "copy":
        scores = profile_heads(
            model, profile_samples(tokenizer, settings), settings.window, settings.sinks, progress=progress
        )
    else:
        raise ValueError(f"unknown criterion {settings.criterion!r}; criteria are copy and knockout")
    plan = plan_from_scores(scores, settings.retrieval_ratio)
    if out_dir is not None:
        write_profile(out_dir, scores, plan, settings)
    return scores, plan


def run_domain_profile(model: torch.nn.Module, tokenizer: Any, settings: ProfileSettings, user_docs: list[str],
                       out_dir: Path | None = None, builtin: bool = True, progress: bool = True
                       ) -> tuple[HeadScores, HeadPlan, dict[str, Any] | None]:
    """Profile on the user's documents too: (pooled scores, plan, stability record or None).

    With ``builtin`` the prompts on built-in haystacks and on ``user_docs`` are scored apart, the
    plan comes from the pooled scores and the stability record (also ``domain_stability.json``)
    compares the two domains' own plans; without it only the user's documents are used.
    """
    domains = {}
    if builtin:
        domains["builtin"] = profile_samples(tokenizer, settings)
    domains["data"] = profile_samples(tokenizer, settings, docs=user_docs)
    parts = {name: profile_heads(model, samples, settings.window, settings.sinks, progress=progress)
             for name, samples in domains.items()}
    scores = merge_scores(list(parts.values()))
    stability = domain_stability(parts, scores, settings.retrieval_ratio) if builtin else None
    plan = plan_from_scores(scores, settings.retrieval_ratio)
    if out_dir is not None:
        write_profile(out_dir, scores, plan, settings, stability)
    return scores, plan, stability


def knockout_data(tokenizer: Any, settings: ProfileSettings, progress: bool = True):
    """The tune-split task data knockout scores on: ``settings.knockout_data``, else built from the dev pool."""
    if settings.knockout_data is not None:
        data = load_task_data(settings.knockout_data, tokenizer)
        check_tune_split(data, settings.knockout_data)
        return data
    return build_task_data(tokenizer, [settings.knockout_length], list(TASKS), settings.knockout_samples, "tune",
                           settings.knockout_windows, settings.knockout_length, progress=progress)


PROFILE_MARKER = "head_plan.json"  # what makes a directory an earlier profile output
SCORE_LABELS = {"copy": "copy score (+0.1 needle mass)", "knockout": "knockout score (share of KL)"}


def write_profile(out_dir: Path, scores: HeadScores, plan: HeadPlan, settings: ProfileSettings,
                  stability: dict[str, Any] | None = None) -> None:
    """head_scores.json, head_plan.json, head_plan.png (and domain_stability.json when given) as one directory,
    written whole (:func:`rtpurbo.files.written_whole`): it replaces an earlier profile only once complete."""
    settings_json = {k: str(v) if isinstance(v, Path) else v for k, v in settings.__dict__.items()}
    with written_whole(out_dir, PROFILE_MARKER) as tmp:
        (tmp / "head_scores.json").write_text(dumps({"settings": settings_json, **scores.to_dict()}))
        (tmp / PROFILE_MARKER).write_text(dumps(plan.to_dict()))
        plot_plan(plan, tmp / "head_plan.png", score_label=SCORE_LABELS[scores.criterion])
        if stability is not None:
            (tmp / "domain_stability.json").write_text(dumps(stability))


def read_plan(path: Path, model_config: Any) -> tuple[HeadPlan, dict[str, int]]:
    """A plan from ``head_plan.json`` or from a ``config.json`` carrying ``headwise_config``.

    Returns (plan, settings): the sinks / window / seqlen_threshold that the file holds (RTP-LLM's form: sinks
    and window, plus rtpurbo's seqlen_threshold from the ``rtpurbo`` block of a config.json written by
    ``rtpurbo export``), each only where present.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PlanMismatch(f"plan file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PlanMismatch(f"plan file {path} is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise PlanMismatch(f"plan file {path} holds no plan (a JSON object was expected)")
    if is_rtp_llm_form(data.get("headwise_config")):  # RTP-LLM's form, e.g. a config.json of `rtpurbo export`
        plan, values = exported_settings(data["headwise_config"], data.get("rtpurbo"), *geometry(model_config)[:2])
        return plan, {k: int(values[k]) for k in ("sinks", "window", "seqlen_threshold") if k in values}
    if "headwise_config" in data:
        return HeadPlan.from_headwise_config(data, geometry(model_config)[1])
    return HeadPlan.from_dict(data), {}


def plan_summary(plan: HeadPlan) -> dict[str, Any]:
    """Counts and layer distribution of the retrieval heads."""
    per_layer = {layer: heads for layer, heads in enumerate(plan.retrieval) if heads}
    return {
        "retrieval_kv_heads": plan.num_retrieval(),
        "total_kv_heads": plan.num_layers * plan.num_kv_heads,
        "fraction": round(plan.retrieval_fraction(), 4),
        "by_layer": {str(k): v for k, v in per_layer.items()},
        "criterion": plan.criterion,
    }
